"""Parity of pSp's GradualStyleEncoder (SAM age encoder and frozen pSp encoder) with PyTorch."""

import numpy as np
import paddle
import pytest

from pipeline.checkpoint.torch_format import load_torch_file
from pipeline.models.encoders import GradualStyleEncoder
from tests.parity.test_f_id_loss_irse50 import load_official_state_dict

pytestmark = pytest.mark.parity

CASE = "c_gradual_style_encoder"
# The weights are the encoder entries of the SAM-format checkpoint of the full-forward case.
WEIGHTS_CASE = "d_sam_forward_small"
ATOL, RTOL = 1e-4, 1e-3
# The reduced case divides every width by 8, uses 64-dimensional styles and 8 styles.
REDUCED_STAGE_WIDTHS = (8, 16, 32, 64)
REDUCED_STYLE_DIM = 64
REDUCED_N_STYLES = 8
# Variant name -> (input channels, checkpoint prefix).
VARIANTS = {"nc4": (4, "encoder"), "nc3": (3, "pretrained_encoder")}


@pytest.fixture(scope="module")
def case(golden):
    return golden(CASE)


@pytest.fixture(scope="module")
def sam_state_dict(golden):
    return load_torch_file(golden(WEIGHTS_CASE).weights_path)["state_dict"]


def sub_state_dict(state_dict, name):
    """Keep the keys under `name.` with that prefix stripped, as pSp's checkpoint loader does."""
    prefix = f"{name}."
    return {key[len(prefix):]: value for key, value in state_dict.items() if key.startswith(prefix)}


def load_encoder(sam_state_dict, variant, training):
    input_nc, prefix = VARIANTS[variant]
    encoder = GradualStyleEncoder(
        50,
        "ir_se",
        input_nc=input_nc,
        n_styles=REDUCED_N_STYLES,
        stage_widths=REDUCED_STAGE_WIDTHS,
        style_dim=REDUCED_STYLE_DIM,
    )
    load_official_state_dict(encoder, sub_state_dict(sam_state_dict, prefix))
    if training:
        encoder.train()
    else:
        encoder.eval()
    return encoder


def encoder_input(case, variant):
    input_nc, _ = VARIANTS[variant]
    return paddle.to_tensor(case.io["x_input"][:, :input_nc])


@pytest.fixture(scope="module")
def nc4_eval_outputs(case, sam_state_dict):
    encoder = load_encoder(sam_state_dict, "nc4", training=False)
    with paddle.no_grad():
        codes, features = encoder(encoder_input(case, "nc4"), return_features=True)
    return codes.numpy(), {name: feature.numpy() for name, feature in features.items()}


def test_nc4_codes_eval(case, nc4_eval_outputs):
    codes, _ = nc4_eval_outputs
    assert codes.shape == (2, REDUCED_N_STYLES, REDUCED_STYLE_DIM)
    np.testing.assert_allclose(codes, case.io["nc4_codes_eval"], atol=ATOL, rtol=RTOL)


def test_nc4_c1_sample0(case, nc4_eval_outputs):
    _, features = nc4_eval_outputs
    np.testing.assert_allclose(features["c1"][:1], case.io["nc4_c1_sample0"], atol=ATOL, rtol=RTOL)


def test_nc4_c2_sample0(case, nc4_eval_outputs):
    _, features = nc4_eval_outputs
    np.testing.assert_allclose(features["c2"][:1], case.io["nc4_c2_sample0"], atol=ATOL, rtol=RTOL)


def test_nc4_c3(case, nc4_eval_outputs):
    _, features = nc4_eval_outputs
    np.testing.assert_allclose(features["c3"], case.io["nc4_c3"], atol=ATOL, rtol=RTOL)


def test_nc3_codes_eval(case, sam_state_dict):
    encoder = load_encoder(sam_state_dict, "nc3", training=False)
    with paddle.no_grad():
        codes = encoder(encoder_input(case, "nc3")).numpy()
    np.testing.assert_allclose(codes, case.io["nc3_codes_eval"], atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("variant", ["nc4", "nc3"])
def test_codes_train(case, sam_state_dict, variant):
    encoder = load_encoder(sam_state_dict, variant, training=True)
    codes = encoder(encoder_input(case, variant)).numpy()
    np.testing.assert_allclose(codes, case.io[f"{variant}_codes_train"], atol=ATOL, rtol=RTOL)
