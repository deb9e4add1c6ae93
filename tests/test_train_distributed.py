"""Real 2-rank training runs on CPU (gloo): a short run, a killed and resumed run, corrupt shards."""

import json
import os
import shutil
import signal
import subprocess
import time

import psutil
import pytest

from tests.helpers import REPO_ROOT, build_shards, read_worker_logs, run_env, train_command

pytestmark = pytest.mark.multiproc

STEPS = 4
COMMON = ["train.log_interval=1", "train.save_interval=2", "train.image_interval=2", "data.num_workers=1"]


@pytest.fixture(scope="module")
def shards(faces_dir, tmp_path_factory):
    return build_shards(faces_dir / "ffhq", tmp_path_factory.mktemp("shards") / "ffhq", samples_per_shard=3)


def overrides(shards, out, steps=STEPS, extra=()):
    return [f"data.train_shards={shards}", f"output_dir={out}", f"train.max_steps={steps}", *COMMON, *extra]


def run(nproc, out, overrides_, timeout=420):
    """Run a training command to completion; return (returncode, combined logs)."""
    log_dir = out / "launch"
    result = subprocess.run(train_command(nproc, log_dir, overrides_), cwd=REPO_ROOT, env=run_env(),
                            capture_output=True, text=True, timeout=timeout)
    logs = result.stdout + result.stderr + read_worker_logs(log_dir)
    return result.returncode, logs


def stats(out):
    return [json.loads(line) for line in (out / "stats.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def reference_run(shards, tmp_path_factory):
    """An uninterrupted 2-rank run of STEPS steps."""
    out = tmp_path_factory.mktemp("reference")
    code, logs = run(2, out, overrides(shards, out))
    assert code == 0, logs
    return out, logs


def test_two_ranks_train_and_leave_checkpoints(reference_run):
    out, logs = reference_run
    records = stats(out)
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    for key in ("loss", "lr", "images_per_sec", "loss_l2_real", "loss_lpips_real", "loss_id_real",
                "loss_aging_real", "loss_w_norm_real", "loss_total_cycle", "data_wait_share", "eta_sec"):
        assert key in records[-1], key
    assert records[-1]["images_seen"] == STEPS * 2 * 2  # steps x batch 2 x 2 ranks
    complete = sorted(p.name for p in (out / "checkpoints").iterdir() if (p / "COMPLETE").is_file())
    assert complete == ["step_2", "step_4"]
    assert "on 2 rank(s)" in logs
    assert any((out / "vdl").iterdir())


def test_random_weights_are_named_in_the_log(reference_run):
    _, logs = reference_run
    for network in ("StyleGAN2 generator", "frozen pSp encoder", "DEX age classifier", "LPIPS"):
        assert f"no weights for the {network}" in logs or f"no weights for {network}" in logs, network


def kill_tree(proc):
    """SIGKILL the launcher and every rank it started, as a preempted node loses them all."""
    family = [proc.pid] + [child.pid for child in psutil.Process(proc.pid).children(recursive=True)]
    for pid in family:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
    psutil.wait_procs([p for p in map(_process_or_none, family) if p is not None], timeout=30)


def _process_or_none(pid):
    try:
        return psutil.Process(pid)
    except psutil.NoSuchProcess:
        return None


def wait_for(path, proc, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.2)
    return False


def test_killed_run_resumes_after_its_checkpoint(shards, reference_run, tmp_path):
    """Kill a run after its step-2 checkpoint; the restart continues at step 3 and logs no step twice."""
    out = tmp_path / "interrupted"
    log_dir = out / "launch"
    command = train_command(2, log_dir, overrides(shards, out))
    proc = subprocess.Popen(command, cwd=REPO_ROOT, env=run_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        marker = out / "checkpoints" / "step_2" / "COMPLETE"
        assert wait_for(marker, proc, timeout=300), read_worker_logs(log_dir)
    finally:
        kill_tree(proc)
    assert not (out / "checkpoints" / "step_4" / "COMPLETE").exists(), "the run finished before it was killed"
    shutil.rmtree(log_dir)

    code, logs = run(2, out, overrides(shards, out))
    assert code == 0, logs
    assert "resumed from" in logs
    assert "at step 2" in logs
    steps = [r["step"] for r in stats(out)]
    assert steps == list(range(1, STEPS + 1))

    # Every random draw is seeded from the step, so the resumed run reproduces the reference.
    reference_out, _ = reference_run
    expected = {r["step"]: r["loss"] for r in stats(reference_out)}
    assert {r["step"]: r["loss"] for r in stats(out)} == expected


def truncate_one_shard(shards, tmp_path):
    broken = tmp_path / "broken_shards"
    shutil.copytree(shards, broken)
    victim = broken / "shard-000002.tar"
    victim.write_bytes(victim.read_bytes()[:5000])
    return broken


def test_corrupt_shard_raise_stops_every_rank(shards, tmp_path):
    broken = truncate_one_shard(shards, tmp_path)
    out = tmp_path / "raise"
    started = time.time()
    code, logs = run(2, out, overrides(broken, out, steps=8, extra=["data.on_error=raise"]), timeout=300)
    assert code != 0
    assert "shard-000002.tar" in logs
    assert "data.on_error=skip" in logs
    assert time.time() - started < 240  # both ranks stopped without waiting for a collective timeout


def test_corrupt_shard_skip_finishes_and_counts(shards, tmp_path):
    broken = truncate_one_shard(shards, tmp_path)
    out = tmp_path / "skip"
    code, logs = run(2, out, overrides(broken, out, steps=6, extra=["data.on_error=skip"]), timeout=300)
    assert code == 0, logs
    records = stats(out)
    assert [r["step"] for r in records] == list(range(1, 7))
    assert records[-1]["data_errors"] >= 1
    assert "shard-000002.tar" in logs
