"""Paper-size IR-SE50, IR-101 and pSp encoder state dicts equal the official layouts key for key."""

import json

import numpy as np
import paddle
import pytest

from pipeline.losses.identity import id_embedding
from pipeline.models.encoders import GradualStyleEncoder, init_from_irse50
from pipeline.models.irse import Backbone, count_float_elements, ir101, ir_se50
from pipeline.models.norm import paddle_key

DTYPE_NAMES = {paddle.float32: "float32", paddle.int64: "int64"}


def build_lazily(factory, *args, **kwargs):
    """Build a paper-size layer without allocating its weights (shapes and dtypes only)."""
    with paddle.LazyGuard():
        return factory(*args, **kwargs)


def read_manifest(reference_dir, name):
    return json.loads((reference_dir / "manifests" / name).read_text())


def expected_layout(manifest, prefix="", linear_weight_keys=()):
    """Return [(paddle key, shape, dtype)] of the manifest entries under `prefix`, in order.

    Official nn.Linear weights are [out, in], and paddle.nn.Linear stores them as [in, out].
    """
    layout = []
    for key, shape, dtype in manifest["state_dict"]:
        if not key.startswith(prefix):
            continue
        key = paddle_key(key[len(prefix):])
        if key in linear_weight_keys:
            shape = shape[::-1]
        layout.append((key, list(shape), dtype))
    return layout


def actual_layout(layer):
    return [(key, list(tensor.shape), DTYPE_NAMES[tensor.dtype]) for key, tensor in layer.state_dict().items()]


def manifest_float_elements(manifest, prefix=""):
    return sum(
        int(np.prod(shape)) for key, shape, dtype in manifest["state_dict"] if key.startswith(prefix) and dtype == "float32"
    )


@pytest.fixture(scope="module")
def irse50():
    return build_lazily(ir_se50)


@pytest.fixture(scope="module")
def psp_encoder():
    return build_lazily(GradualStyleEncoder, 50, "ir_se", input_nc=3)


def test_ir_se50_state_dict(reference_dir, irse50):
    manifest = read_manifest(reference_dir, "model_ir_se50.json")
    expected = expected_layout(manifest, linear_weight_keys={"output_layer.3.weight"})
    assert actual_layout(irse50) == expected


def test_ir_se50_float_elements(reference_dir, irse50):
    manifest = read_manifest(reference_dir, "model_ir_se50.json")
    assert count_float_elements(irse50) == manifest["num_float_elements"]


def test_ir_se50_helper_matches_explicit_arguments(irse50):
    assert actual_layout(irse50) == actual_layout(build_lazily(Backbone, 112, 50, "ir_se", 0.6, True))


def test_ir101_state_dict(reference_dir):
    manifest = read_manifest(reference_dir, "curricularface_ir101.json")
    backbone = build_lazily(ir101)
    expected = expected_layout(manifest, linear_weight_keys={"output_layer.3.weight"})
    assert actual_layout(backbone) == expected
    assert count_float_elements(backbone) == manifest["num_float_elements"]


def test_psp_encoder_state_dict(reference_dir, psp_encoder):
    manifest = read_manifest(reference_dir, "psp_ffhq_encode.json")
    assert actual_layout(psp_encoder) == expected_layout(manifest, prefix="encoder.")


def test_psp_encoder_float_elements(reference_dir, psp_encoder):
    manifest = read_manifest(reference_dir, "psp_ffhq_encode.json")
    assert count_float_elements(psp_encoder) == manifest_float_elements(manifest, prefix="encoder.")


def test_reduced_ir101_embeds_unit_vectors():
    backbone = Backbone(112, 100, "ir", 0.4, affine=False, stage_widths=(4, 8, 16, 32), embedding_size=16)
    faces = paddle.to_tensor(np.random.default_rng(0).uniform(-1, 1, (2, 3, 112, 112)).astype(np.float32))

    feats = id_embedding(backbone, faces).numpy()

    assert feats.shape == (2, 16)
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-5)
    assert not backbone.training


def test_sam_age_encoder_state_dict(reference_dir):
    manifest = read_manifest(reference_dir, "sam_ffhq_aging.json")
    age_encoder = build_lazily(GradualStyleEncoder, 50, "ir_se", input_nc=4)
    assert actual_layout(age_encoder) == expected_layout(manifest, prefix="encoder.")


def test_encoder_taps_are_official_units(psp_encoder):
    assert psp_encoder.tap_indices == (6, 20, 23)


def test_irse50_keys_shared_with_encoder(reference_dir, irse50, psp_encoder):
    manifest = read_manifest(reference_dir, "model_ir_se50.json")
    shared = set(irse50.state_dict()) & set(psp_encoder.state_dict())
    assert len(shared) == manifest["checkpoint_structure"]["n_keys_shared_with_GradualStyleEncoder"]
    only_in_irse50 = sorted(set(irse50.state_dict()) - shared)
    expected_only = sorted(paddle_key(key) for key in manifest["checkpoint_structure"]["keys_only_in_ir_se50"])
    assert only_in_irse50 == expected_only


def test_init_from_irse50_widens_first_conv():
    widths = (8, 16, 32, 64)
    source = Backbone(112, 50, "ir_se", 0.6, True, stage_widths=widths, embedding_size=32)
    official = {key: tensor.numpy() for key, tensor in source.state_dict().items()}
    official["body.5.res_layer.0.running_var"] = np.full([16], 3.0, np.float32)
    del official["body.5.res_layer.0._variance"]
    encoder = GradualStyleEncoder(50, "ir_se", input_nc=4, n_styles=8, stage_widths=widths, style_dim=64)
    latlayer_before = encoder.latlayer1.weight.numpy()

    missing, unexpected = init_from_irse50(encoder, official, np.random.default_rng(0))

    first_conv = encoder.input_layer[0].weight.numpy()
    assert first_conv.shape == (8, 4, 3, 3)
    np.testing.assert_array_equal(first_conv[:, :3], official["input_layer.0.weight"])
    assert np.abs(first_conv[:, 3]).sum() > 0.0
    np.testing.assert_array_equal(encoder.body[5].res_layer[0]._variance.numpy(), np.full([16], 3.0))
    np.testing.assert_array_equal(encoder.body[9].res_layer[1].weight.numpy(), official["body.9.res_layer.1.weight"])
    np.testing.assert_array_equal(encoder.latlayer1.weight.numpy(), latlayer_before)
    assert all(key.startswith(("styles.", "latlayer")) for key in missing)
    assert all(key.startswith("output_layer.") for key in unexpected)
    assert len(unexpected) == 12


def test_init_from_irse50_rejects_wrong_widths():
    source = Backbone(112, 50, "ir_se", 0.6, True, stage_widths=(4, 8, 16, 32), embedding_size=32)
    official = {key: tensor.numpy() for key, tensor in source.state_dict().items()}
    encoder = GradualStyleEncoder(50, "ir_se", input_nc=3, n_styles=8, stage_widths=(8, 16, 32, 64), style_dim=64)
    with pytest.raises(ValueError, match="input_layer.0.weight"):
        init_from_irse50(encoder, official, np.random.default_rng(0))


def test_encoder_rejects_wrong_input_size():
    encoder = GradualStyleEncoder(50, "ir_se", input_nc=4, n_styles=8, stage_widths=(8, 16, 32, 64), style_dim=64)
    with pytest.raises(ValueError, match=r"\[B, 4, 256, 256\]"):
        encoder(paddle.zeros([1, 3, 256, 256]))


def test_backbone_rejects_uncropped_faces():
    backbone = Backbone(112, 50, "ir_se", stage_widths=(4, 8, 16, 32), embedding_size=32)
    with pytest.raises(ValueError, match="112, 112"):
        backbone(paddle.zeros([1, 3, 256, 256]))


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"num_layers": 34}, "num_layers"),
        ({"mode": "se"}, "mode"),
        ({"input_size": 128}, "input_size"),
    ],
)
def test_backbone_rejects_invalid_config(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Backbone(**kwargs)
