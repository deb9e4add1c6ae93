"""Config loading: defaults, YAML overrides, and rejection of unknown keys and bad values."""

import subprocess
import sys

import pytest

from pipeline.config import ConfigError, config_from_dict, config_to_dict, describe_keys, load_config
from tests.helpers import REPO_ROOT

TINY = str(REPO_ROOT / "configs" / "tiny.yaml")
PAPER = str(REPO_ROOT / "configs" / "sam_ffhq_aging.yaml")


def test_override_value_is_read_as_yaml():
    cfg = load_config(TINY, ["eval.ages=[0,50,100]", "train.max_steps=7", "amp.dtype=bfloat16"])
    assert cfg.eval.ages == [0, 50, 100]
    assert cfg.train.max_steps == 7
    assert cfg.amp.dtype == "bfloat16"


def test_later_override_wins():
    cfg = load_config(TINY, ["train.max_steps=7", "train.max_steps=9"])
    assert cfg.train.max_steps == 9


@pytest.mark.parametrize("override,named", [
    ("train.max_stpes=3", "train.max_stpes"),
    ("trian.max_steps=3", "trian"),
    ("model.output_size.x=3", "model.output_size"),
])
def test_unknown_key_rejected_with_name(override, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_config(TINY, [override])


@pytest.mark.parametrize("override,named", [
    ("train.batch_size=0", "train.batch_size"),
    ("train.batch_size=two", "train.batch_size"),
    ("amp.dtype=float8", "amp.dtype"),
    ("data.on_error=ignore", "data.on_error"),
    ("model.output_size=100", "model.output_size"),
    ("eval.ages=[0,101]", "eval.ages"),
    ("train.best_metric=fid", "train.best_metric"),
    ("data.flip_prob=1.5", "data.flip_prob"),
    ("amp.enabled=yes please", "amp.enabled"),
])
def test_invalid_value_rejected_with_name(override, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_config(TINY, [override])


def test_unknown_key_in_yaml_file_rejected(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  batch_sise: 4\n")
    with pytest.raises(ConfigError, match=r"train\.batch_sise"):
        load_config(str(path))


def test_conflicting_latent_options_rejected():
    with pytest.raises(ConfigError, match="start_from_latent_avg"):
        load_config(TINY, ["model.start_from_latent_avg=true", "model.start_from_encoded_w_plus=true"])


def test_paper_config_holds_released_recipe():
    cfg = load_config(PAPER)
    assert (cfg.loss.id_lambda, cfg.loss.lpips_lambda, cfg.loss.lpips_lambda_aging) == (0.1, 0.1, 0.1)
    assert (cfg.loss.lpips_lambda_crop, cfg.loss.l2_lambda, cfg.loss.l2_lambda_aging) == (0.6, 0.25, 0.25)
    assert (cfg.loss.l2_lambda_crop, cfg.loss.w_norm_lambda, cfg.loss.aging_lambda) == (1.0, 0.005, 5.0)
    assert cfg.loss.cycle_lambda == 1.0
    assert cfg.loss.use_weighted_id_loss
    assert cfg.model.output_size == 1024
    assert cfg.model.start_from_encoded_w_plus
    assert cfg.train.learning_rate == 1e-4
    assert cfg.train.optimizer == "ranger"


def test_round_trip_through_dict():
    cfg = load_config(TINY)
    assert config_from_dict(config_to_dict(cfg)) == cfg


def test_every_key_is_documented():
    undocumented = [key for key, text in describe_keys() if not text]
    assert undocumented == []


def test_train_cli_rejects_unknown_key_before_any_work(tmp_path):
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "launch" / "train.py"), "-c", TINY,
         "-o", f"output_dir={out}", "-o", "train.max_stepz=3"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert "train.max_stepz" in result.stderr
    assert not out.exists()


@pytest.mark.parametrize("override,named", [
    ("train.seed=-1", "train.seed"),
    ("model.style_dim=0", "model.style_dim"),
    ("model.encoder_num_layers=51", "model.encoder_num_layers"),
    ("model.pool_size=128", "model.pool_size"),
    ("model.id_net_widths=[1]", "model.id_net_widths"),
    ("model.generator_channels={4: 32}", "model.generator_channels"),
    ("model.generator_channels.32=8", "model.generator_channels"),
    ("train.learning_rate=.inf", "train.learning_rate"),
    ("loss.l2_lambda=-1", "loss.l2_lambda"),
    ("loss.id_lambda=.nan", "loss.id_lambda"),
    ("eval.num_grid_images=-5", "eval.num_grid_images"),
    ("amp.init_loss_scaling=-1", "amp.init_loss_scaling"),
    ("model.encoder_widths=[a,b,c,d]", "model.encoder_widths"),
    ("output_dir=''", "output_dir"),
    ("eval.ages=[0,0,100]", "eval.ages"),
])
def test_unbuildable_value_rejected_before_work(override, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_config(TINY, [override])


def test_exponent_without_dot_is_a_number():
    cfg = load_config(TINY, ["train.learning_rate=1e-4"])
    assert cfg.train.learning_rate == 1e-4
