"""IR and IR-SE ResNet face-recognition backbones (ArcFace IR-SE50, CurricularFace IR-101).

Module attribute names follow the official PyTorch tree (`input_layer`, `body`,
`output_layer`, `shortcut_layer`, `res_layer`, `fc1`/`fc2`), so converted checkpoints load
by key. Widths, SE hidden width and embedding size are constructor arguments with the
official values as defaults, so the reduced-width test models use the same classes.
"""

import math
from typing import NamedTuple

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from pipeline.models.norm import BatchNorm1D, BatchNorm2D

OFFICIAL_STAGE_WIDTHS = (64, 128, 256, 512)

# Bottleneck units per stage for each supported depth.
UNITS_PER_STAGE = {
    50: (3, 4, 14, 3),
    100: (3, 13, 30, 3),
    152: (3, 8, 36, 3),
}

MODES = ("ir", "ir_se")


class BottleneckSpec(NamedTuple):
    """Channel widths and stride of one bottleneck unit."""

    in_channel: int
    depth: int
    stride: int


def get_blocks(num_layers, stage_widths=OFFICIAL_STAGE_WIDTHS):
    """Return the bottleneck specs of the four stages, one list per stage.

    Each stage starts with a stride-2 unit, the first one included. The first stage keeps
    the input width `stage_widths[0]`.
    """
    if num_layers not in UNITS_PER_STAGE:
        raise ValueError(f"num_layers must be one of {sorted(UNITS_PER_STAGE)}, got {num_layers}")
    if len(stage_widths) != 4:
        raise ValueError(f"stage_widths must list 4 widths (official: {OFFICIAL_STAGE_WIDTHS}), got {stage_widths}")

    stages = []
    in_channel = stage_widths[0]
    for depth, num_units in zip(stage_widths, UNITS_PER_STAGE[num_layers]):
        stage = [BottleneckSpec(in_channel, depth, 2)]
        stage += [BottleneckSpec(depth, depth, 1) for _ in range(num_units - 1)]
        stages.append(stage)
        in_channel = depth
    return stages


def l2_norm(x, axis=1):
    """Divide x by its L2 norm along `axis` (no epsilon, as in the official code)."""
    return x / paddle.linalg.norm(x, p=2, axis=axis, keepdim=True)


class PReLU(nn.Layer):
    """Channel-wise PReLU whose slope parameter is named `weight`, as in PyTorch.

    Paddle's nn.PReLU stores it as `_weight`, which would break key-for-key loading.
    """

    def __init__(self, num_parameters=1, init=0.25):
        super().__init__()
        self.weight = self.create_parameter([num_parameters], default_initializer=nn.initializer.Constant(init))

    def forward(self, x):
        return F.prelu(x, self.weight)


class SEModule(nn.Layer):
    """Squeeze-and-excitation gate: x * sigmoid(fc2(relu(fc1(avgpool(x)))))."""

    def __init__(self, channels, reduction=16, min_hidden=1):
        super().__init__()
        hidden = max(channels // reduction, min_hidden)
        self.avg_pool = nn.AdaptiveAvgPool2D(1)
        self.fc1 = nn.Conv2D(channels, hidden, kernel_size=1, padding=0, bias_attr=False)
        self.relu = nn.ReLU()
        self.fc2 = nn.Conv2D(hidden, channels, kernel_size=1, padding=0, bias_attr=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x):
        gate = self.avg_pool(x)  # [B, C, 1, 1]
        gate = self.sigmoid(self.fc2(self.relu(self.fc1(gate))))
        return x * gate


def _shortcut(in_channel, depth, stride):
    """Build the identity branch: subsampling when widths match, else 1x1 conv + BN."""
    if in_channel == depth:
        # A 1x1 max pool only subsamples, and with stride 1 it is the identity.
        return nn.MaxPool2D(kernel_size=1, stride=stride) if stride > 1 else nn.Identity()
    return nn.Sequential(
        nn.Conv2D(in_channel, depth, kernel_size=1, stride=stride, bias_attr=False),
        BatchNorm2D(depth),
    )


def _residual_layers(in_channel, depth, stride):
    """Build BN, conv3x3, PReLU, conv3x3 (carrying the stride), BN: indices 0-4 of res_layer."""
    return [
        BatchNorm2D(in_channel),
        nn.Conv2D(in_channel, depth, kernel_size=3, stride=1, padding=1, bias_attr=False),
        PReLU(depth),
        nn.Conv2D(depth, depth, kernel_size=3, stride=stride, padding=1, bias_attr=False),
        BatchNorm2D(depth),
    ]


class bottleneck_IR(nn.Layer):  # noqa: N801 (official class name)
    """Pre-activation IR unit: res_layer(x) + shortcut_layer(x)."""

    def __init__(self, in_channel, depth, stride):
        super().__init__()
        self.shortcut_layer = _shortcut(in_channel, depth, stride)
        self.res_layer = nn.Sequential(*_residual_layers(in_channel, depth, stride))

    def forward(self, x):
        return self.res_layer(x) + self.shortcut_layer(x)


class bottleneck_IR_SE(nn.Layer):  # noqa: N801 (official class name)
    """IR unit with a squeeze-and-excitation gate as res_layer index 5."""

    def __init__(self, in_channel, depth, stride, se_reduction=16, se_min_hidden=1):
        super().__init__()
        self.shortcut_layer = _shortcut(in_channel, depth, stride)
        self.res_layer = nn.Sequential(
            *_residual_layers(in_channel, depth, stride),
            SEModule(depth, se_reduction, se_min_hidden),
        )

    def forward(self, x):
        return self.res_layer(x) + self.shortcut_layer(x)


def build_input_layer(input_nc, width):
    """Build the stem: conv3x3 (no bias), BN, PReLU."""
    return nn.Sequential(
        nn.Conv2D(input_nc, width, kernel_size=3, stride=1, padding=1, bias_attr=False),
        BatchNorm2D(width),
        PReLU(width),
    )


def build_body(num_layers, mode, stage_widths=OFFICIAL_STAGE_WIDTHS, se_reduction=16, se_min_hidden=1):
    """Build the flat Sequential of bottleneck units shared by Backbone and the pSp encoder."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")

    units = []
    for stage in get_blocks(num_layers, stage_widths):
        for spec in stage:
            if mode == "ir":
                units.append(bottleneck_IR(spec.in_channel, spec.depth, spec.stride))
            else:
                units.append(bottleneck_IR_SE(spec.in_channel, spec.depth, spec.stride, se_reduction, se_min_hidden))
    return nn.Sequential(*units)


class Backbone(nn.Layer):
    """IR / IR-SE face embedding network returning l2-normalised embeddings [B, embedding_size].

    ArcFace IR-SE50 (ID loss): Backbone(112, 50, 'ir_se', 0.6, True).
    CurricularFace IR-101 (ID evaluation): Backbone(112, 100, 'ir', 0.4, affine=False).
    Inputs are [B, 3, input_size, input_size] faces in [-1, 1].
    """

    def __init__(
        self,
        input_size=112,
        num_layers=50,
        mode="ir",
        drop_ratio=0.4,
        affine=True,
        stage_widths=OFFICIAL_STAGE_WIDTHS,
        embedding_size=512,
        se_reduction=16,
        se_min_hidden=1,
    ):
        super().__init__()
        if input_size not in (112, 224):
            raise ValueError(f"input_size must be 112 or 224, got {input_size}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.input_size = input_size

        # Four stride-2 stages take 112 to 7 (224 to 14).
        final_spatial = input_size // 16
        final_width = stage_widths[-1]

        # Registration order sets the state dict order: input_layer, output_layer, body.
        self.input_layer = build_input_layer(3, stage_widths[0])
        self.output_layer = nn.Sequential(
            BatchNorm2D(final_width),
            nn.Dropout(drop_ratio),
            nn.Flatten(),
            nn.Linear(final_width * final_spatial * final_spatial, embedding_size),
            BatchNorm1D(embedding_size, affine=affine),
        )
        self.body = build_body(num_layers, mode, stage_widths, se_reduction, se_min_hidden)

    def forward(self, x):
        if x.ndim != 4 or x.shape[1] != 3 or tuple(x.shape[2:]) != (self.input_size, self.input_size):
            raise ValueError(
                f"Backbone expects faces of shape [B, 3, {self.input_size}, {self.input_size}], got {list(x.shape)}; "
                "crop and pool the face first"
            )
        x = self.input_layer(x)
        x = self.body(x)
        x = self.output_layer(x)
        return l2_norm(x)


def ir_se50(**kwargs):
    """Build the ArcFace IR-SE50 used by the ID loss (model_ir_se50.pth layout)."""
    return Backbone(112, 50, "ir_se", 0.6, True, **kwargs)


def ir101(**kwargs):
    """Build the CurricularFace IR-101 used for ID evaluation (CurricularFace_Backbone.pth layout)."""
    return Backbone(112, 100, "ir", 0.4, affine=False, **kwargs)


def count_float_elements(layer):
    """Return the number of floating-point values in the layer's state dict (buffers included)."""
    total = 0
    for tensor in layer.state_dict().values():
        if tensor.dtype in (paddle.float16, paddle.bfloat16, paddle.float32, paddle.float64):
            total += math.prod(tensor.shape)
    return total
