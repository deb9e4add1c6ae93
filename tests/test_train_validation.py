"""Validation during training: fixed subset, records in stats.jsonl, and the best checkpoint."""

import json
import subprocess

import pytest

from tests.helpers import REPO_ROOT, build_shards, copy_faces, read_worker_logs, run_env, train_command


@pytest.fixture(scope="module")
def shard_sets(faces_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("val")
    train = build_shards(faces_dir / "ffhq", root / "ffhq", samples_per_shard=4)
    celeba = copy_faces(faces_dir / "celeba_hq", root / "celeba_src", count=3)
    test = build_shards(celeba, root / "celeba", samples_per_shard=2)
    return train, test


def test_validation_logs_and_keeps_best(shard_sets, tmp_path):
    train, test = shard_sets
    out = tmp_path / "run"
    overrides = [f"data.train_shards={train}", f"data.test_shards={test}", f"output_dir={out}",
                 "train.max_steps=2", "train.save_interval=10", "train.log_interval=1", "train.val_interval=1",
                 "train.val_images=3", "train.best_metric=mse", "eval.ages=[0,100]", "data.num_workers=0"]
    result = subprocess.run(train_command(1, out / "launch", overrides), cwd=REPO_ROOT, env=run_env(),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr + read_worker_logs(out / "launch")

    records = [json.loads(line) for line in (out / "stats.jsonl").read_text().splitlines()]
    val = [r for r in records if "val" in r]
    assert [r["step"] for r in val] == [1, 2]
    assert val[0]["val"]["images"] == 3
    assert "mse" in val[0]["val"]

    best = out / "checkpoints" / "best"
    assert (best / "COMPLETE").is_file()
    state = json.loads((best / "trainer_state.json").read_text())
    mse_by_step = {r["step"]: r["val"]["mse"] for r in val}
    assert state["best_step"] == min(mse_by_step, key=mse_by_step.get)
    assert state["best_metric"] == pytest.approx(min(mse_by_step.values()))
