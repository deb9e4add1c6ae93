"""The paper config builds networks with the entry and element counts of the released checkpoints."""

import json

import numpy as np
import paddle
import pytest

from pipeline.config import load_config
from pipeline.models.lpips import LPIPS
from pipeline.models.sam import SAM
from pipeline.train.components import make_dex, make_id_backbone
from tests.helpers import REPO_ROOT

FLOAT_DTYPES = (paddle.float32, paddle.float16, paddle.bfloat16, paddle.float64)


@pytest.fixture(scope="module")
def paper_cfg():
    return load_config(str(REPO_ROOT / "configs" / "sam_ffhq_aging.yaml"))


def manifest(reference_dir, name):
    return json.loads((reference_dir / "manifests" / f"{name}.json").read_text())


def float_elements(layer, skip=()):
    """Sum the elements of floating-point parameters and buffers, as the manifests count them."""
    return sum(int(np.prod(t.shape)) for k, t in layer.state_dict().items()
               if t.dtype in FLOAT_DTYPES and k not in skip)


def entries(layer, skip=()):
    return len([k for k in layer.state_dict() if k not in skip])


def build(factory):
    # LazyGuard gives shapes without drawing half a billion random values.
    with paddle.LazyGuard():
        return factory()


def test_sam_matches_released_checkpoint(paper_cfg, reference_dir):
    sam = build(lambda: SAM(paper_cfg.model))
    expected = manifest(reference_dir, "sam_ffhq_aging")
    # latent_avg is a buffer here but a separate top-level entry of the official file.
    assert float_elements(sam, skip={"latent_avg"}) == expected["num_float_elements"]
    assert entries(sam, skip={"latent_avg"}) == expected["num_entries"]
    assert list(sam.latent_avg.shape) == [18, 512]


def test_generator_matches_stylegan_file(paper_cfg, reference_dir):
    sam = build(lambda: SAM(paper_cfg.model))
    expected = manifest(reference_dir, "stylegan2_ffhq_config_f_g_ema")
    assert float_elements(sam.decoder) == expected["num_float_elements"]
    assert entries(sam.decoder) == expected["num_entries"]


def test_id_network_matches_irse50_file(paper_cfg, reference_dir):
    expected = manifest(reference_dir, "model_ir_se50")
    backbone = build(lambda: make_id_backbone(paper_cfg))
    assert float_elements(backbone) == expected["num_float_elements"]
    assert entries(backbone) == expected["num_entries"]


def test_age_classifier_matches_dex_file(paper_cfg, reference_dir):
    expected = manifest(reference_dir, "dex_age_classifier")
    dex = build(lambda: make_dex(paper_cfg))
    assert float_elements(dex) == expected["num_float_elements"]
    assert entries(dex) == expected["num_entries"]


def test_lpips_matches_manifest(reference_dir):
    expected = manifest(reference_dir, "lpips_alex")
    lpips = build(lambda: LPIPS("alex"))
    assert float_elements(lpips) == expected["num_float_elements"]
    assert entries(lpips) == expected["num_entries"]
