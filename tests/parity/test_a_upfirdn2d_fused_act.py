"""Parity of upfirdn2d, the FIR layers, the fused leaky ReLU, EqualLinear and the pooling and
bilinear resizing calls used by the losses, against the official PyTorch outputs.
"""

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F
import pytest

from pipeline.checkpoint.torch_format import load_torch_file
from pipeline.models.layers import EqualLinear, FusedLeakyReLU, fused_leaky_relu
from pipeline.models.upfirdn2d import Blur, Downsample, Upsample, make_kernel, upfirdn2d

pytestmark = pytest.mark.parity

CASE = "a_upfirdn2d_fused_act"
ATOL = 1e-5
RTOL = 1e-5
BLUR_TAPS = [1, 3, 3, 1]


class OpsContainer(nn.Layer):
    """The container whose state_dict the case stores: up, down, blur, act, lin."""

    def __init__(self):
        super().__init__()
        self.up = Upsample(BLUR_TAPS)
        self.down = Downsample(BLUR_TAPS)
        # The Blur that ModulatedConv2d(upsample=True) builds for a 3x3 kernel.
        self.blur = Blur(BLUR_TAPS, pad=(1, 1), upsample_factor=2)
        self.act = FusedLeakyReLU(5)
        self.lin = EqualLinear(16, 16, lr_mul=0.01, activation="fused_lrelu")


@pytest.fixture(scope="module")
def case(golden):
    return golden(CASE)


@pytest.fixture(scope="module")
def ops(case):
    state = load_torch_file(case.weights_path)
    container = OpsContainer()
    expected_shapes = {key: list(value.shape) for key, value in container.state_dict().items()}
    assert {key: list(value.shape) for key, value in state.items()} == expected_shapes
    missing, unexpected = container.set_state_dict(state)
    assert missing == []
    assert unexpected == []
    container.eval()
    return container


def _tensor(case, name):
    return paddle.to_tensor(case.io[name])


# Output array name -> function(ops, case) returning the Paddle result.
OUTPUTS = {
    "up2_out": lambda ops, case: ops.up(_tensor(case, "up2_in")),
    "down2_out": lambda ops, case: ops.down(_tensor(case, "down2_in")),
    "blur_out": lambda ops, case: ops.blur(_tensor(case, "blur_in")),
    "asym_out": lambda ops, case: upfirdn2d(
        _tensor(case, "asym_in"), _tensor(case, "asym_kernel"), up=1, down=1, pad=(1, 2)
    ),
    "asym_up2_down2_out": lambda ops, case: upfirdn2d(
        _tensor(case, "asym_in"), _tensor(case, "asym_kernel"), up=2, down=2, pad=(1, 2)
    ),
    "act4d_out": lambda ops, case: ops.act(_tensor(case, "act4d_in")),
    "act2d_out": lambda ops, case: fused_leaky_relu(_tensor(case, "act2d_in"), _tensor(case, "act2d_bias")),
    "equal_linear_act_out": lambda ops, case: ops.lin(_tensor(case, "equal_linear_in")),
    "pool_64_to_16_out": lambda ops, case: F.adaptive_avg_pool2d(_tensor(case, "pool_64_in"), 16),
    "pool_188_to_112_out": lambda ops, case: F.adaptive_avg_pool2d(_tensor(case, "pool_188_in"), 112),
    "bilinear_256_to_224_out": lambda ops, case: F.interpolate(
        _tensor(case, "bilinear_256_in"), size=(224, 224), mode="bilinear", align_corners=False
    ),
    "bilinear_ac_16_to_32_out": lambda ops, case: F.interpolate(
        _tensor(case, "bilinear_16_in"), size=(32, 32), mode="bilinear", align_corners=True
    ),
}


@pytest.mark.parametrize("name", sorted(OUTPUTS))
def test_output_matches_reference(name, ops, case):
    expected = case.io[name]
    actual = OUTPUTS[name](ops, case).numpy()
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, atol=ATOL, rtol=RTOL, err_msg=name)


def test_every_output_array_is_checked(case):
    reference_outputs = {name for name in case.io if name.endswith("_out")}
    assert reference_outputs == set(OUTPUTS)


@pytest.mark.parametrize("name", ["up", "down", "blur"])
def test_fir_kernel_buffer_matches_reference(name, case):
    state = load_torch_file(case.weights_path)
    built = getattr(OpsContainer(), name).kernel.numpy()
    np.testing.assert_allclose(built, state[f"{name}.kernel"], atol=0, rtol=0)


def test_make_kernel_normalises_outer_product():
    kernel = make_kernel(BLUR_TAPS).numpy()
    expected = np.outer(BLUR_TAPS, BLUR_TAPS) / 64.0
    np.testing.assert_allclose(kernel, expected, atol=0, rtol=0)


def test_upfirdn2d_negative_pad_crops(case):
    x = _tensor(case, "asym_in")
    kernel = _tensor(case, "asym_kernel")
    padded = upfirdn2d(x, kernel, pad=(1, 2)).numpy()
    cropped = upfirdn2d(x, kernel, pad=(-1, 2)).numpy()
    # Padding by -1 instead of +1 drops two leading rows and columns of the output.
    np.testing.assert_allclose(cropped, padded[:, :, 2:, 2:], atol=ATOL, rtol=RTOL)


def test_upfirdn2d_rejects_non_nchw_input():
    with pytest.raises(ValueError, match="NCHW"):
        upfirdn2d(paddle.zeros([3, 8, 8]), make_kernel(BLUR_TAPS))
