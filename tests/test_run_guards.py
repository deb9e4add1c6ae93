"""Guards around a training run: the output folder lock and stats.jsonl after a crash."""

import json
import subprocess
import sys

import pytest

from pipeline.train.run import OutputDirBusyError, lock_output_dir
from pipeline.train.run_log import drop_records_after
from tests.helpers import REPO_ROOT


LOCK_FROM_OTHER_PROCESS = """
import sys
sys.path.insert(0, {repo!r})
from pathlib import Path
from pipeline.train.run import OutputDirBusyError, lock_output_dir
try:
    lock_output_dir(Path({folder!r}))
except OutputDirBusyError as exc:
    print("busy:", exc)
    sys.exit(3)
print("locked")
"""

HOLD_LOCK_THEN_FORK = """
import os, sys, time
sys.path.insert(0, {repo!r})
from pathlib import Path
from pipeline.train.run import lock_output_dir
handle = lock_output_dir(Path({folder!r}))
if os.fork() == 0:  # a child such as a DataLoader worker, which outlives its parent
    time.sleep(30)
    os._exit(0)
print("parent exits", flush=True)
os._exit(0)
"""


def try_lock(folder):
    code = LOCK_FROM_OTHER_PROCESS.format(repo=str(REPO_ROOT), folder=str(folder))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def test_second_lock_on_output_dir_rejected(tmp_path):
    first = lock_output_dir(tmp_path)
    result = try_lock(tmp_path)
    assert result.returncode == 3
    assert "in use" in result.stdout
    first.close()
    assert try_lock(tmp_path).returncode == 0  # released with its holder


def test_forked_child_does_not_keep_the_lock(tmp_path):
    code = HOLD_LOCK_THEN_FORK.format(repo=str(REPO_ROOT), folder=str(tmp_path))
    holder = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "parent exits" in holder.stdout
    result = try_lock(tmp_path)  # the forked child still sleeps with the file open
    assert result.returncode == 0, result.stdout


def test_lock_in_unusable_folder_rejected(tmp_path):
    (tmp_path / "train.lock").mkdir()
    with pytest.raises(OutputDirBusyError, match="train.lock"):
        lock_output_dir(tmp_path)


def test_records_past_start_step_move_aside(tmp_path):
    stats = tmp_path / "stats.jsonl"
    stats.write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in (1, 2, 3, 4)))
    drop_records_after(stats, 2)
    assert [json.loads(line)["step"] for line in stats.read_text().splitlines()] == [1, 2]
    moved = (tmp_path / "stats.superseded.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in moved] == [3, 4]


def test_line_cut_short_by_a_crash_is_tolerated(tmp_path):
    stats = tmp_path / "stats.jsonl"
    stats.write_text(json.dumps({"step": 1, "loss": 1.0}) + "\n" + '{"step": 2, "loss": 9.1')
    drop_records_after(stats, 1)
    assert [json.loads(line)["step"] for line in stats.read_text().splitlines()] == [1]
    assert '"step": 2' in (tmp_path / "stats.superseded.jsonl").read_text()


def test_records_of_other_lineage_move_aside(tmp_path):
    stats = tmp_path / "stats.jsonl"
    lines = [{"step": 1, "lineage": "b"}, {"step": 2, "lineage": "b"}, {"step": 1, "lineage": "a"}, [1, 2], {"step": "2"}]
    stats.write_text("".join(json.dumps(r) + "\n" for r in lines))
    drop_records_after(stats, 5, lineage="a")
    assert [json.loads(line) for line in stats.read_text().splitlines()] == [{"step": 1, "lineage": "a"}]
    assert len((tmp_path / "stats.superseded.jsonl").read_text().splitlines()) == 4
