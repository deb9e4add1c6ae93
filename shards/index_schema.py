"""Check the structure of a parsed index.json or splits.json before verify.py uses any value in it.

Names that become file paths must match what the builder writes (shard-NNNNNN.tar, and split
names of letters, digits, _ and -), so a crafted index cannot send verify.py outside its folder.
Each function returns problem lines and an empty list for a well-formed file.
"""

from __future__ import annotations

import re

from shards.index import INDEX_FORMAT, SHARD_FILE_PATTERN
from shards.plan import SPLIT_NAME_PATTERN

SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")
MAX_REPR_CHARS = 60


def index_problems(index: object, label: str, image_formats: tuple[str, ...]) -> list[str]:
    """Return the structural problems of a parsed index.json, labelled with `label`."""
    if not isinstance(index, dict):
        return [f"{label}: expected a JSON object, found {type(index).__name__}"]
    if index.get("format") != INDEX_FORMAT:
        return [f"{label}: format is {short_repr(index.get('format'))}, expected {INDEX_FORMAT!r}"]

    problems = [
        field_problem(index, "resolution", is_positive_int, "a positive integer", label),
        field_problem(index, "image_format", lambda value: value in image_formats,
                      f"one of {', '.join(image_formats)}", label),
        field_problem(index, "num_samples", is_count, "a non-negative integer", label),
        field_problem(index, "shards", lambda value: isinstance(value, list), "a list", label),
    ]
    problems = [problem for problem in problems if problem]
    if isinstance(index.get("shards"), list):
        problems += records_problems(index["shards"], label, "shards", shard_record_problems)
    return problems


def splits_problems(splits: object, label: str) -> list[str]:
    """Return the structural problems of a parsed splits.json, labelled with `label`."""
    if not isinstance(splits, dict):
        return [f"{label}: expected a JSON object, found {type(splits).__name__}"]
    problem = field_problem(splits, "splits", lambda value: isinstance(value, list), "a list", label)
    if problem:
        return [problem]
    return records_problems(splits["splits"], label, "splits", split_record_problems)


def records_problems(records: list, label: str, list_name: str, record_problems) -> list[str]:
    """Check every record of a list with `record_problems` and report names listed twice."""
    problems = []
    seen_names = set()
    for position, record in enumerate(records):
        where = f"{label}: {list_name}[{position}]"
        record_lines = record_problems(record, where)
        problems += record_lines
        if record_lines:
            continue
        if record["name"] in seen_names:
            problems.append(f"{where}: name {record['name']!r} is listed twice")
        seen_names.add(record["name"])
    return problems


def shard_record_problems(record: object, where: str) -> list[str]:
    """Return the problems of one entry of index.json `shards`."""
    if not isinstance(record, dict):
        return [f"{where}: expected a JSON object, found {type(record).__name__}"]
    problems = [
        field_problem(record, "name", is_shard_name, "a shard file name such as 'shard-000000.tar'", where),
        field_problem(record, "samples", is_count, "a non-negative integer", where),
        field_problem(record, "bytes", is_count, "a non-negative integer", where),
        field_problem(record, "sha256", is_sha256, "64 lowercase hex digits", where),
    ]
    return [problem for problem in problems if problem]


def split_record_problems(record: object, where: str) -> list[str]:
    """Return the problems of one entry of splits.json `splits`."""
    if not isinstance(record, dict):
        return [f"{where}: expected a JSON object, found {type(record).__name__}"]
    problem = field_problem(record, "name", is_split_name, "a split name of letters, digits, _ or -", where)
    return [problem] if problem else []


def field_problem(record: dict, key: str, is_valid, expected: str, where: str) -> str | None:
    """Return a problem line when `record[key]` is missing or fails `is_valid`, else None."""
    if key not in record:
        return f"{where}: missing {key!r}"
    if not is_valid(record[key]):
        return f"{where}: {key!r} is {short_repr(record[key])}, expected {expected}"
    return None


def is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def is_positive_int(value: object) -> bool:
    return is_count(value) and value > 0


def is_shard_name(value: object) -> bool:
    return isinstance(value, str) and bool(SHARD_FILE_PATTERN.fullmatch(value))


def is_sha256(value: object) -> bool:
    return isinstance(value, str) and bool(SHA256_PATTERN.fullmatch(value))


def is_split_name(value: object) -> bool:
    return isinstance(value, str) and bool(SPLIT_NAME_PATTERN.fullmatch(value))


def short_repr(value: object) -> str:
    """Return repr(value), cut to MAX_REPR_CHARS so a crafted value cannot flood the output."""
    text = repr(value)
    return text if len(text) <= MAX_REPR_CHARS else text[: MAX_REPR_CHARS - 3] + "..."
