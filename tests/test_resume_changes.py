"""Resuming with changed settings: a new learning rate applies, a changed data order restarts an epoch."""

import json
import subprocess

import pytest

from tests.helpers import REPO_ROOT, build_shards, run_env, train_command


@pytest.fixture(scope="module")
def shards(faces_dir, tmp_path_factory):
    return build_shards(faces_dir / "ffhq", tmp_path_factory.mktemp("shards") / "ffhq", samples_per_shard=5)


def train(out, shards, *extra, resume=()):
    overrides = [f"data.train_shards={shards}", f"output_dir={out}", "train.log_interval=1", "train.save_interval=1",
                 *extra]
    result = subprocess.run(train_command(1, out, overrides, extra=resume), cwd=REPO_ROOT, env=run_env(),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def records(out):
    return [json.loads(line) for line in (out / "stats.jsonl").read_text().splitlines()]


def test_resume_applies_changed_settings(shards, tmp_path):
    out = tmp_path / "run"
    train(out, shards, "train.max_steps=1", "data.num_workers=0")
    logs = train(out, shards, "train.max_steps=2", "data.num_workers=1", "train.learning_rate=0.001")
    assert "learning rate changes from 0.0001" in logs
    assert "data order changed" in logs
    assert "data.num_workers" in logs
    steps = records(out)
    assert [r["step"] for r in steps] == [1, 2]
    assert steps[0]["lr"] == pytest.approx(1e-4)
    assert steps[1]["lr"] == pytest.approx(1e-3)
    state = json.loads((out / "checkpoints" / "step_2" / "trainer_state.json").read_text())
    assert state["data_first_epoch"] == 1
    assert state["batches_seen"] == 1


def test_restart_from_older_checkpoint_keeps_newer_ones(shards, tmp_path):
    out = tmp_path / "run"
    train(out, shards, "train.max_steps=2", "data.num_workers=0", "train.keep_checkpoints=1")
    train(out, shards, "train.max_steps=1", "data.num_workers=0", "train.keep_checkpoints=1",
          resume=("--resume", "none"))
    assert (out / "checkpoints" / "step_1" / "COMPLETE").is_file()
    superseded = list((out / "checkpoints" / "superseded").glob("*/step_2/COMPLETE"))
    assert len(superseded) == 1
    assert [r["step"] for r in records(out)] == [1]
    assert (out / "stats.superseded.jsonl").is_file()
