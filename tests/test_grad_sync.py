"""Gradients are all-reduced: after real 2-rank steps on different data, both ranks hold the same weights."""

import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import REPO_ROOT, build_shards, read_worker_logs, run_env

pytestmark = pytest.mark.multiproc


@pytest.mark.parametrize("accumulate_steps", [1, 2])
def test_ranks_hold_identical_weights(faces_dir, tmp_path, accumulate_steps):
    shards = build_shards(faces_dir / "ffhq", tmp_path / "shards", samples_per_shard=3)
    out = tmp_path / "run"
    command = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2", "--log_dir",
               str(out / "launch"), str(REPO_ROOT / "tests" / "scripts" / "train_and_dump.py"),
               f"data.train_shards={shards}", f"output_dir={out}", "train.max_steps=1", "train.save_interval=100",
               f"train.accumulate_steps={accumulate_steps}", "train.log_interval=1", "data.num_workers=0"]
    result = subprocess.run(command, cwd=REPO_ROOT, env=run_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr + read_worker_logs(out / "launch")

    rank0, rank1 = np.load(out / "rank0.npz"), np.load(out / "rank1.npz")
    initial = np.load(out / "initial0.npz")
    trained = [k for k in rank0.files if not k.endswith(("_mean", "_variance", "num_batches_tracked"))]
    for key in trained:
        np.testing.assert_array_equal(rank0[key], rank1[key], err_msg=key)
    assert any(not np.array_equal(rank0[k], initial[k]) for k in trained)
