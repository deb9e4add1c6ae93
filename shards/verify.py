"""Check a shard folder against its index.json and print one line per problem.

Usage:
    python shards/verify.py DIR

DIR contains index.json, or splits.json with one folder per split. A malformed index, or a shard
name that is not shard-NNNNNN.tar, is reported as a problem. An index file, split folder or shard
that is a symbolic link is reported instead of read, so only files inside DIR are read. For every
shard the check compares the byte size and sha256 with index.json, reads the tar, and checks that
every sample has exactly its image and its json member, that the image decodes as RGB at the
index's resolution, and that the sample count matches. Exit status 0 when nothing is wrong,
1 otherwise.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tarfile
from pathlib import Path

from PIL import Image, UnidentifiedImageError

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shards.index import INDEX_NAME, SHARD_FILE_PATTERN, SPLITS_NAME, find_split_folders  # noqa: E402
from shards.index_schema import index_problems, splits_problems  # noqa: E402
from shards.tario import file_sha256  # noqa: E402

# The only decoder tried on each sample image: the one of the index's image_format.
PIL_FORMAT_BY_SUFFIX = {"jpg": "JPEG", "png": "PNG"}
# The builder writes no symlinks, and following one could read files outside the checked folder.
SYMLINK_PROBLEM = "is a symbolic link; verify.py reads only files inside the folder, so replace it with the file"


def verify_output(folder: Path) -> tuple[list[str], int]:
    """Verify a build output (one index or a split layout); return problems and the sample count."""
    folder = Path(folder)
    if (folder / INDEX_NAME).exists() or (folder / INDEX_NAME).is_symlink():
        problems, num_samples = verify_index_folder(folder, label_prefix="")
        return problems + mixed_layout_problems(folder), num_samples
    if (folder / SPLITS_NAME).exists() or (folder / SPLITS_NAME).is_symlink():
        return verify_split_layout(folder)
    return [f"{folder}: no {INDEX_NAME} or {SPLITS_NAME}; build shards with shards/build.py first"], 0


def verify_split_layout(folder: Path) -> tuple[list[str], int]:
    """Verify each split folder that splits.json lists; return problems and the sample count."""
    problems: list[str] = []
    splits = read_json(folder / SPLITS_NAME, SPLITS_NAME, problems)
    if splits is None:
        return problems, 0
    problems += splits_problems(splits, SPLITS_NAME)
    if problems:
        return problems, 0

    num_samples = 0
    listed = [split["name"] for split in splits["splits"]]
    for name in listed:
        if (folder / name).is_symlink():
            problems.append(f"{name}/: {SYMLINK_PROBLEM}")
            continue
        split_problems, split_samples = verify_index_folder(folder / name, f"{name}/")
        problems += split_problems
        num_samples += split_samples
    return problems + unlisted_output_problems(folder, listed), num_samples


def mixed_layout_problems(folder: Path) -> list[str]:
    """Return a problem for each sign of a split build next to a top-level index.json."""
    problems = []
    fix = "the folder mixes two builds; run shards/build.py into it again"
    if (folder / SPLITS_NAME).exists():
        problems.append(f"{SPLITS_NAME}: present next to the top-level {INDEX_NAME}; {fix}")
    for name in find_split_folders(folder):
        problems.append(f"{name}/: split folder next to the top-level {INDEX_NAME}; {fix}")
    return problems


def unlisted_output_problems(folder: Path, listed_splits: list[str]) -> list[str]:
    """Return a problem for each split folder or top-level shard file that splits.json does not list."""
    problems = []
    fix = "the folder mixes two builds; run shards/build.py into it again"
    for name in find_split_folders(folder):
        if name not in listed_splits:
            problems.append(f"{name}/: split folder not listed in {SPLITS_NAME}; {fix}")
    for name in sorted(os.listdir(folder)):
        if SHARD_FILE_PATTERN.match(name):
            problems.append(f"{name}: shard file outside the split folders of {SPLITS_NAME}; {fix}")
    return problems


def verify_index_folder(folder: Path, label_prefix: str) -> tuple[list[str], int]:
    """Verify every shard listed in `folder/index.json` and look for unlisted shard files."""
    problems: list[str] = []
    index = read_json(folder / INDEX_NAME, f"{label_prefix}{INDEX_NAME}", problems)
    if index is None:
        return problems, 0
    problems += index_problems(index, f"{label_prefix}{INDEX_NAME}", tuple(PIL_FORMAT_BY_SUFFIX))
    if problems:
        return problems, 0

    listed = set()
    num_samples = 0
    for record in index["shards"]:
        listed.add(record["name"])
        label = f"{label_prefix}{record['name']}"
        problems += verify_shard(folder / record["name"], record, index["resolution"], index["image_format"], label)
        num_samples += record["samples"]
    if num_samples != index["num_samples"]:
        problems.append(f"{label_prefix}{INDEX_NAME}: num_samples is {index['num_samples']} but the shards list "
                        f"{num_samples} samples")
    for name in sorted(os.listdir(folder)):
        if SHARD_FILE_PATTERN.match(name) and name not in listed:
            problems.append(f"{label_prefix}{name}: shard file not listed in {INDEX_NAME}")
    return problems, num_samples


def read_json(path: Path, label: str, problems: list[str]) -> object | None:
    """Return the parsed JSON file, or None after adding a problem line."""
    if path.is_symlink():
        problems.append(f"{label}: {SYMLINK_PROBLEM}")
        return None
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        problems.append(f"{label}: missing")
    except (OSError, ValueError, RecursionError) as exc:
        problems.append(f"{label}: unreadable JSON: {exc}")
    return None


def verify_shard(path: Path, record: dict, resolution: int, image_format: str, label: str) -> list[str]:
    """Return the problems of one shard file."""
    if path.is_symlink():
        return [f"{label}: {SYMLINK_PROBLEM}"]
    if not path.is_file():
        return [f"{label}: missing shard file"]
    problems = []
    size_bytes = path.stat().st_size
    if size_bytes != record["bytes"]:
        problems.append(f"{label}: size is {size_bytes} bytes, index.json lists {record['bytes']}")
    if file_sha256(path) != record["sha256"]:
        problems.append(f"{label}: sha256 differs from index.json (the file is corrupt or was replaced)")

    checker = SampleChecker(label, resolution, image_format)
    try:
        with tarfile.open(path, mode="r|") as tar:
            for member in tar:
                data = tar.extractfile(member).read() if member.isreg() else None
                checker.add_member(member.name, data)
    except (tarfile.TarError, OSError, EOFError) as exc:
        problems.append(f"{label}: unreadable tar after {checker.num_members} members: {exc}")
    checker.finish()
    problems += checker.problems
    if checker.num_samples != record["samples"]:
        problems.append(f"{label}: holds {checker.num_samples} samples, index.json lists {record['samples']}")
    return problems


class SampleChecker:
    """Group tar members into samples as webdataset does and check each finished sample."""

    def __init__(self, label: str, resolution: int, image_format: str):
        self.label = label
        self.resolution = resolution
        self.image_format = image_format
        self.problems: list[str] = []
        self.num_members = 0
        self.num_samples = 0
        self.seen_keys: set[str] = set()
        self.key: str | None = None
        self.members: dict[str, bytes | None] = {}

    def add_member(self, name: str, data: bytes | None) -> None:
        """Take the next tar member in file order."""
        self.num_members += 1
        key, dot, suffix = name.partition(".")
        if not dot or "/" in name:
            self.problems.append(f"{self.label}: unexpected member {name!r} (not <key>.<ext>)")
            return
        if key != self.key:
            self.finish()
            if key in self.seen_keys:
                self.problems.append(f"{self.label}: sample {key}: members are not adjacent in the tar")
            self.key, self.members = key, {}
            self.seen_keys.add(key)
        if suffix in self.members:
            self.problems.append(f"{self.label}: sample {key}: duplicate member {name!r}")
        self.members[suffix] = data

    def finish(self) -> None:
        """Check the sample collected so far, if any."""
        if self.key is None:
            return
        self.num_samples += 1
        for suffix in sorted(set(self.members) - {self.image_format, "json"}):
            self.problems.append(f"{self.label}: sample {self.key}: unexpected member {self.key}.{suffix}")
        self._check_image(self.members.get(self.image_format))
        self._check_json(self.members.get("json"))
        self.key, self.members = None, {}

    def _check_image(self, data: bytes | None) -> None:
        prefix = f"{self.label}: sample {self.key}"
        if data is None:
            self.problems.append(f"{prefix}: missing {self.image_format} member")
            return
        pil_format = PIL_FORMAT_BY_SUFFIX[self.image_format]
        try:
            with Image.open(io.BytesIO(data), formats=[pil_format]) as image:
                size, mode = image.size, image.mode
                if size != (self.resolution, self.resolution):
                    # Checked before decoding, so a crafted header cannot make the check decode a huge image.
                    self.problems.append(f"{prefix}: image is {size[0]}x{size[1]}, index.json resolution is "
                                         f"{self.resolution}")
                    return
                image.load()
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            self.problems.append(f"{prefix}: image does not decode as {pil_format}: {exc}")
            return
        if mode != "RGB":
            self.problems.append(f"{prefix}: image mode is {mode}, expected RGB")

    def _check_json(self, data: bytes | None) -> None:
        prefix = f"{self.label}: sample {self.key}"
        if data is None:
            self.problems.append(f"{prefix}: missing json member")
            return
        try:
            meta = json.loads(data)
        except (ValueError, RecursionError) as exc:
            self.problems.append(f"{prefix}: json member does not parse: {exc}")
            return
        if not isinstance(meta, dict):
            self.problems.append(f"{prefix}: json member is a {type(meta).__name__}, expected an object")
            return
        missing = [field for field in ("source", "original_size", "sha256") if field not in meta]
        if missing:
            self.problems.append(f"{prefix}: json member lacks {', '.join(missing)}")


def main(argv: list[str] | None = None) -> int:
    """Verify DIR and return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="output folder of shards/build.py")
    args = parser.parse_args(argv)

    if not args.folder.is_dir():
        print(f"error: shard folder {args.folder} not found; pass the --output folder of shards/build.py",
              file=sys.stderr)
        return 1
    problems, num_samples = verify_output(args.folder)
    for line in problems:
        print(line)
    if problems:
        noun = "problem" if len(problems) == 1 else "problems"
        print(f"FAILED: {len(problems)} {noun} in {args.folder}", file=sys.stderr)
        return 1
    print(f"OK: {num_samples} samples in {args.folder} match the index", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
