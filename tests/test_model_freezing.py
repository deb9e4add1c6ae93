"""Frozen networks: outside the optimizer, no gradients, and BatchNorm modes as configured."""

import numpy as np
import paddle
import pytest

from pipeline.config import load_config
from pipeline.losses.objective import SamObjective
from pipeline.models.sam import add_age_channel
from pipeline.train.components import build_components, build_optimizer
from tests.helpers import REPO_ROOT


def tiny_parts(*overrides):
    paddle.seed(0)
    cfg = load_config(str(REPO_ROOT / "configs" / "tiny.yaml"), list(overrides))
    return cfg, build_components(cfg)


def one_backward(cfg, parts):
    """Run SAM's real pass with every loss term and backpropagate it."""
    src_img = paddle.to_tensor(np.random.default_rng(0).uniform(-1, 1, (2, 3, 256, 256)).astype("float32"))
    age = paddle.to_tensor([0.2, 0.7])
    parts.sam.set_train_mode()
    out_img, w_plus = parts.sam(add_age_channel(src_img, age))
    objective = SamObjective(cfg.loss, parts.id_loss, parts.lpips, parts.aging)
    loss, _ = objective(src_img=src_img, out_img=out_img, w_plus=w_plus, latent_avg=parts.sam.latent_avg,
                        target_age=age, input_age=paddle.to_tensor([0.3, 0.3]), keep_input_age=False, pass_name="real")
    loss.backward()


def bn_stats(layer):
    return {k: v.numpy().copy() for k, v in layer.state_dict().items() if k.endswith(("_mean", "_variance"))}


def test_optimizer_holds_only_age_encoder_weights():
    cfg, parts = tiny_parts()
    optimizer = build_optimizer(cfg, parts.sam)
    trainable = {id(p) for p in parts.sam.encoder.parameters() if not p.stop_gradient}
    held = {id(p) for p in optimizer._parameter_list}
    assert held == trainable


def test_frozen_networks_get_no_gradients():
    cfg, parts = tiny_parts()
    one_backward(cfg, parts)
    frozen = {"pretrained_encoder": parts.sam.pretrained_encoder, "decoder": parts.sam.decoder,
              "id": parts.id_loss, "dex": parts.aging, "lpips": parts.lpips}
    for name, layer in frozen.items():
        with_grad = [p.name for p in layer.parameters() if p.grad is not None]
        assert with_grad == [], name
    encoder_grads = [p for p in parts.sam.encoder.parameters() if not p.stop_gradient]
    assert all(p.grad is not None for p in encoder_grads)


def test_id_network_statistics_stay_fixed():
    cfg, parts = tiny_parts()
    before = bn_stats(parts.id_loss)
    one_backward(cfg, parts)
    after = bn_stats(parts.id_loss)
    for key in before:
        np.testing.assert_array_equal(after[key], before[key], err_msg=key)


@pytest.mark.parametrize("bn_train", [True, False])
def test_psp_encoder_batchnorm_mode_follows_option(bn_train):
    cfg, parts = tiny_parts(f"model.pretrained_encoder_bn_train={str(bn_train).lower()}")
    before = bn_stats(parts.sam.pretrained_encoder)
    one_backward(cfg, parts)
    after = bn_stats(parts.sam.pretrained_encoder)
    changed = [k for k in before if not np.array_equal(before[k], after[k])]
    if bn_train:
        assert len(changed) == len(before)  # the official code's drift
    else:
        assert changed == []
