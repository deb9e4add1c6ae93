"""FIR resampling of StyleGAN2 (upfirdn2d) and the Upsample, Downsample and Blur layers.

upfirdn2d follows the semantics of the official StyleGAN2 op. It inserts `up - 1` zeros
after every sample and zero-pads (negative padding crops). Then it applies a true 2-D
convolution with the FIR kernel, which flips the kernel, unlike the cross-correlation of
conv2d. Last it keeps every `down`-th sample, starting at index 0. One depthwise conv2d
(groups = channels) filters every channel independently.
"""

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F


def make_kernel(taps):
    """Build a normalised 2-D FIR kernel from 1-D taps (outer product) or a 2-D array.

    Returns a float32 tensor [kh, kw] whose entries sum to 1.
    """
    kernel = np.asarray(taps, dtype=np.float32)
    if kernel.ndim == 1:
        kernel = np.outer(kernel, kernel)
    if kernel.ndim != 2:
        raise ValueError(f"FIR taps must be 1-D or 2-D, got shape {kernel.shape}; pass e.g. [1, 3, 3, 1]")
    total = kernel.sum()
    if total == 0:
        raise ValueError(f"FIR taps {taps} sum to 0 and cannot be normalised; pass taps with a non-zero sum")
    return paddle.to_tensor(kernel / total)


def _check_upfirdn_args(x, kernel, up, down, pad):
    if x.ndim != 4:
        raise ValueError(f"upfirdn2d expects an NCHW tensor, got shape {list(x.shape)}")
    if kernel.ndim != 2:
        raise ValueError(f"upfirdn2d expects a 2-D kernel [kh, kw], got shape {list(kernel.shape)}")
    if int(up) < 1 or int(down) < 1:
        raise ValueError(f"upfirdn2d needs up >= 1 and down >= 1, got up={up}, down={down}")
    if len(pad) != 2:
        raise ValueError(f"upfirdn2d expects pad=(before, after), got {pad}")


def _insert_zeros(x, factor):
    """Insert `factor - 1` zeros after every row and column: [N, C, H, W] -> [N, C, H*f, W*f]."""
    if factor == 1:
        return x
    n, c, h, w = x.shape
    spread = x.reshape([n, c, h, 1, w, 1])
    spread = F.pad(spread, [0, 0, 0, 0, 0, 0, 0, factor - 1, 0, 0, 0, factor - 1])
    return spread.reshape([n, c, h * factor, w * factor])


def _crop_negative_pad(x, pad_before, pad_after):
    """Crop H and W where the padding is negative; return the cropped x and the conv padding left."""
    crop_before, crop_after = max(-pad_before, 0), max(-pad_after, 0)
    if crop_before or crop_after:
        h, w = x.shape[2], x.shape[3]
        x = x[:, :, crop_before : h - crop_after, crop_before : w - crop_after]
    before, after = max(pad_before, 0), max(pad_after, 0)
    # conv2d takes [top, bottom, left, right]; zero padding inside the conv saves a copy of x.
    return x, [before, after, before, after]


def upfirdn2d(x, kernel, up=1, down=1, pad=(0, 0)):
    """Upsample, FIR-filter and downsample every channel of `x` independently.

    x: [N, C, H, W]; kernel: [kh, kw]; pad = (before, after), used on both axes.
    Returns [N, C, (H*up + before + after - kh) // down + 1, (W*up + before + after - kw) // down + 1].
    """
    _check_upfirdn_args(x, kernel, up, down, pad)
    up, down = int(up), int(down)
    pad_before, pad_after = int(pad[0]), int(pad[1])
    channels = x.shape[1]
    kernel_h, kernel_w = kernel.shape

    x = _insert_zeros(x, up)
    x, conv_padding = _crop_negative_pad(x, pad_before, pad_after)
    padded_hw = [x.shape[2] + conv_padding[0] + conv_padding[1], x.shape[3] + conv_padding[2] + conv_padding[3]]
    if padded_hw[0] < kernel_h or padded_hw[1] < kernel_w:
        raise ValueError(
            f"upfirdn2d: the padded input {padded_hw} is smaller than the kernel "
            f"{[kernel_h, kernel_w]}; increase pad={pad} or the input size"
        )

    # conv2d cross-correlates, so the flipped kernel gives a true convolution.
    weight = paddle.flip(kernel.astype(x.dtype), axis=[0, 1])
    weight = weight.reshape([1, 1, kernel_h, kernel_w]).tile([channels, 1, 1, 1])  # [C, 1, kh, kw]
    return F.conv2d(x, weight, stride=down, padding=conv_padding, groups=channels)


class Upsample(nn.Layer):
    """Upsample by `factor` with a FIR low-pass filter (the ToRGB skip path)."""

    def __init__(self, kernel, factor=2):
        super().__init__()
        self.factor = factor
        # The gain factor**2 keeps the mean intensity after zero insertion.
        self.register_buffer("kernel", make_kernel(kernel) * (factor**2), persistable=True)
        excess = self.kernel.shape[0] - factor
        self.pad = ((excess + 1) // 2 + factor - 1, excess // 2)

    def forward(self, x):
        return upfirdn2d(x, self.kernel, up=self.factor, down=1, pad=self.pad)


class Downsample(nn.Layer):
    """Downsample by `factor` after a FIR low-pass filter."""

    def __init__(self, kernel, factor=2):
        super().__init__()
        self.factor = factor
        self.register_buffer("kernel", make_kernel(kernel), persistable=True)
        excess = self.kernel.shape[0] - factor
        self.pad = ((excess + 1) // 2, excess // 2)

    def forward(self, x):
        return upfirdn2d(x, self.kernel, up=1, down=self.factor, pad=self.pad)


class Blur(nn.Layer):
    """Apply a FIR low-pass filter with explicit padding and no resampling.

    `upsample_factor` > 1 scales the kernel by its square, for use after a strided
    transposed convolution.
    """

    def __init__(self, kernel, pad, upsample_factor=1):
        super().__init__()
        fir = make_kernel(kernel)
        if upsample_factor > 1:
            fir = fir * (upsample_factor**2)
        self.register_buffer("kernel", fir, persistable=True)
        self.pad = tuple(pad)

    def forward(self, x):
        return upfirdn2d(x, self.kernel, pad=self.pad)
