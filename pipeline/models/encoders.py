"""pSp GradualStyleEncoder on an IR-SE body, used for SAM's age encoder and the frozen pSp encoder.

The encoder taps three body feature maps: c1 at 1/4, c2 at 1/8 and c3 at 1/16 of the input
size. It merges them top-down into a small feature pyramid (p2, p1) and maps each level to a
group of W+ style vectors. Styles [0, 3) read c3, [3, 7) read p2 and [7, n_styles) read p1.
"""

import math

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from pipeline.models.irse import OFFICIAL_STAGE_WIDTHS, UNITS_PER_STAGE, build_body, build_input_layer
from pipeline.models.layers import EqualLinear
from pipeline.models.norm import paddle_key

# Style index where the pyramid level switches: c3 (16x16) before COARSE_END, p2 (32x32)
# before MIDDLE_END, p1 (64x64) after.
COARSE_END = 3
MIDDLE_END = 7

INPUT_SIZE = 256


class GradualStyleBlock(nn.Layer):
    """Map a [B, in_c, s, s] feature map to one style vector [B, out_c].

    log2(s) stride-2 3x3 convs with LeakyReLU(0.01) reduce s to 1, then an EqualLinear.
    """

    def __init__(self, in_c, out_c, spatial):
        super().__init__()
        self.out_c = out_c
        self.spatial = spatial
        num_halvings = int(math.log2(spatial))

        layers = []
        for i in range(num_halvings):
            layers.append(nn.Conv2D(in_c if i == 0 else out_c, out_c, kernel_size=3, stride=2, padding=1))
            layers.append(nn.LeakyReLU(0.01))
        self.convs = nn.Sequential(*layers)
        self.linear = EqualLinear(out_c, out_c, lr_mul=1)

    def forward(self, x):
        x = self.convs(x)  # [B, out_c, 1, 1]
        x = x.reshape([-1, self.out_c])
        return self.linear(x)


def stage_end_indices(num_layers):
    """Return the body indices of the last unit of stages 2, 3 and 4 (c1, c2, c3 taps)."""
    ends = np.cumsum(UNITS_PER_STAGE[num_layers]) - 1
    return tuple(int(i) for i in ends[1:])


class GradualStyleEncoder(nn.Layer):
    """pSp encoder: [B, input_nc, 256, 256] images -> W+ codes [B, n_styles, style_dim].

    SAM age encoder: GradualStyleEncoder(50, 'ir_se', input_nc=4).
    Frozen pSp encoder: GradualStyleEncoder(50, 'ir_se', input_nc=3).
    """

    def __init__(
        self,
        num_layers=50,
        mode="ir_se",
        *,
        input_nc=3,
        n_styles=18,
        stage_widths=OFFICIAL_STAGE_WIDTHS,
        style_dim=512,
        se_reduction=16,
        se_min_hidden=1,
    ):
        super().__init__()
        if n_styles <= MIDDLE_END:
            # The official layout always has at least one style per pyramid level.
            raise ValueError(f"n_styles must be greater than {MIDDLE_END}, got {n_styles}")
        self.input_nc = input_nc
        self.n_styles = n_styles
        self.style_dim = style_dim

        self.input_layer = build_input_layer(input_nc, stage_widths[0])
        self.body = build_body(num_layers, mode, stage_widths, se_reduction, se_min_hidden)
        # NOTE: for 50 layers these are body[6], body[20], body[23] as in the official code. The
        # official encoder cannot run with 100 or 152 layers, so those depths have no reference.
        self.tap_indices = stage_end_indices(num_layers)

        top_width = stage_widths[-1]
        self.styles = nn.LayerList([self._style_block(i, top_width, style_dim) for i in range(n_styles)])
        self.latlayer1 = nn.Conv2D(stage_widths[2], top_width, kernel_size=1, stride=1, padding=0)
        self.latlayer2 = nn.Conv2D(stage_widths[1], top_width, kernel_size=1, stride=1, padding=0)

    @staticmethod
    def _style_block(style_index, in_c, style_dim):
        if style_index < COARSE_END:
            spatial = 16
        elif style_index < MIDDLE_END:
            spatial = 32
        else:
            spatial = 64
        return GradualStyleBlock(in_c, style_dim, spatial)

    def forward(self, x, return_features=False):
        """Encode x into W+ codes [B, n_styles, style_dim].

        With return_features=True, also return {"c1", "c2", "c3"}: the body taps at 64x64,
        32x32 and 16x16 for a 256x256 input.
        """
        self._check_input(x)
        c1, c2, c3 = self.extract_taps(x)

        codes = [self.styles[j](c3) for j in range(COARSE_END)]
        p2 = upsample_add(c3, self.latlayer1(c2))
        codes += [self.styles[j](p2) for j in range(COARSE_END, MIDDLE_END)]
        p1 = upsample_add(p2, self.latlayer2(c1))
        codes += [self.styles[j](p1) for j in range(MIDDLE_END, self.n_styles)]

        w_plus = paddle.stack(codes, axis=1)
        if return_features:
            return w_plus, {"c1": c1, "c2": c2, "c3": c3}
        return w_plus

    def extract_taps(self, x):
        """Run the stem and body, returning the feature maps after the c1, c2 and c3 units."""
        c1_index, c2_index, c3_index = self.tap_indices
        taps = {}
        features = self.input_layer(x)
        for index, unit in enumerate(self.body):
            features = unit(features)
            if index in (c1_index, c2_index, c3_index):
                taps[index] = features
            if index == c3_index:
                break
        return taps[c1_index], taps[c2_index], taps[c3_index]

    def _check_input(self, x):
        expected = [self.input_nc, INPUT_SIZE, INPUT_SIZE]
        if x.ndim != 4 or list(x.shape[1:]) != expected:
            raise ValueError(
                f"GradualStyleEncoder expects input [B, {self.input_nc}, {INPUT_SIZE}, {INPUT_SIZE}], "
                f"got {list(x.shape)}; resize images to {INPUT_SIZE}x{INPUT_SIZE}"
                + (" and append the target-age channel" if self.input_nc == 4 else "")
            )


def upsample_add(top, lateral):
    """Resize `top` bilinearly (align_corners=True) to the size of `lateral` and add them."""
    height, width = lateral.shape[2:]
    return F.interpolate(top, size=[height, width], mode="bilinear", align_corners=True) + lateral


def init_from_irse50(encoder, irse50_state_dict, rng):
    """Copy the IR-SE50 stem and body weights into `encoder`, as SAM does when training from scratch.

    `irse50_state_dict` maps official keys (model_ir_se50.pth; `running_mean`/`running_var`
    or their Paddle names) to arrays. Keys the encoder lacks (`output_layer.*`) are ignored,
    and encoder keys the file lacks (`styles`, `latlayer*`) keep their values, like PyTorch's
    load_state_dict(strict=False). A shape mismatch raises ValueError.

    For input_nc > 3, the first conv weight becomes standard normal noise drawn from `rng`
    (a numpy Generator) with the first 3 input channels taken from the file.

    Returns (missing_keys, unexpected_keys) in Paddle key names.
    """
    source = {paddle_key(key): np.asarray(value) for key, value in irse50_state_dict.items()}
    first_conv_key = "input_layer.0.weight"
    if first_conv_key in source and encoder.input_nc != 3:
        source[first_conv_key] = _widen_first_conv(source[first_conv_key], encoder.input_nc, rng)

    target = encoder.state_dict()
    matched = {key: value for key, value in source.items() if key in target}
    for key, value in matched.items():
        expected_shape = list(target[key].shape)
        if list(value.shape) != expected_shape:
            raise ValueError(
                f"IR-SE50 weight {key} has shape {list(value.shape)} but the encoder expects {expected_shape}; "
                "check that the file is model_ir_se50.pth and the encoder widths match it"
            )
        matched[key] = value.astype(_numpy_dtype(target[key]))

    # state_dict() returns the live parameters and buffers, so set_value updates the encoder.
    for key, value in matched.items():
        target[key].set_value(value)
    missing_keys = [key for key in target if key not in matched]
    unexpected_keys = [key for key in source if key not in target]
    return missing_keys, unexpected_keys


def _widen_first_conv(rgb_weight, input_nc, rng):
    """Return randn [out, input_nc, kh, kw] float32 whose first 3 input channels are rgb_weight."""
    if input_nc < 3:
        raise ValueError(f"init_from_irse50 needs input_nc >= 3 to keep the RGB filters, got {input_nc}")
    out_channels, _, kernel_h, kernel_w = rgb_weight.shape
    widened = rng.standard_normal((out_channels, input_nc, kernel_h, kernel_w)).astype(np.float32)
    widened[:, :3] = rgb_weight
    return widened


def _numpy_dtype(tensor):
    return np.int64 if tensor.dtype == paddle.int64 else np.float32
