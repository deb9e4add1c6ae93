"""SAM's objective: each term, its weights, the cycle factor and the shared reference features."""

import numpy as np
import paddle
import pytest

from pipeline.config import LossConfig, load_config
from pipeline.losses.objective import SamObjective, face_crop, w_norm_loss
from pipeline.train.components import build_components
from tests.helpers import REPO_ROOT


@pytest.fixture(scope="module")
def parts():
    paddle.seed(0)
    return build_components(load_config(str(REPO_ROOT / "configs" / "tiny.yaml")))


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(1)
    src = paddle.to_tensor(rng.uniform(-1, 1, (2, 3, 256, 256)).astype("float32"))
    out = paddle.to_tensor(rng.uniform(-1, 1, (2, 3, 256, 256)).astype("float32"))
    w_plus = paddle.to_tensor(rng.normal(size=(2, 8, 64)).astype("float32"))
    latent_avg = paddle.to_tensor(rng.normal(size=(8, 64)).astype("float32"))
    return src, out, w_plus, latent_avg


def run(parts, batch, cfg=None, **kwargs):
    src, out, w_plus, latent_avg = batch
    objective = SamObjective(cfg or LossConfig(), parts.id_loss, parts.lpips, parts.aging)
    args = dict(src_img=src, out_img=out, w_plus=w_plus, latent_avg=latent_avg,
                target_age=paddle.to_tensor([0.1, 0.9]), input_age=paddle.to_tensor([0.3, 0.4]),
                keep_input_age=False, pass_name="real")
    args.update(kwargs)
    return objective, objective(**args)


def test_w_norm_is_mean_frobenius_norm(batch):
    _, _, w_plus, latent_avg = batch
    expected = np.mean([np.linalg.norm(w - latent_avg.numpy()) for w in w_plus.numpy()])
    np.testing.assert_allclose(float(w_norm_loss(w_plus, latent_avg)), expected, rtol=1e-5)


def test_face_crop_region(batch):
    src = batch[0]
    assert list(face_crop(src).shape) == [2, 3, 188, 188]
    np.testing.assert_array_equal(face_crop(src).numpy(), src.numpy()[:, :, 35:223, 32:220])


def test_total_is_weighted_sum_of_terms(parts, batch):
    cfg = LossConfig()
    _, (total, terms) = run(parts, batch, cfg)
    expected = (cfg.id_lambda * terms["id_real"] + cfg.l2_lambda_aging * terms["l2_real"]
                + cfg.lpips_lambda_aging * terms["lpips_real"] + cfg.lpips_lambda_crop * terms["lpips_crop_real"]
                + cfg.l2_lambda_crop * terms["l2_crop_real"] + cfg.w_norm_lambda * terms["w_norm_real"]
                + cfg.aging_lambda * terms["aging_real"])
    np.testing.assert_allclose(float(total), float(expected), rtol=1e-5)


def test_kept_age_uses_plain_weights(parts, batch):
    # As in the official code, l2_lambda and lpips_lambda also switch their terms on for both cases.
    cfg = LossConfig(l2_lambda=2.0, l2_lambda_aging=0.5, lpips_lambda=1.0, lpips_lambda_aging=3.0, id_lambda=0.0,
                     lpips_lambda_crop=0.0, l2_lambda_crop=0.0, w_norm_lambda=0.0, aging_lambda=0.0)
    _, (kept_total, terms) = run(parts, batch, cfg, keep_input_age=True)
    expected = 2.0 * float(terms["l2_real"]) + 1.0 * float(terms["lpips_real"])
    np.testing.assert_allclose(float(kept_total), expected, rtol=1e-6)
    _, (aging_total, terms) = run(parts, batch, cfg, keep_input_age=False)
    expected = 0.5 * float(terms["l2_real"]) + 3.0 * float(terms["lpips_real"])
    np.testing.assert_allclose(float(aging_total), expected, rtol=1e-6)


def test_zero_gate_lambda_skips_term(parts, batch):
    cfg = LossConfig(lpips_lambda=0.0, lpips_lambda_aging=3.0)
    _, (_, terms) = run(parts, batch, cfg)
    assert "lpips_real" not in terms


def test_cycle_total_scaled_by_cycle_lambda(parts, batch):
    cfg = LossConfig(cycle_lambda=0.5)
    _, (total, terms) = run(parts, batch, cfg, pass_name="cycle")
    np.testing.assert_allclose(float(total), 0.5 * float(terms["total_cycle"]), rtol=1e-6)


def test_shared_reference_matches_uncached(parts, batch):
    objective, (uncached, _) = run(parts, batch)
    _, (cached, _) = run(parts, batch, reference=objective.reference(batch[0]))
    np.testing.assert_allclose(float(cached), float(uncached), rtol=1e-6)


def test_weighted_id_uses_age_gap(parts, batch):
    cfg = LossConfig(l2_lambda=0.0, l2_lambda_aging=0.0, lpips_lambda=0.0, lpips_lambda_aging=0.0, lpips_lambda_crop=0.0,
                     l2_lambda_crop=0.0, w_norm_lambda=0.0, aging_lambda=0.0, id_lambda=1.0)
    _, (weighted, _) = run(parts, batch, cfg)
    _, (unweighted, _) = run(parts, batch, LossConfig(**{**cfg.__dict__, "use_weighted_id_loss": False}))
    # Gaps 0.2 and 0.5 give weights 0.25*cos(0.2*pi)+0.75 and 0.75, so the weighted loss is smaller.
    assert float(weighted) < float(unweighted)
