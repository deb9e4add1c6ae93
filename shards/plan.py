"""Plan a shard build: which input files become samples, under which keys, in which shard.

The plan is fixed before any image is decoded, so every shard can be built on its own (in any
worker, in any order, or again after an interruption) and still come out byte-identical:
1. list the input files in sorted order and give each a unique key (`shards.keys`);
2. hash every readable file; a file whose bytes equal an earlier file's is a duplicate;
3. send each file to a split by a hash of its path without the extension (`split_for_path`);
4. cut each split's remaining files, in order, into shards of `samples_per_shard` files.
A file that fails to decode later is skipped inside its shard, so a shard may hold fewer samples.

Only byte-identical files count as duplicates. Telling the same picture in two encodings (a.jpg
and a.png) from two different pictures would need both decoded, so both become samples. They
always share a split, because the split hash ignores the extension and the collision suffix of the
key. So a file's split does not depend on which other files exist. Paths that differ only in characters
the key replaces (such as "a b.jpg" and "a_b.jpg") also share a split.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

from shards.errors import SkippedInput
from shards.keys import stem_key
from shards.sources import escape_path

SHARD_NAME_FORMAT = "shard-{:06d}.tar"
SPLIT_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_-]+$")
SPLIT_FRACTION_TOLERANCE = 1e-6


@dataclass(frozen=True)
class Member:
    """One input file planned into a shard."""

    relpath: str
    key: str
    sha256: str


@dataclass(frozen=True)
class Split:
    """A named part of the output with the fraction of keys it receives."""

    name: str
    fraction: float


@dataclass(frozen=True)
class ShardPlan:
    """The files of one shard and where it is written."""

    folder: Path
    index: int
    members: tuple[Member, ...]

    @property
    def name(self) -> str:
        return SHARD_NAME_FORMAT.format(self.index)


@dataclass
class SplitPlan:
    """Everything planned for one output folder: its shards and the files skipped so far."""

    name: str | None
    folder: Path
    fraction: float = 1.0
    shards: list[ShardPlan] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)


def parse_splits(spec: str | None) -> tuple[Split, ...]:
    """Parse a split spec such as "train=0.9,val=0.1" whose positive fractions sum to 1."""
    if not spec:
        return ()
    splits = []
    for item in spec.split(","):
        name, sep, fraction_text = item.strip().partition("=")
        if not sep or not SPLIT_NAME_PATTERN.match(name):
            raise ValueError(f"invalid --split item {item!r}; use NAME=FRACTION with NAME of letters, digits, _ or -")
        try:
            fraction = float(fraction_text)
        except ValueError:
            raise ValueError(f"invalid fraction {fraction_text!r} in --split item {item!r}; use a number like 0.1")
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"--split fraction for {name!r} is {fraction}; use a value in (0, 1]")
        splits.append(Split(name, fraction))
    names = [split.name for split in splits]
    if len(set(names)) != len(names):
        raise ValueError(f"--split names repeat in {spec!r}; give each split once")
    total = sum(split.fraction for split in splits)
    if abs(total - 1.0) > SPLIT_FRACTION_TOLERANCE:
        raise ValueError(f"--split fractions sum to {total}, not 1; adjust {spec!r}")
    return tuple(splits)


def split_for_path(relpath: str, splits: tuple[Split, ...]) -> Split:
    """Return the split of an input file, drawn from its path without the extension."""
    # For paths whose key needs no collision suffix and no cut, this equals split_for_key(key).
    return split_for_key(stem_key(relpath), splits)


def split_for_key(key: str, splits: tuple[Split, ...]) -> Split:
    """Return the split of a key: its sha256 read as a number in [0, 1) picks a split by fraction."""
    position = int(hashlib.sha256(key.encode("ascii")).hexdigest()[:16], 16) / 2.0**64
    upper = 0.0
    for split in splits:
        upper += split.fraction
        if position < upper:
            return split
    return splits[-1]


class Planner:
    """Collect scan results in input order and cut them into split and shard plans."""

    def __init__(self, output: Path, splits: tuple[Split, ...], samples_per_shard: int):
        self.splits = splits
        self.samples_per_shard = samples_per_shard
        if splits:
            self.split_plans = {s.name: SplitPlan(s.name, output / s.name, s.fraction) for s in splits}
        else:
            self.split_plans = {None: SplitPlan(None, output)}
        self._pending: dict[str | None, list[Member]] = {name: [] for name in self.split_plans}
        self._first_path_by_sha256: dict[str, str] = {}
        self.num_duplicates = 0

    def add(self, relpath: str, key: str, sha256: str | None, problem: SkippedInput | None) -> None:
        """Record one scanned file, in sorted input order."""
        split_plan = self._split_plan(relpath)
        if problem is None and sha256 in self._first_path_by_sha256:
            original = escape_path(self._first_path_by_sha256[sha256])
            problem = SkippedInput("duplicate", f"duplicate of {original} (same file content)")
            self.num_duplicates += 1
        if problem is not None:
            split_plan.skipped.append({"path": escape_path(relpath), "kind": problem.kind, "reason": problem.reason})
            return
        self._first_path_by_sha256[sha256] = relpath
        pending = self._pending[split_plan.name]
        pending.append(Member(relpath, key, sha256))
        if len(pending) == self.samples_per_shard:
            self._close_shard(split_plan)

    def finish(self) -> list[SplitPlan]:
        """Close the last, partly filled shard of each split and return the plans."""
        for split_plan in self.split_plans.values():
            if self._pending[split_plan.name]:
                self._close_shard(split_plan)
        return list(self.split_plans.values())

    def _split_plan(self, relpath: str) -> SplitPlan:
        if not self.splits:
            return self.split_plans[None]
        return self.split_plans[split_for_path(relpath, self.splits).name]

    def _close_shard(self, split_plan: SplitPlan) -> None:
        members = tuple(self._pending[split_plan.name])
        split_plan.shards.append(ShardPlan(split_plan.folder, len(split_plan.shards), members))
        self._pending[split_plan.name] = []
