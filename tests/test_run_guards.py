"""Guards around a training run: the output folder lock and stats.jsonl after a crash."""

import json

import pytest

from pipeline.train.run import OutputDirBusyError, lock_output_dir
from pipeline.train.run_log import drop_records_after


def test_second_lock_on_output_dir_rejected(tmp_path):
    first = lock_output_dir(tmp_path)
    with pytest.raises(OutputDirBusyError, match="in use"):
        lock_output_dir(tmp_path)
    first.close()
    lock_output_dir(tmp_path).close()  # released with its holder


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
