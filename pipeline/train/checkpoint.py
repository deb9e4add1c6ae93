"""Atomic, resumable training checkpoints.

Layout: `<output_dir>/checkpoints/step_<N>/` holding
  model.safetensors   trainable weights (the age encoder) and the frozen pSp encoder's BatchNorm
                      statistics, which drift during training
  optimizer.safetensors + optimizer.json
                      optimizer state keyed by structured parameter names
  scaler.json         AMP loss-scaler state (absent when no scaler runs)
  trainer_state.json  step, images seen, data position, random states, best metric
  config.yaml         the resolved config of the run
  COMPLETE            written last, with the sha256 of every other file; a folder without it, or
                      whose files no longer match it, is never loaded

Rank 0 writes everything under `.step_<N>.tmp/` and renames the folder once COMPLETE is in it.
Tensors go to safetensors files and everything else to JSON, so loading a checkpoint never
unpickles anything and cannot run code.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipeline.train.state_io import load_tree, save_tree

log = logging.getLogger(__name__)

COMPLETE_MARKER = "COMPLETE"
STEP_DIR = re.compile(r"^step_(\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, incomplete or does not fit the run."""


@dataclass
class CheckpointPaths:
    folder: Path

    @property
    def model(self) -> Path:
        return self.folder / "model"

    @property
    def optimizer(self) -> Path:
        return self.folder / "optimizer"

    @property
    def scaler(self) -> Path:
        return self.folder / "scaler.json"

    @property
    def trainer_state(self) -> Path:
        return self.folder / "trainer_state.json"

    @property
    def config(self) -> Path:
        return self.folder / "config.yaml"

    @property
    def marker(self) -> Path:
        return self.folder / COMPLETE_MARKER


def checkpoint_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json(path: Path, data: Any) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())


def _file_digests(folder: Path) -> dict:
    """Return {file name: sha256} of every file in a checkpoint folder except the marker."""
    digests = {}
    for path in sorted(folder.iterdir()):
        if path.name == COMPLETE_MARKER or not path.is_file():
            continue
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        digests[path.name] = digest.hexdigest()
    return digests


def _fsync_files(folder: Path) -> None:
    """Flush every file of `folder` to disk and give it the mode the user's umask gives new files."""
    umask = os.umask(0)
    os.umask(umask)
    for path in folder.iterdir():
        os.chmod(path, 0o666 & ~umask)  # safetensors creates its files with mode 0600
        with open(path, "rb") as f:
            os.fsync(f.fileno())


def verify_checkpoint(folder: Path) -> None:
    """Raise CheckpointError unless the folder is complete and every file matches its recorded sha256."""
    marker = Path(folder) / COMPLETE_MARKER
    if not marker.is_file():
        raise CheckpointError(f"checkpoint {folder} is incomplete (no {COMPLETE_MARKER}); it cannot be loaded")
    try:
        recorded = json.loads(marker.read_text())["sha256"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"checkpoint {folder}: its {COMPLETE_MARKER} marker is damaged or lacks the file "
                              f"checksums ({type(exc).__name__}: {exc}); resume from another checkpoint") from exc
    actual = _file_digests(Path(folder))
    damaged = sorted(name for name in set(recorded) | set(actual) if recorded.get(name) != actual.get(name))
    if damaged:
        raise CheckpointError(
            f"checkpoint {folder} is damaged: {', '.join(damaged)} changed, went missing or appeared after it was "
            "saved; resume from an earlier checkpoint"
        )


def save_checkpoint(output_dir: str | Path, step: int, *, model_state: dict, optimizer_state: dict,
                    scaler_state: dict | None, trainer_state: dict, config: dict, keep: int) -> Path:
    """Write checkpoint `step_<step>` atomically, then delete all but the newest `keep` complete ones."""
    root = checkpoint_root(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step}"
    staging = root / f".step_{step}.tmp"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    paths = CheckpointPaths(staging)

    # Write the payload, then the marker, then publish the folder with one rename.
    save_tree(paths.model, model_state)
    save_tree(paths.optimizer, optimizer_state)
    if scaler_state is not None:
        _write_json(paths.scaler, scaler_state)
    _write_json(paths.trainer_state, trainer_state)
    paths.config.write_text(yaml.safe_dump(config, sort_keys=False))
    _fsync_files(staging)
    _write_json(paths.marker, {"step": step, "sha256": _file_digests(staging)})
    _fsync_dir(staging)
    if final.exists():
        # A checkpoint of the same step from an earlier attempt: replace it as a whole.
        shutil.rmtree(final)
    os.rename(staging, final)
    _fsync_dir(root)
    prune_checkpoints(output_dir, keep)
    return final


def publish_best(output_dir: str | Path, source: Path) -> Path:
    """Copy a complete checkpoint to `checkpoints/best/`, replacing the previous best atomically."""
    root = checkpoint_root(output_dir)
    best, staging, retired = root / "best", root / ".best.tmp", root / ".best.old"
    _recover_best(root)
    for stale in (staging, retired):
        if stale.exists():
            shutil.rmtree(stale)
    shutil.copytree(source, staging)
    _fsync_dir(staging)
    if best.exists():
        os.rename(best, retired)
    os.rename(staging, best)
    _fsync_dir(root)
    shutil.rmtree(retired, ignore_errors=True)
    return best


def list_complete_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """Return (step, folder) of every complete checkpoint, oldest first."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    found = []
    for entry in root.iterdir():
        match = STEP_DIR.match(entry.name)
        if match and (entry / COMPLETE_MARKER).is_file():
            found.append((int(match.group(1)), entry))
    return sorted(found)


def prune_checkpoints(output_dir: str | Path, keep: int) -> None:
    """Delete complete checkpoints beyond the newest `keep`, and stale staging folders."""
    complete = list_complete_checkpoints(output_dir)
    for _, folder in complete[:-keep]:
        shutil.rmtree(folder, ignore_errors=True)
    root = checkpoint_root(output_dir)
    for entry in root.iterdir():
        if entry.name.startswith(".step_") and entry.name.endswith(".tmp"):
            shutil.rmtree(entry, ignore_errors=True)


def newest_intact_checkpoint(output_dir: str | Path) -> Path | None:
    """Return the newest complete checkpoint whose files match their sha256, warning about damaged ones."""
    for _, folder in reversed(list_complete_checkpoints(output_dir)):
        try:
            verify_checkpoint(folder)
            return folder
        except CheckpointError as exc:
            log.warning("skipping a damaged checkpoint: %s", exc)
    return None


def checkpoint_lineage(folder: Path) -> str | None:
    """Return the lineage id a checkpoint was written under, or None if it records none."""
    try:
        return json.loads((Path(folder) / "trainer_state.json").read_text()).get("lineage") or None
    except (OSError, json.JSONDecodeError, AttributeError):
        return None


def _belongs_elsewhere(step: int, folder: Path, start_step: int, lineage: str) -> bool:
    other = checkpoint_lineage(folder)
    return step > start_step or (other is not None and other != lineage)


def set_aside_newer_checkpoints(output_dir: str | Path, start_step: int, lineage: str) -> Path | None:
    """Move checkpoints of other runs into checkpoints/superseded/, so pruning never deletes them.

    A run that starts over (--resume none) or from an older checkpoint begins a new line of
    steps, identified by `lineage`. Checkpoints past `start_step`, checkpoints of another lineage
    and a best/ copy of either are kept under superseded/, not silently replaced or pruned.
    """
    root = checkpoint_root(output_dir)
    _recover_best(root)
    moving = [folder for step, folder in list_complete_checkpoints(output_dir)
              if _belongs_elsewhere(step, folder, start_step, lineage)]
    best = root / "best"
    if best.is_dir():
        best_step = json.loads((best / COMPLETE_MARKER).read_text()).get("step", 0) if (best / COMPLETE_MARKER).is_file() else 0
        if _belongs_elsewhere(best_step, best, start_step, lineage):
            moving.append(best)
    if not moving:
        return None
    archive = root / "superseded" / f"from_step_{start_step}_{time.strftime('%Y%m%d-%H%M%S')}"
    archive.mkdir(parents=True)
    for folder in moving:
        os.rename(folder, archive / folder.name)
    log.warning("this run (lineage %s) starts at step %d, so %d checkpoint(s) of other runs moved to %s",
                lineage, start_step, len(moving), archive)
    return archive


def _recover_best(root: Path) -> None:
    """Restore best/ if a crash struck between the two renames of publish_best."""
    best, retired = root / "best", root / ".best.old"
    if not best.exists() and retired.is_dir():
        os.rename(retired, best)
        log.warning("restored %s, which a crash left as %s", best, retired)


def resolve_resume(resume: str, output_dir: str | Path, option: str = "--resume") -> Path | None:
    """Return the checkpoint folder to resume from: `auto`, `none` or a path. `option` names the flag in errors."""
    if resume == "none":
        return None
    if resume == "auto":
        return newest_intact_checkpoint(output_dir)
    folder = Path(resume)
    if not folder.is_dir():
        raise CheckpointError(f"{option} {resume}: no such checkpoint folder or file; pass a step_<N> folder "
                              "or a converted SAM .safetensors file")
    if not (folder / COMPLETE_MARKER).is_file():
        raise CheckpointError(
            f"{option} {resume}: the folder has no {COMPLETE_MARKER} marker, so it was never finished; "
            "use an earlier checkpoint"
        )
    return folder


def load_checkpoint(folder: Path) -> dict:
    """Read a complete checkpoint folder into a dict of its parts."""
    paths = CheckpointPaths(Path(folder))
    verify_checkpoint(paths.folder)
    return {
        "model": load_tree(paths.model),
        "optimizer": load_tree(paths.optimizer),
        "scaler": json.loads(paths.scaler.read_text()) if paths.scaler.is_file() else None,
        "trainer_state": json.loads(paths.trainer_state.read_text()),
        "config": yaml.safe_load(paths.config.read_text()),
    }
