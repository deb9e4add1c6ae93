"""Parity of the DEX age classifier and SAM's aging loss with the official PyTorch outputs."""

import numpy as np
import paddle
import pytest

from pipeline.checkpoint.torch_format import load_torch_file
from pipeline.losses.aging import AgingLoss, dex_logits
from pipeline.models.dex_vgg import DexVGG, load_official_dex_weights

pytestmark = pytest.mark.parity

CASE = "e_dex_aging_loss"
ATOL, RTOL = 1e-4, 1e-4
AGES_ATOL_YEARS = 1e-3
# The reduced case divides the conv widths by 16 and uses fc6/fc7 of width 64.
REDUCED_CONV_WIDTHS = (4, 8, 16, 32, 32)
REDUCED_FC_WIDTH = 64


@pytest.fixture(scope="module")
def case(golden):
    return golden(CASE)


@pytest.fixture(scope="module")
def aging(case):
    dex = DexVGG(conv_widths=REDUCED_CONV_WIDTHS, fc_width=REDUCED_FC_WIDTH)
    load_official_dex_weights(dex, load_torch_file(case.weights_path))
    return AgingLoss(dex)


def _tensor(array):
    return paddle.to_tensor(array)


@pytest.mark.parametrize("image", ["y", "y_hat"])
def test_fc8_logits(case, aging, image):
    logits = dex_logits(aging.dex, _tensor(case.io[image])).numpy()
    np.testing.assert_allclose(logits, case.io[f"fc8_{image}"], atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("image", ["y", "y_hat"])
def test_expected_ages(case, aging, image):
    ages_years = aging.estimate_ages(_tensor(case.io[image])).numpy()
    np.testing.assert_allclose(ages_years, case.io[f"ages_{image}"], atol=AGES_ATOL_YEARS, rtol=0)


def test_aging_loss_value(case, aging):
    loss = aging(_tensor(case.io["y_hat"]), _tensor(case.io["target_ages"]))
    assert loss.shape == []
    np.testing.assert_allclose(loss.numpy(), case.io["aging_loss"], atol=ATOL, rtol=RTOL)


def test_loss_gradient_reaches_image_only(case, aging):
    aged_img = _tensor(case.io["y_hat"])
    aged_img.stop_gradient = False
    aging(aged_img, _tensor(case.io["target_ages"])).backward()

    assert aged_img.grad is not None
    assert float(aged_img.grad.abs().sum()) > 0
    assert all(param.grad is None for param in aging.dex.parameters())
    assert not aging.dex.training


def test_target_age_shape_mismatch_raises(case, aging):
    target_column = _tensor(case.io["target_ages"]).reshape([2, 1])
    with pytest.raises(ValueError, match=r"target_age has shape \[2, 1\]"):
        aging(_tensor(case.io["y_hat"]), target_column)
