"""Parity of the reduced StyleGAN2 generator against the official PyTorch outputs.

The case is Generator(32, style_dim 64, n_mlp 2) with channels {4: 32, 8: 32, 16: 32, 32: 16},
run with the stored noise buffers (randomize_noise=False) for W+ input, z input and
truncation 0.7 of both.
"""

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

from pipeline.checkpoint.torch_format import load_torch_file
from pipeline.models.stylegan2 import Generator, ModulatedConv2d

pytestmark = pytest.mark.parity

CASE = "b_stylegan2_generator_small"
ATOL = 1e-4
RTOL = 1e-4
SMALL_CHANNELS = {4: 32, 8: 32, 16: 32, 32: 16}
TRUNCATION = 0.7


def build_small_generator():
    return Generator(32, style_dim=64, n_mlp=2, channel_multiplier=2, lr_mlp=0.01, channels=SMALL_CHANNELS)


@pytest.fixture(scope="module")
def case(golden):
    return golden(CASE)


@pytest.fixture(scope="module")
def generator(case):
    state = load_torch_file(case.weights_path)
    model = build_small_generator()
    missing, unexpected = model.set_state_dict(state)
    assert missing == []
    assert unexpected == []
    model.eval()
    return model


@pytest.fixture(scope="module")
def outputs(generator, case):
    """Run the four reference calls and return every output array by its reference name."""
    wplus = paddle.to_tensor(case.io["wplus"])
    z = paddle.to_tensor(case.io["z"])
    truncation_latent = paddle.to_tensor(case.io["truncation_latent"])
    common = dict(randomize_noise=False, return_latents=True)
    truncated = dict(truncation=TRUNCATION, truncation_latent=truncation_latent, **common)

    results = {}
    with paddle.no_grad():
        results["i_image"], results["i_latent"] = generator([wplus], input_is_latent=True, **common)
        results["ii_w"] = generator.style(z)
        results["ii_image"], results["ii_latent"] = generator([z], **common)
        results["iii_image"], results["iii_latent"] = generator([wplus], input_is_latent=True, **truncated)
        results["iv_image"], results["iv_latent"] = generator([z], **truncated)
    return {name: value.numpy() for name, value in results.items()}


OUTPUT_NAMES = [
    "i_image",
    "i_latent",
    "ii_w",
    "ii_image",
    "ii_latent",
    "iii_image",
    "iii_latent",
    "iv_image",
    "iv_latent",
]


@pytest.mark.parametrize("name", OUTPUT_NAMES)
def test_output_matches_reference(name, outputs, case):
    expected = case.io[name]
    assert outputs[name].shape == expected.shape
    np.testing.assert_allclose(outputs[name], expected, atol=ATOL, rtol=RTOL, err_msg=name)


def test_every_output_array_is_checked(case):
    inputs = {"wplus", "z", "truncation_latent"}
    assert set(case.io) - inputs == set(OUTPUT_NAMES)


def test_state_dict_layout_matches_reference(case):
    layout = [[key, list(value.shape)] for key, value in build_small_generator().state_dict().items()]
    expected = [[key, list(shape)] for key, shape, _ in case.meta["state_dict_keys"]]
    assert layout == expected


def test_latent_counts_match_reference(generator):
    assert generator.n_latent == 8
    assert generator.num_layers == 7
    assert generator.log_size == 5


def test_style_mixing_equals_hand_built_wplus(generator, case):
    w = generator.style(paddle.to_tensor(case.io["z"]))  # [2, 64]
    w_first, w_second = w[0:1], w[1:2]
    inject_index = 3
    mixed, latent = generator(
        [w_first, w_second],
        input_is_latent=True,
        inject_index=inject_index,
        randomize_noise=False,
        return_latents=True,
    )
    hand_built = paddle.concat([w_first.tile([inject_index, 1]), w_second.tile([8 - inject_index, 1])])
    reference, _ = generator([hand_built.unsqueeze(0)], input_is_latent=True, randomize_noise=False)
    np.testing.assert_allclose(latent.numpy()[0], hand_built.numpy(), atol=0, rtol=0)
    np.testing.assert_allclose(mixed.numpy(), reference.numpy(), atol=1e-6, rtol=1e-6)


def test_explicit_noise_equals_noise_buffers(generator, case):
    wplus = paddle.to_tensor(case.io["wplus"])
    buffers = [getattr(generator.noises, f"noise_{i}") for i in range(generator.num_layers)]
    with_buffers, _ = generator([wplus], input_is_latent=True, randomize_noise=False)
    with_list, _ = generator([wplus], input_is_latent=True, noise=buffers)
    np.testing.assert_allclose(with_list.numpy(), with_buffers.numpy(), atol=0, rtol=0)


def test_random_noise_changes_image(generator, case):
    wplus = paddle.to_tensor(case.io["wplus"])
    first, _ = generator([wplus], input_is_latent=True)
    second, _ = generator([wplus], input_is_latent=True)
    assert not np.allclose(first.numpy(), second.numpy())


def test_backward_reaches_wplus(generator, case):
    wplus = paddle.to_tensor(case.io["wplus"], stop_gradient=False)
    image, _ = generator([wplus], input_is_latent=True, randomize_noise=False)
    image.square().mean().backward()
    grad = wplus.grad.numpy()
    assert grad.shape == (2, 8, 64)
    assert np.isfinite(grad).all()
    # Every one of the 8 latents feeds a layer, so each gets a non-zero gradient.
    assert (np.abs(grad).sum(axis=(0, 2)) > 0).all()


def test_wplus_with_wrong_latent_count_is_rejected(generator):
    with pytest.raises(ValueError, match=r"\[B, 8, 64\]"):
        generator([paddle.zeros([2, 18, 64])], input_is_latent=True)


def test_truncation_without_latent_is_rejected(generator, case):
    with pytest.raises(ValueError, match="truncation_latent"):
        generator([paddle.to_tensor(case.io["z"])], truncation=0.7)


def test_channels_missing_resolution_is_rejected():
    with pytest.raises(ValueError, match=r"\[32\]"):
        Generator(32, style_dim=64, n_mlp=2, channels={4: 32, 8: 32, 16: 32})


@pytest.mark.parametrize("resample", ["none", "upsample", "downsample"])
def test_grouped_modulated_conv_equals_per_sample_conv(resample):
    # The generator never downsamples, so the reference case does not reach that path.
    paddle.seed(0)
    conv = ModulatedConv2d(
        4, 6, 3, style_dim=8, upsample=resample == "upsample", downsample=resample == "downsample"
    )
    x = paddle.randn([3, 4, 8, 8])
    style = paddle.randn([3, 8])
    batched = conv(x, style).numpy()

    for sample in range(3):
        weight = conv.modulated_weight(style[sample : sample + 1])[0]  # [out, in, k, k]
        single = x[sample : sample + 1]
        if resample == "upsample":
            out = conv.blur(F.conv2d_transpose(single, weight.transpose([1, 0, 2, 3]), stride=2))
        elif resample == "downsample":
            out = F.conv2d(conv.blur(single), weight, stride=2)
        else:
            out = F.conv2d(single, weight, padding=1)
        np.testing.assert_allclose(batched[sample], out.numpy()[0], atol=1e-5, rtol=1e-5)
