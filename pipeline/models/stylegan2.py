"""StyleGAN2 generator (config-f) with the module tree of the rosinality PyTorch port.

Attribute names mirror that port, so `Generator.state_dict()` has the keys of an official
`g_ema` state_dict (noise maps and FIR kernels included as persistable buffers) and a
converted checkpoint loads with no renaming.
"""

import math
import random

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from pipeline.models.layers import EqualLinear, FusedLeakyReLU
from pipeline.models.upfirdn2d import Blur, Upsample

DEFAULT_BLUR_KERNEL = (1, 3, 3, 1)


def default_channels(channel_multiplier=2):
    """Return the official feature width per resolution {4: 512, ..., 1024: 16 * multiplier}."""
    return {
        4: 512,
        8: 512,
        16: 512,
        32: 512,
        64: 256 * channel_multiplier,
        128: 128 * channel_multiplier,
        256: 64 * channel_multiplier,
        512: 32 * channel_multiplier,
        1024: 16 * channel_multiplier,
    }


class PixelNorm(nn.Layer):
    """Scale every row of [B, D] to unit root mean square over D."""

    def forward(self, x):
        return x * paddle.rsqrt(paddle.mean(x**2, axis=1, keepdim=True) + 1e-8)


class ConstantInput(nn.Layer):
    """Learned constant [1, C, size, size], repeated over the batch of the given latent."""

    def __init__(self, channels, size=4):
        super().__init__()
        self.input = self.create_parameter(
            [1, channels, size, size], default_initializer=nn.initializer.Normal(0.0, 1.0)
        )

    def forward(self, latent):
        batch = latent.shape[0]
        return self.input.tile([batch, 1, 1, 1])


class NoiseInjection(nn.Layer):
    """Add per-pixel noise [B, 1, H, W] scaled by one learned weight; draw N(0, 1) noise if none."""

    def __init__(self):
        super().__init__()
        self.weight = self.create_parameter([1], default_initializer=nn.initializer.Constant(0.0))

    def forward(self, image, noise=None):
        if noise is None:
            batch, _, height, width = image.shape
            noise = paddle.randn([batch, 1, height, width], dtype=image.dtype)
        return image + self.weight * noise


class ModulatedConv2d(nn.Layer):
    """Style-modulated convolution with optional demodulation, 2x upsampling or 2x downsampling.

    The per-sample weights are folded into one grouped convolution (groups = batch), so a
    batch runs as a single conv call.
    """

    def __init__(
        self,
        in_channels,
        out_channels,
        kernel_size,
        style_dim,
        demodulate=True,
        upsample=False,
        downsample=False,
        blur_kernel=DEFAULT_BLUR_KERNEL,
    ):
        super().__init__()
        if upsample and downsample:
            raise ValueError("ModulatedConv2d: upsample and downsample cannot both be True; choose one")
        self.eps = 1e-8
        self.kernel_size = kernel_size
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.upsample = upsample
        self.downsample = downsample

        factor = 2
        if upsample:
            # Blur the (2H + k - 1)-wide transposed-conv output back to 2H.
            excess = (len(blur_kernel) - factor) - (kernel_size - 1)
            pad = ((excess + 1) // 2 + factor - 1, excess // 2 + 1)
            self.blur = Blur(blur_kernel, pad=pad, upsample_factor=factor)
        if downsample:
            excess = (len(blur_kernel) - factor) + (kernel_size - 1)
            self.blur = Blur(blur_kernel, pad=((excess + 1) // 2, excess // 2))

        self.scale = 1 / math.sqrt(in_channels * kernel_size**2)
        self.padding = kernel_size // 2
        self.weight = self.create_parameter(
            [1, out_channels, in_channels, kernel_size, kernel_size],
            default_initializer=nn.initializer.Normal(0.0, 1.0),
        )
        self.modulation = EqualLinear(style_dim, in_channels, bias_init=1.0)
        self.demodulate = demodulate

    def modulated_weight(self, style):
        """Return the per-sample weights [B, out, in, k, k] for styles [B, style_dim]."""
        batch = style.shape[0]
        in_scale = self.modulation(style).reshape([batch, 1, self.in_channels, 1, 1])
        weight = self.scale * self.weight * in_scale
        if self.demodulate:
            demod = paddle.rsqrt(weight.square().sum(axis=[2, 3, 4]) + self.eps)  # [B, out]
            weight = weight * demod.reshape([batch, self.out_channels, 1, 1, 1])
        return weight

    def forward(self, x, style):
        batch, _, height, width = x.shape
        k = self.kernel_size
        weight = self.modulated_weight(style)

        if self.upsample:
            x = x.reshape([1, batch * self.in_channels, height, width])
            # conv2d_transpose takes [in, out / groups, k, k].
            weight = weight.transpose([0, 2, 1, 3, 4]).reshape([batch * self.in_channels, self.out_channels, k, k])
            out = F.conv2d_transpose(x, weight, stride=2, padding=0, groups=batch)
            out = out.reshape([batch, self.out_channels, out.shape[2], out.shape[3]])
            return self.blur(out)

        weight = weight.reshape([batch * self.out_channels, self.in_channels, k, k])
        if self.downsample:
            x = self.blur(x)
            x = x.reshape([1, batch * self.in_channels, x.shape[2], x.shape[3]])
            out = F.conv2d(x, weight, stride=2, padding=0, groups=batch)
        else:
            x = x.reshape([1, batch * self.in_channels, height, width])
            out = F.conv2d(x, weight, padding=self.padding, groups=batch)
        return out.reshape([batch, self.out_channels, out.shape[2], out.shape[3]])


class StyledConv(nn.Layer):
    """Modulated conv, then noise injection, then the fused bias + leaky ReLU."""

    def __init__(
        self,
        in_channels,
        out_channels,
        kernel_size,
        style_dim,
        upsample=False,
        blur_kernel=DEFAULT_BLUR_KERNEL,
        demodulate=True,
    ):
        super().__init__()
        self.conv = ModulatedConv2d(
            in_channels,
            out_channels,
            kernel_size,
            style_dim,
            upsample=upsample,
            blur_kernel=blur_kernel,
            demodulate=demodulate,
        )
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_channels)

    def forward(self, x, style, noise=None):
        out = self.conv(x, style)
        out = self.noise(out, noise=noise)
        return self.activate(out)


class ToRGB(nn.Layer):
    """Project features to RGB with a modulated 1x1 conv and add the upsampled skip image."""

    def __init__(self, in_channels, style_dim, upsample=True, blur_kernel=DEFAULT_BLUR_KERNEL):
        super().__init__()
        if upsample:
            self.upsample = Upsample(blur_kernel)
        self.conv = ModulatedConv2d(in_channels, 3, 1, style_dim, demodulate=False)
        self.bias = self.create_parameter([1, 3, 1, 1], default_initializer=nn.initializer.Constant(0.0))

    def forward(self, x, style, skip=None):
        out = self.conv(x, style) + self.bias
        if skip is not None:
            out = out + self.upsample(skip)
        return out


def _check_size(size):
    if not isinstance(size, int) or size < 4 or size & (size - 1):
        raise ValueError(f"Generator size must be a power of two >= 4 (e.g. 1024), got {size!r}")


def _resolve_channels(size, channels, channel_multiplier):
    """Return {resolution: width} for 4..size, from `channels` or the official defaults."""
    table = default_channels(channel_multiplier) if channels is None else {int(r): int(c) for r, c in channels.items()}
    needed = [2**i for i in range(2, int(math.log2(size)) + 1)]
    missing = [r for r in needed if r not in table]
    if missing:
        raise ValueError(
            f"Generator channels dict {table} has no width for resolutions {missing}; "
            f"give a width for every resolution in {needed}"
        )
    return table


class Generator(nn.Layer):
    """StyleGAN2 generator: mapping network `style` (z -> w) and the synthesis network.

    size: output resolution (power of two). channels: optional {resolution: width} table that
    replaces the official one, for the reduced test configurations.
    forward(...) returns (image [B, 3, size, size] unbounded, W+ latent [B, n_latent, style_dim]
    or None).
    """

    def __init__(
        self,
        size,
        style_dim=512,
        n_mlp=8,
        channel_multiplier=2,
        blur_kernel=DEFAULT_BLUR_KERNEL,
        lr_mlp=0.01,
        channels=None,
    ):
        super().__init__()
        _check_size(size)
        self.size = size
        self.style_dim = style_dim
        self.channels = _resolve_channels(size, channels, channel_multiplier)
        self.log_size = int(math.log2(size))
        self.num_layers = (self.log_size - 2) * 2 + 1
        self.n_latent = self.log_size * 2 - 2

        # Index 0 is PixelNorm, so the checkpoint keys start at style.1.
        mapping = [PixelNorm()]
        mapping += [EqualLinear(style_dim, style_dim, lr_mul=lr_mlp, activation="fused_lrelu") for _ in range(n_mlp)]
        self.style = nn.Sequential(*mapping)

        self.input = ConstantInput(self.channels[4])
        self.conv1 = StyledConv(self.channels[4], self.channels[4], 3, style_dim, blur_kernel=blur_kernel)
        self.to_rgb1 = ToRGB(self.channels[4], style_dim, upsample=False)

        self.convs = nn.LayerList()
        self.upsamples = nn.LayerList()  # Unused; kept for parity with the official module tree.
        self.to_rgbs = nn.LayerList()
        self.noises = nn.Layer()
        for layer_idx in range(self.num_layers):
            resolution = 2 ** ((layer_idx + 5) // 2)
            self.noises.register_buffer(
                f"noise_{layer_idx}", paddle.randn([1, 1, resolution, resolution]), persistable=True
            )

        in_channels = self.channels[4]
        for log_res in range(3, self.log_size + 1):
            out_channels = self.channels[2**log_res]
            self.convs.append(
                StyledConv(in_channels, out_channels, 3, style_dim, upsample=True, blur_kernel=blur_kernel)
            )
            self.convs.append(StyledConv(out_channels, out_channels, 3, style_dim, blur_kernel=blur_kernel))
            self.to_rgbs.append(ToRGB(out_channels, style_dim))
            in_channels = out_channels

    def make_noise(self):
        """Draw one fresh N(0, 1) noise map per layer, shaped like the `noises` buffers."""
        return [paddle.randn(getattr(self.noises, f"noise_{i}").shape) for i in range(self.num_layers)]

    def mean_latent(self, n_latent):
        """Return the mean of w over `n_latent` random z, shape [1, style_dim]."""
        z = paddle.randn([n_latent, self.style_dim])
        return self.style(z).mean(axis=0, keepdim=True)

    def get_latent(self, z):
        """Map z [B, style_dim] to w [B, style_dim]."""
        return self.style(z)

    def forward(
        self,
        styles,
        return_latents=False,
        inject_index=None,
        truncation=1.0,
        truncation_latent=None,
        input_is_latent=False,
        noise=None,
        randomize_noise=True,
    ):
        """Render images from one or two style inputs.

        styles: list of z [B, style_dim] (input_is_latent=False), or of w [B, style_dim] or one
        W+ latent [B, n_latent, style_dim] (input_is_latent=True). Two inputs mix styles at
        `inject_index` (random in [1, n_latent - 1] when None). truncation < 1 pulls every
        style toward `truncation_latent`. noise: list of num_layers maps (None entries draw
        fresh noise); when None, randomize_noise picks fresh noise or the `noises` buffers.
        """
        self._check_styles(styles, input_is_latent)
        if not input_is_latent:
            styles = [self.style(z) for z in styles]
        if truncation < 1:
            styles = self._truncate(styles, truncation, truncation_latent)
        latent = self._broadcast_to_latent(styles, inject_index)  # [B, n_latent, style_dim]
        noise = self._select_noise(noise, randomize_noise)

        image = self.synthesize(latent, noise)
        return image, (latent if return_latents else None)

    def synthesize(self, latent, noise):
        """Run the synthesis network on W+ [B, n_latent, style_dim] with per-layer noise."""
        out = self.input(latent)
        out = self.conv1(out, latent[:, 0], noise=noise[0])
        skip = self.to_rgb1(out, latent[:, 1])

        for block_idx, to_rgb in enumerate(self.to_rgbs):
            # Block k doubles the resolution and reads latents 1+2k, 2+2k (convs) and 3+2k (RGB).
            first = 2 * block_idx
            out = self.convs[first](out, latent[:, first + 1], noise=noise[first + 1])
            out = self.convs[first + 1](out, latent[:, first + 2], noise=noise[first + 2])
            skip = to_rgb(out, latent[:, first + 3], skip)
        return skip

    def _check_styles(self, styles, input_is_latent):
        if not isinstance(styles, (list, tuple)):
            raise ValueError(
                f"Generator styles must be a list of tensors, got {type(styles).__name__}; "
                "wrap a single tensor as [tensor]"
            )
        if not 1 <= len(styles) <= 2:
            raise ValueError(f"Generator takes one or two styles, got {len(styles)}; pass [w] or [w1, w2] to mix")
        for style in styles:
            shape = list(style.shape)
            if shape[-1] != self.style_dim or style.ndim not in (2, 3):
                raise ValueError(
                    f"Generator style of shape {shape} is invalid; expected [B, {self.style_dim}] "
                    f"or, with input_is_latent=True, [B, {self.n_latent}, {self.style_dim}]"
                )
            if style.ndim == 3 and (not input_is_latent or shape[1] != self.n_latent or len(styles) != 1):
                raise ValueError(
                    f"Generator got a 3-D style of shape {shape}; a W+ input must be the only style, "
                    f"have shape [B, {self.n_latent}, {self.style_dim}] and come with input_is_latent=True"
                )

    def _truncate(self, styles, truncation, truncation_latent):
        if truncation_latent is None:
            raise ValueError(
                f"Generator truncation={truncation} needs truncation_latent (e.g. mean_latent(4096)); "
                "pass it or use truncation=1"
            )
        return [truncation_latent + truncation * (style - truncation_latent) for style in styles]

    def _broadcast_to_latent(self, styles, inject_index):
        """Return W+ [B, n_latent, style_dim]: a W+ input, one w repeated, or two w mixed."""
        if len(styles) == 1:
            style = styles[0]
            if style.ndim == 3:
                return style
            return style.unsqueeze(1).tile([1, self.n_latent, 1])

        if inject_index is None:
            inject_index = random.randint(1, self.n_latent - 1)
        if not 0 <= inject_index <= self.n_latent:
            raise ValueError(f"Generator inject_index={inject_index} is outside [0, {self.n_latent}]")
        head = styles[0].unsqueeze(1).tile([1, inject_index, 1])
        tail = styles[1].unsqueeze(1).tile([1, self.n_latent - inject_index, 1])
        return paddle.concat([head, tail], axis=1)

    def _select_noise(self, noise, randomize_noise):
        if noise is None:
            if randomize_noise:
                return [None] * self.num_layers
            return [getattr(self.noises, f"noise_{i}") for i in range(self.num_layers)]
        if len(noise) != self.num_layers:
            raise ValueError(
                f"Generator noise has {len(noise)} maps but the generator has {self.num_layers} layers; "
                "pass one map (or None) per layer, e.g. make_noise()"
            )
        return list(noise)
