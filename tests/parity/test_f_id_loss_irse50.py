"""Parity of the IR-SE50 backbone and SAM's identity loss with the official PyTorch outputs."""

import numpy as np
import paddle
import pytest

from pipeline.checkpoint.torch_format import load_torch_file
from pipeline.losses.identity import IDLoss, age_gap_weights, crop_and_pool_face, extract_feats, id_embedding
from pipeline.models.irse import Backbone
from pipeline.models.norm import paddle_key

pytestmark = pytest.mark.parity

CASE = "f_id_loss_irse50"
ATOL, RTOL = 1e-5, 1e-4
# The reduced case divides every width by 16 and uses 32-dimensional embeddings.
REDUCED_STAGE_WIDTHS = (4, 8, 16, 32)
REDUCED_EMBEDDING_SIZE = 32


def load_official_state_dict(layer, official_state_dict):
    """Load an official PyTorch state dict into `layer` strictly (renamed BN keys, Linear transposed)."""
    linear_weight_keys = {
        f"{name}.weight" for name, sublayer in layer.named_sublayers() if isinstance(sublayer, paddle.nn.Linear)
    }
    converted = {}
    for key, value in official_state_dict.items():
        value = np.asarray(value)
        key = paddle_key(key)
        converted[key] = value.T if key in linear_weight_keys else value

    target = layer.state_dict()
    assert list(converted) == list(target), "state dict keys differ from the layer's"
    for key, tensor in target.items():
        assert list(converted[key].shape) == list(tensor.shape), key
        tensor.set_value(converted[key].astype(np.int64 if tensor.dtype == paddle.int64 else np.float32))


@pytest.fixture(scope="module")
def case(golden):
    return golden(CASE)


@pytest.fixture(scope="module")
def id_loss(case):
    backbone = Backbone(
        112, 50, "ir_se", 0.6, True, stage_widths=REDUCED_STAGE_WIDTHS, embedding_size=REDUCED_EMBEDDING_SIZE
    )
    load_official_state_dict(backbone, load_torch_file(case.weights_path))
    return IDLoss(backbone)


@pytest.fixture(scope="module")
def weighted(case, id_loss):
    io = case.io
    weights = age_gap_weights(io["target_ages"], io["input_ages"])
    return id_loss(paddle.to_tensor(io["y_hat"]), paddle.to_tensor(io["y"]), paddle.to_tensor(io["x"]), weights)


def test_crop_and_pool(case):
    pooled = crop_and_pool_face(paddle.to_tensor(case.io["x"][:1])).numpy()
    np.testing.assert_allclose(pooled, case.io["x_cropped_pooled_sample0"], atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("image", ["x", "y", "y_hat"])
def test_embeddings(case, id_loss, image):
    feats = extract_feats(id_loss.facenet, paddle.to_tensor(case.io[image])).numpy()
    np.testing.assert_allclose(feats, case.io[f"feats_{image}"], atol=ATOL, rtol=RTOL)


def test_id_embedding_of_pooled_crops(case, id_loss):
    pooled = crop_and_pool_face(paddle.to_tensor(case.io["x"]))
    feats = id_embedding(id_loss.facenet, pooled).numpy()
    np.testing.assert_allclose(feats, case.io["feats_x"], atol=ATOL, rtol=RTOL)


def test_id_embedding_rejects_unaligned_size(id_loss):
    with pytest.raises(ValueError, match="align"):
        id_embedding(id_loss.facenet, paddle.zeros([1, 3, 256, 256]))


def test_age_gap_weights(case):
    weights = age_gap_weights(case.io["target_ages"], case.io["input_ages"])
    assert weights.dtype == np.float64
    np.testing.assert_allclose(weights, case.io["id_weights"], atol=ATOL, rtol=RTOL)


def test_weighted_loss(case, weighted):
    loss, logs = weighted
    assert loss.shape == []
    np.testing.assert_allclose(loss.numpy(), case.io["loss_id_weighted"], atol=ATOL, rtol=RTOL)
    np.testing.assert_allclose(logs["loss_id"], case.io["loss_id_weighted"], atol=ATOL, rtol=RTOL)


def test_unweighted_loss(case, id_loss):
    io = case.io
    loss, logs = id_loss(paddle.to_tensor(io["y_hat"]), paddle.to_tensor(io["y"]), paddle.to_tensor(io["x"]))
    np.testing.assert_allclose(loss.numpy(), io["loss_id_unweighted"], atol=ATOL, rtol=RTOL)
    assert logs["id_weights"] == [1.0, 1.0]


@pytest.mark.parametrize("name", ["diff_target", "diff_input", "diff_views"])
def test_similarities(case, weighted, name):
    _, logs = weighted
    np.testing.assert_allclose(np.array(logs[name]), case.io[name], atol=ATOL, rtol=RTOL)


def test_sim_improvement(case, weighted):
    _, logs = weighted
    np.testing.assert_allclose(logs["id_improve"], case.io["sim_improvement"], atol=ATOL, rtol=RTOL)


def test_loss_gradient_reaches_output_only(case, id_loss):
    io = case.io
    y_hat = paddle.to_tensor(io["y_hat"], stop_gradient=False)
    y = paddle.to_tensor(io["y"], stop_gradient=False)
    loss, _ = id_loss(y_hat, y, paddle.to_tensor(io["x"]))
    loss.backward()

    assert y_hat.grad is not None
    assert float(paddle.abs(y_hat.grad).sum()) > 0.0
    assert y.grad is None
    assert all(param.grad is None for param in id_loss.facenet.parameters())


def test_backbone_stays_in_eval_mode(case, id_loss):
    io = case.io
    parent = paddle.nn.LayerList([id_loss])
    stats_before = id_loss.facenet.input_layer[1]._mean.numpy()
    parent.train()

    loss, _ = id_loss(paddle.to_tensor(io["y_hat"]), paddle.to_tensor(io["y"]), paddle.to_tensor(io["x"]))

    assert not id_loss.facenet.training
    assert all(not sublayer.training for sublayer in id_loss.facenet.sublayers())
    np.testing.assert_array_equal(id_loss.facenet.input_layer[1]._mean.numpy(), stats_before)
    assert int(id_loss.facenet.input_layer[1].num_batches_tracked) == 0
    np.testing.assert_allclose(loss.numpy(), io["loss_id_unweighted"], atol=ATOL, rtol=RTOL)


def test_age_gap_outside_unit_range_rejected():
    with pytest.raises(ValueError, match="divided by 100"):
        age_gap_weights([25.0], [70.0])
