"""Collect per-rank evaluation results on every rank with one collective, failing together.

Ranks score different numbers of images, so nothing is exchanged per batch: each rank scores its
share, then a single all_gather_object moves the variable-length result lists. A rank that fails
sends its error instead of results, so every rank raises together and none waits forever.
"""

from __future__ import annotations

from typing import Any, Callable

import paddle.distributed as dist

from pipeline.train.distributed import DistInfo


class EvaluationError(RuntimeError):
    """A failure on one or more ranks during evaluation, raised on every rank."""


def all_gather_objects(local: Any, info: DistInfo) -> list[Any]:
    """Return every rank's `local` object, in rank order (pickled through the collective)."""
    if info.world_size == 1:
        return [local]
    gathered: list[Any] = []
    dist.all_gather_object(gathered, local)
    return gathered


def run_on_every_rank(compute: Callable[[], Any], info: DistInfo) -> list[Any]:
    """Run `compute` on this rank and return every rank's result; raise on all ranks if any failed."""
    try:
        local = ("ok", compute())
    except Exception as exc:  # sent to the other ranks, then raised again below
        local = ("error", f"rank {info.rank}: {type(exc).__name__}: {exc}")
        failure = exc
    else:
        failure = None
    gathered = all_gather_objects(local, info)
    errors = [payload for status, payload in gathered if status == "error"]
    if failure is not None:
        raise EvaluationError(errors[0] if info.world_size == 1 else "; ".join(errors)) from failure
    if errors:
        raise EvaluationError("evaluation failed on another rank: " + "; ".join(errors))
    return [payload for _, payload in gathered]
