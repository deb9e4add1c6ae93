"""Parity of the whole SAM forward pass with the official pSp/SAM code (reduced widths).

The case's weights.pt is in the released SAM checkpoint format, so it goes through the product
path: checkpoints/convert.py's converter, then the strict loader of weights.sam.
"""

import numpy as np
import paddle
import pytest

from pipeline.checkpoint.convert import convert_files
from pipeline.config import ModelConfig
from pipeline.models.sam import SAM, add_age_channel
from pipeline.train.components import load_file_into

pytestmark = pytest.mark.parity

ATOL, RTOL = 1e-4, 1e-3
BN_LAYERS = [
    ("encoder", "input_layer.1"),
    ("encoder", "body.23.res_layer.4"),
    ("pretrained_encoder", "input_layer.1"),
    ("pretrained_encoder", "body.23.res_layer.4"),
]


def case_model_config() -> ModelConfig:
    return ModelConfig(output_size=32, style_dim=64, n_mlp=8, generator_channels={4: 32, 8: 32, 16: 32, 32: 32},
                       encoder_widths=[8, 16, 32, 64])


@pytest.fixture(scope="module")
def case(golden):
    return golden("d_sam_forward_small")


@pytest.fixture(scope="module")
def converted(case, tmp_path_factory):
    path = tmp_path_factory.mktemp("sam") / "sam_small.safetensors"
    conversion = convert_files([case.weights_path], path)
    assert conversion.kind.name == "sam"
    return path


def load_sam(path) -> SAM:
    sam = SAM(case_model_config())
    load_file_into(sam, str(path), "sam", "weights.sam")
    return sam


@pytest.fixture(scope="module")
def outputs(case, converted):
    """Run the case's eval calls, then one train-mode call, on one loaded model."""
    sam = load_sam(converted)
    x_input = paddle.to_tensor(case.io["x_input"])
    results = {}
    sam.eval()
    with paddle.no_grad():
        results["codes_age_encoder"] = sam.encoder(x_input)
        results["codes_pretrained_encoder"] = sam.pretrained_encoder(x_input[:, :-1])
        results["image"], results["latent"] = sam(x_input, resize=True, randomize_noise=False)
        results["image_no_resize"], _ = sam(x_input, resize=False, randomize_noise=False)
        # net.train() of the official code also puts the frozen pSp encoder in train mode.
        sam.train()
        results["train_image"], results["train_latent"] = sam(x_input, resize=True, randomize_noise=False)
    for network, layer in BN_LAYERS:
        bn = getattr(sam, network)
        for name in layer.split("."):
            bn = bn[int(name)] if name.isdigit() else getattr(bn, name)
        prefix = f"after_train_forward.{network}.{layer}"
        results[f"{prefix}.running_mean"] = bn._mean
        results[f"{prefix}.running_var"] = bn._variance
        results[f"{prefix}.num_batches_tracked"] = bn.num_batches_tracked
    return {key: np.asarray(value.numpy()) for key, value in results.items()}


OUTPUT_NAMES = [
    "codes_age_encoder", "codes_pretrained_encoder", "image", "latent", "image_no_resize",
    "train_image", "train_latent",
] + [f"after_train_forward.{n}.{l}.{s}" for n, l in BN_LAYERS for s in ("running_mean", "running_var")]


@pytest.mark.parametrize("name", OUTPUT_NAMES)
def test_output_matches(name, case, outputs):
    np.testing.assert_allclose(outputs[name], case.io[name], atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("network,layer", BN_LAYERS)
def test_num_batches_tracked(network, layer, case, outputs):
    key = f"after_train_forward.{network}.{layer}.num_batches_tracked"
    assert int(outputs[key]) == int(case.io[key])


def test_age_channel_input(case):
    img = paddle.to_tensor(case.io["x"])
    ages = paddle.to_tensor(case.io["target_ages"] / 100.0)
    np.testing.assert_array_equal(add_age_channel(img, ages).numpy(), case.io["x_input"])


def test_latent_avg_loaded(case, converted):
    sam = load_sam(converted)
    np.testing.assert_array_equal(sam.latent_avg.numpy(), case.io["latent_avg"])
