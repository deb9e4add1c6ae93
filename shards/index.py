"""The index.json schema, per-shard checkpoints and the housekeeping of an output folder.

index.json (format "sam-shards/1") lists, in order, every shard with its sample count, byte size
and sha256, and every input file that did not become a sample with its reason. A checkpoint
`.checkpoint/<shard>.json` is written for each finished shard. A re-run trusts a shard only when
its checkpoint matches the current plan and the file still has the recorded size and sha256.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path

from shards.plan import SPLIT_NAME_PATTERN, ShardPlan
from shards.tario import canonical_json, file_sha256, write_file_atomic

INDEX_FORMAT = "sam-shards/1"
INDEX_NAME = "index.json"
SPLITS_NAME = "splits.json"
CHECKPOINT_FOLDER = ".checkpoint"
SHARD_FILE_PATTERN = re.compile(r"^shard-\d{6}\.tar$")
TEMP_FILE_PATTERN = re.compile(r"^\..*\.(partial|tmp)$")


def checkpoint_path(plan: ShardPlan) -> Path:
    """Return where the checkpoint of one shard lives."""
    return plan.folder / CHECKPOINT_FOLDER / f"{plan.name}.json"


def write_checkpoint(plan: ShardPlan, plan_digest: str, result: dict) -> None:
    """Record a finished shard (its index record, skips and counts) under its plan digest."""
    path = checkpoint_path(plan)
    path.parent.mkdir(exist_ok=True)
    write_file_atomic(path, canonical_json({"plan_digest": plan_digest, "result": result}))


def load_valid_checkpoint(plan: ShardPlan, plan_digest: str) -> dict | None:
    """Return the recorded result of a complete shard, or None when the shard must be built.

    A checkpoint counts only when it was made for the same plan digest and the shard file has the
    recorded byte size and sha256.
    """
    try:
        checkpoint = json.loads(checkpoint_path(plan).read_text())
        result = checkpoint["result"]
        record = result["record"]
        if checkpoint["plan_digest"] != plan_digest:
            return None
        shard_path = plan.folder / plan.name
        if shard_path.stat().st_size != record["bytes"]:
            return None
        if file_sha256(shard_path) != record["sha256"]:
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return result


def make_index(resolution: int, image_format: str, records: list[dict], skipped: list[dict], build: dict) -> dict:
    """Assemble index.json: shards in order, skipped files sorted by path."""
    return {
        "format": INDEX_FORMAT,
        "resolution": resolution,
        "image_format": image_format,
        "num_samples": sum(record["samples"] for record in records),
        "num_upsampled": sum(record.get("upsampled", 0) for record in records),
        "shards": [{k: record[k] for k in ("name", "samples", "bytes", "sha256")} for record in records],
        "skipped": sorted(skipped, key=lambda entry: entry["path"]),
        "skipped_by_kind": dict(sorted(Counter(entry["kind"] for entry in skipped).items())),
        "build": build,
    }


def write_index(folder: Path, index: dict) -> None:
    """Write index.json atomically."""
    write_file_atomic(folder / INDEX_NAME, canonical_json(index))


def write_splits(output: Path, splits: list[dict], build: dict) -> None:
    """Write the top-level splits.json that names each split folder."""
    write_file_atomic(output / SPLITS_NAME, canonical_json({"format": INDEX_FORMAT, "splits": splits, "build": build}))


def check_output_folder(output: Path, split_names: list[str]) -> None:
    """Raise ValueError when `output` contains files that no shard build wrote.

    Accepted: an empty folder, a folder with an earlier index or checkpoints, and a folder that
    contains only shard files, temporary files, folders named like the requested splits and split
    folders of an earlier build.
    """
    if not output.exists():
        return
    if not output.is_dir():
        raise ValueError(f"--output {output} exists and is not a folder; pass a folder path")
    names = sorted(os.listdir(output))
    if {INDEX_NAME, SPLITS_NAME, CHECKPOINT_FOLDER} & set(names):
        return
    known = set(split_names) | set(find_split_folders(output))
    foreign = [
        name for name in names
        if name not in known and not SHARD_FILE_PATTERN.match(name) and not TEMP_FILE_PATTERN.match(name)
    ]
    if foreign:
        raise ValueError(
            f"--output {output} is not empty and contains no earlier shard build (found {foreign[0]!r} "
            f"among {len(names)} entries); pass an empty or new folder")


def remove_temp_files(folder: Path) -> list[str]:
    """Delete partial shards and temporary files that an interrupted build left behind."""
    removed = []
    for search_folder in (folder, folder / CHECKPOINT_FOLDER):
        if not search_folder.is_dir():
            continue
        for name in sorted(os.listdir(search_folder)):
            if TEMP_FILE_PATTERN.match(name):
                (search_folder / name).unlink(missing_ok=True)
                removed.append(name)
    return removed


def remove_stale_shards(folder: Path, planned_names: set[str]) -> list[str]:
    """Delete shard files and checkpoints of an earlier build that the current plan has no place for."""
    removed = []
    if not folder.is_dir():
        return removed
    for name in sorted(os.listdir(folder)):
        if SHARD_FILE_PATTERN.match(name) and name not in planned_names:
            (folder / name).unlink()
            removed.append(name)
    checkpoints = folder / CHECKPOINT_FOLDER
    if checkpoints.is_dir():
        for name in sorted(os.listdir(checkpoints)):
            if name.endswith(".json") and name[: -len(".json")] not in planned_names:
                (checkpoints / name).unlink()
    return removed


def read_split_names(output: Path) -> list[str]:
    """Return the valid split names listed in `output/splits.json`, or [] when it is missing or malformed."""
    try:
        splits = json.loads((output / SPLITS_NAME).read_text())["splits"]
        names = [split["name"] for split in splits]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    return [name for name in names if isinstance(name, str) and SPLIT_NAME_PATTERN.match(name)]


def find_split_folders(output: Path) -> list[str]:
    """Return the names of subfolders of `output` that contain the shard set of a split.

    A subfolder counts when splits.json lists it, or when it contains index.json or a checkpoint
    folder. Symlinks and names that no split can have (hidden names, for one) never count.
    """
    if not output.is_dir():
        return []
    listed = set(read_split_names(output))
    found = []
    for name in sorted(os.listdir(output)):
        folder = output / name
        if not SPLIT_NAME_PATTERN.match(name) or folder.is_symlink() or not folder.is_dir():
            continue
        if name in listed or (folder / INDEX_NAME).is_file() or (folder / CHECKPOINT_FOLDER).is_dir():
            found.append(name)
    return found


def remove_shard_set(folder: Path) -> None:
    """Delete the index, shards, checkpoints and temporary files a build wrote in `folder`.

    The folder itself is deleted when nothing else is left in it.
    """
    # The index goes first, so an interrupted removal never leaves an index without its shards.
    (folder / INDEX_NAME).unlink(missing_ok=True)
    remove_stale_shards(folder, set())
    remove_temp_files(folder)
    for empty_candidate in (folder / CHECKPOINT_FOLDER, folder):
        try:
            empty_candidate.rmdir()
        except OSError:
            # Missing, or it contains files that no build wrote: leave it.
            pass
