"""Parity of LPIPS (AlexNet, v0.1) with the official PyTorch outputs at full width."""

import numpy as np
import paddle
import pytest

from pipeline.checkpoint.torch_format import load_torch_file
from pipeline.models.lpips import LPIPS, load_lpips_weights

pytestmark = pytest.mark.parity

CASE = "g_lpips_alex"
ATOL, RTOL = 1e-5, 1e-4


@pytest.fixture(scope="module")
def case(golden):
    return golden(CASE)


@pytest.fixture(scope="module")
def lpips(case):
    net = LPIPS(net="alex")
    load_lpips_weights(net, load_torch_file(case.weights_path))
    return net


@pytest.fixture(scope="module")
def images(case):
    return paddle.to_tensor(case.io["x"]), paddle.to_tensor(case.io["y"])


def _crop_face(img):
    # SAM's crop loss region: rows 35..222, columns 32..219 of a 256x256 image.
    return img[:, :, 35:223, 32:220]


def test_lpips_batch(case, lpips, images):
    np.testing.assert_allclose(lpips.batch_mean(*images).numpy(), case.io["lpips_batch"], atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("pair", [0, 1])
def test_lpips_pair(case, lpips, images, pair):
    x, y = (img[pair : pair + 1] for img in images)
    distance = lpips(x, y)
    assert distance.shape == [1]
    np.testing.assert_allclose(distance.numpy()[0], case.io[f"lpips_pair{pair}"], atol=ATOL, rtol=RTOL)


def test_per_layer(case, lpips, images):
    np.testing.assert_allclose(lpips.per_layer(*images).numpy(), case.io["per_layer"], atol=ATOL, rtol=RTOL)


def test_first_tap_normalised_features(case, lpips, images):
    first_tap = lpips.net(images[0])[0]  # [B, 64, 63, 63]
    np.testing.assert_allclose(
        first_tap[0, :4].numpy(), case.io["feat_x_layer0_sample0_ch0_3"], atol=ATOL, rtol=RTOL
    )


def test_lpips_crop_batch(case, lpips, images):
    x, y = (_crop_face(img) for img in images)
    np.testing.assert_allclose(lpips.batch_mean(x, y).numpy(), case.io["lpips_crop_batch"], atol=ATOL, rtol=RTOL)


def test_gradient_reaches_inputs_only(lpips, images):
    x = images[0].clone()
    x.stop_gradient = False
    lpips.batch_mean(x, images[1]).backward()

    assert x.grad is not None
    assert float(x.grad.abs().sum()) > 0
    assert all(param.grad is None for param in lpips.parameters())
    assert not lpips.training


def test_mismatched_shapes_raise(lpips, images):
    with pytest.raises(ValueError, match=r"\[2, 3, 256, 256\] and \[1, 3, 256, 256\]"):
        lpips(images[0], images[1][:1])
