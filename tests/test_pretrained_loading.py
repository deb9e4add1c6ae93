"""Tests that load_weights checks dtypes, values and metadata before it changes the layer, on
small real layers and converted files written here."""

import json

import numpy as np
import paddle
import pytest
from safetensors.numpy import save_file

from pipeline.checkpoint.convert import FORMAT_TAG
from pipeline.checkpoint.pretrained import WeightsMismatchError, load_weights
from pipeline.models.irse import Backbone
from pipeline.models.stylegan2 import Generator

STYLE_DIM = 64


def small_generator():
    return Generator(32, STYLE_DIM, 2, channel_multiplier=2, channels={4: 32, 8: 32, 16: 32, 32: 16})


def small_irse50():
    return Backbone(112, 50, "ir_se", 0.6, True, stage_widths=(4, 8, 16, 32), embedding_size=32)


def layer_arrays(layer):
    return {key: tensor.numpy().copy() for key, tensor in layer.state_dict().items()}


def write_converted(path, tensors, kind, **metadata):
    """Write a converted file whose metadata contains the format tag, the kind and the given entries."""
    save_file(tensors, str(path), metadata={"format": FORMAT_TAG, "kind": kind, **metadata})
    return path


def generator_file(tmp_path, changes=None, name="g.safetensors", **metadata):
    """Write a stylegan file from a fresh generator plus latent_avg, with `changes` applied to its tensors."""
    paddle.seed(1)
    tensors = layer_arrays(small_generator())
    tensors["latent_avg"] = np.full(STYLE_DIM, 0.25, dtype=np.float32)
    tensors.update(changes or {})
    metadata.setdefault("extra_keys", json.dumps(["latent_avg"]))
    return write_converted(tmp_path / name, tensors, "stylegan", **metadata)


def assert_unchanged(layer, before):
    for key, value in layer_arrays(layer).items():
        np.testing.assert_array_equal(value, before[key], err_msg=key)


@pytest.fixture
def target():
    """Return a generator with other random values than the files below, and a copy of its state."""
    paddle.seed(2)
    layer = small_generator()
    return layer, layer_arrays(layer)


def test_valid_file_loads_exactly(tmp_path, target):
    layer, _ = target
    path = generator_file(tmp_path, opts=json.dumps({"output_size": 32}))

    loaded = load_weights(layer, path, "stylegan", config_option="weights.stylegan")

    paddle.seed(1)
    expected = layer_arrays(small_generator())
    for key, value in layer_arrays(layer).items():
        np.testing.assert_array_equal(value, expected[key], err_msg=key)
    np.testing.assert_array_equal(loaded.extras["latent_avg"], np.full(STYLE_DIM, 0.25, np.float32))
    assert loaded.opts == {"output_size": 32}


# ----------------------------------------------------------------------------------------------
# Dtypes and values.


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [(np.int64, "file dtype int64"), (np.complex64, "file dtype complex64"), (np.bool_, "file dtype bool")],
)
def test_non_float_value_for_float_param(tmp_path, target, dtype, expected):
    layer, before = target
    weight = before["style.1.weight"].astype(dtype)
    path = generator_file(tmp_path, {"style.1.weight": weight})

    with pytest.raises(WeightsMismatchError) as error:
        load_weights(layer, path, "stylegan", config_option="weights.stylegan")

    assert f"style.1.weight: {expected}" in str(error.value)
    assert "weights.stylegan=" in str(error.value)
    assert_unchanged(layer, before)


def test_nan_value_named_and_layer_unchanged(tmp_path, target):
    layer, before = target
    noise = np.full(before["noises.noise_0"].shape, np.nan, dtype=np.float32)
    path = generator_file(tmp_path, {"noises.noise_0": noise})

    with pytest.raises(WeightsMismatchError, match="noises.noise_0: contains NaN or infinite values"):
        load_weights(layer, path, "stylegan")

    assert_unchanged(layer, before)


def test_float64_overflowing_float32_rejected(tmp_path, target):
    layer, before = target
    weight = np.full(before["style.1.weight"].shape, 1e300, dtype=np.float64)
    path = generator_file(tmp_path, {"style.1.weight": weight})

    with pytest.raises(WeightsMismatchError, match=r"style.1.weight: contains NaN or infinite values \(after the cast to float32\)"):
        load_weights(layer, path, "stylegan")

    assert_unchanged(layer, before)


def test_float_counter_for_integer_buffer(tmp_path):
    paddle.seed(3)
    layer = small_irse50()
    before = layer_arrays(layer)
    tensors = dict(before)
    counter_key = next(key for key in tensors if key.endswith("num_batches_tracked"))
    tensors[counter_key] = np.array(3.5, dtype=np.float32)
    path = write_converted(tmp_path / "irse.safetensors", tensors, "irse50")

    with pytest.raises(WeightsMismatchError, match=f"{counter_key}: file dtype float32, layer paddle.int64"):
        load_weights(layer, path, "irse50")

    assert_unchanged(layer, before)


def test_integer_counter_loads(tmp_path):
    paddle.seed(3)
    tensors = layer_arrays(small_irse50())
    counter_key = next(key for key in tensors if key.endswith("num_batches_tracked"))
    tensors[counter_key] = np.array(41, dtype=np.int64)
    path = write_converted(tmp_path / "irse.safetensors", tensors, "irse50")
    layer = small_irse50()

    load_weights(layer, path, "irse50")

    assert int(layer.state_dict()[counter_key].numpy()) == 41


def test_nan_latent_avg_rejected(tmp_path, target):
    layer, before = target
    path = generator_file(tmp_path, {"latent_avg": np.full(STYLE_DIM, np.nan, dtype=np.float32)})

    with pytest.raises(WeightsMismatchError, match="extra latent_avg contains NaN or infinite values"):
        load_weights(layer, path, "stylegan")

    assert_unchanged(layer, before)


# ----------------------------------------------------------------------------------------------
# Metadata.


@pytest.mark.parametrize(
    ("extra_keys", "expected"),
    [
        ("latent_avg", "'extra_keys' is not valid JSON"),
        ("5", "'extra_keys' should be a JSON list"),
        ('"latent_avg"', "'extra_keys' should be a JSON list"),
        ('["bogus.key", "latent_avg"]', r"'extra_keys' lists \['bogus.key'\], which are not extras of stylegan"),
    ],
)
def test_invalid_extra_keys_named(tmp_path, target, extra_keys, expected):
    layer, before = target
    path = generator_file(tmp_path, extra_keys=extra_keys)

    with pytest.raises(WeightsMismatchError, match=expected) as error:
        load_weights(layer, path, "stylegan", config_option="weights.stylegan")

    assert f"weights.stylegan={path}" in str(error.value)
    assert_unchanged(layer, before)


def test_extra_keys_cannot_hide_unexpected_key(tmp_path, target):
    layer, before = target
    path = generator_file(
        tmp_path, {"bogus.key": np.zeros(1, np.float32)}, extra_keys=json.dumps(["bogus.key", "latent_avg"])
    )

    with pytest.raises(WeightsMismatchError, match="bogus.key"):
        load_weights(layer, path, "stylegan")

    assert_unchanged(layer, before)


@pytest.mark.parametrize(("opts", "expected"), [("{", "'opts' is not valid JSON"), ("[1]", "'opts' should be a JSON")])
def test_invalid_opts_leave_layer_unchanged(tmp_path, target, opts, expected):
    layer, before = target
    path = generator_file(tmp_path, opts=opts)

    with pytest.raises(WeightsMismatchError, match=expected):
        load_weights(layer, path, "stylegan", config_option="weights.stylegan")

    assert_unchanged(layer, before)
