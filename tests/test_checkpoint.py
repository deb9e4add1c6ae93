"""Training checkpoints: atomic publication, completion marker, pruning and resume selection."""

import numpy as np
import pytest

from pipeline.train import checkpoint as ckpt


def save(tmp_path, step, keep=3, lineage="a"):
    return ckpt.save_checkpoint(
        tmp_path, step,
        model_state={"encoder.w": np.full([2, 3], step, dtype=np.float32), "encoder.n": np.array(step, dtype=np.int64)},
        optimizer_state={"state": {"encoder.w": {"step": step, "exp_avg": np.ones(3, dtype=np.float32)}}},
        scaler_state=None, trainer_state={"step": step, "lineage": lineage}, config={"output_dir": str(tmp_path)},
        keep=keep,
    )


def test_round_trip_keeps_values_and_shapes(tmp_path):
    folder = save(tmp_path, 5)
    data = ckpt.load_checkpoint(folder)
    np.testing.assert_array_equal(data["model"]["encoder.w"], np.full([2, 3], 5))
    assert data["model"]["encoder.n"].shape == ()
    assert data["optimizer"]["state"]["encoder.w"]["step"] == 5
    assert data["trainer_state"] == {"step": 5, "lineage": "a"}


def test_newest_complete_checkpoint_wins(tmp_path):
    save(tmp_path, 2)
    save(tmp_path, 4)
    assert ckpt.resolve_resume("auto", tmp_path).name == "step_4"


def test_folder_without_marker_is_never_resumed(tmp_path):
    save(tmp_path, 2)
    partial = save(tmp_path, 4)
    (partial / ckpt.COMPLETE_MARKER).unlink()
    assert ckpt.resolve_resume("auto", tmp_path).name == "step_2"
    with pytest.raises(ckpt.CheckpointError, match="COMPLETE"):
        ckpt.resolve_resume(str(partial), tmp_path)
    with pytest.raises(ckpt.CheckpointError, match="incomplete"):
        ckpt.load_checkpoint(partial)


def test_staging_folder_is_ignored_and_cleaned(tmp_path):
    save(tmp_path, 2)
    staging = ckpt.checkpoint_root(tmp_path) / ".step_4.tmp"
    staging.mkdir()
    (staging / "model.safetensors").write_bytes(b"half written")
    assert ckpt.resolve_resume("auto", tmp_path).name == "step_2"
    save(tmp_path, 6)
    assert not staging.exists()


def test_only_newest_are_kept(tmp_path):
    for step in (1, 2, 3, 4):
        save(tmp_path, step, keep=2)
    assert [s for s, _ in ckpt.list_complete_checkpoints(tmp_path)] == [3, 4]


def test_resume_none_and_bad_path(tmp_path):
    save(tmp_path, 2)
    assert ckpt.resolve_resume("none", tmp_path) is None
    with pytest.raises(ckpt.CheckpointError, match="no such checkpoint"):
        ckpt.resolve_resume(str(tmp_path / "nowhere"), tmp_path)


def test_damaged_newest_falls_back_to_intact(tmp_path):
    save(tmp_path, 2)
    newest = save(tmp_path, 4)
    tensors = newest / "model.safetensors"
    data = bytearray(tensors.read_bytes())
    data[-20] ^= 0xFF
    tensors.write_bytes(bytes(data))
    assert ckpt.resolve_resume("auto", tmp_path).name == "step_2"
    with pytest.raises(ckpt.CheckpointError, match="model.safetensors"):
        ckpt.load_checkpoint(newest)


def test_truncated_json_is_detected(tmp_path):
    folder = save(tmp_path, 2)
    optimizer_json = folder / "optimizer.json"
    optimizer_json.write_text(optimizer_json.read_text()[:10])
    with pytest.raises(ckpt.CheckpointError, match="optimizer.json"):
        ckpt.load_checkpoint(folder)


def test_restart_sets_newer_checkpoints_aside(tmp_path):
    save(tmp_path, 2)
    save(tmp_path, 4)
    archive = ckpt.set_aside_newer_checkpoints(tmp_path, start_step=2, lineage="a")
    assert (archive / "step_4" / ckpt.COMPLETE_MARKER).is_file()
    save(tmp_path, 3, keep=1)
    assert [s for s, _ in ckpt.list_complete_checkpoints(tmp_path)] == [3]


def test_saved_files_are_readable_by_group(tmp_path):
    folder = save(tmp_path, 2)
    assert all(path.stat().st_mode & 0o044 == 0o044 for path in folder.iterdir())


def test_other_lineage_and_its_best_set_aside(tmp_path):
    old_run = save(tmp_path, 2, lineage="old")
    ckpt.publish_best(tmp_path, old_run)
    save(tmp_path, 4, lineage="old")
    archive = ckpt.set_aside_newer_checkpoints(tmp_path, start_step=0, lineage="new")
    assert sorted(p.name for p in archive.iterdir()) == ["best", "step_2", "step_4"]
    assert ckpt.list_complete_checkpoints(tmp_path) == []


def test_resumed_lineage_keeps_its_checkpoints(tmp_path):
    save(tmp_path, 2, lineage="a")
    save(tmp_path, 4, lineage="b")
    archive = ckpt.set_aside_newer_checkpoints(tmp_path, start_step=4, lineage="b")
    assert [p.name for p in archive.iterdir()] == ["step_2"]
    assert [s for s, _ in ckpt.list_complete_checkpoints(tmp_path)] == [4]


def test_best_restored_after_crash_between_renames(tmp_path):
    folder = save(tmp_path, 2)
    best = ckpt.publish_best(tmp_path, folder)
    best.rename(best.with_name(".best.old"))  # as if killed after the first rename
    ckpt.set_aside_newer_checkpoints(tmp_path, start_step=2, lineage="a")
    assert (best / ckpt.COMPLETE_MARKER).is_file()
