"""Every official SAM training option has a config key here or a stated reason why not."""

import json

import pytest

from pipeline.config import OFFICIAL_TRAIN_OPTIONS, Config, describe_keys, load_config
from tests.helpers import REPO_ROOT


@pytest.fixture(scope="module")
def options(reference_dir):
    return json.loads((reference_dir / "manifests" / "options.json").read_text())


def test_every_train_option_is_mapped(options):
    names = {option["name"] for option in options["train_options"]}
    assert sorted(names - set(OFFICIAL_TRAIN_OPTIONS)) == []
    assert sorted(set(OFFICIAL_TRAIN_OPTIONS) - names) == []


def test_mapped_keys_exist():
    keys = {key for key, _ in describe_keys(Config())}
    targets = [t for t in OFFICIAL_TRAIN_OPTIONS.values() if isinstance(t, str)]
    assert sorted(set(targets) - keys) == []


def test_unmapped_options_state_a_reason():
    for name, target in OFFICIAL_TRAIN_OPTIONS.items():
        if not isinstance(target, str):
            assert target[0] is None, name
            assert len(target[1]) > 20, name


# Options whose released values are paths or run-specific choices, not part of the recipe.
NOT_RECIPE = {"exp_dir", "stylegan_weights", "checkpoint_path", "pretrained_psp_path", "workers", "test_batch_size",
              "save_interval", "val_interval", "image_interval"}


def test_paper_config_matches_released_command(options):
    cfg = load_config(str(REPO_ROOT / "configs" / "sam_ffhq_aging.yaml"))
    resolved = options["readme_training_command_resolved"]
    mismatches = []
    for name, target in OFFICIAL_TRAIN_OPTIONS.items():
        if not isinstance(target, str) or name in NOT_RECIPE:
            continue
        section, key = target.split(".") if "." in target else (None, target)
        ours = getattr(getattr(cfg, section), key) if section else getattr(cfg, key)
        if ours != resolved[name]:
            mismatches.append((name, resolved[name], target, ours))
    assert mismatches == []


def test_released_command_draws_uniform_targets(options):
    resolved = options["readme_training_command_resolved"]
    assert resolved["target_age"] == "uniform_random"
    assert resolved["input_nc"] == 4
