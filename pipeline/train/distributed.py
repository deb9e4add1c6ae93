"""Fleet collective data parallelism: set-up, wrapping and the few collectives the trainer needs."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import paddle
import paddle.distributed as dist
from paddle.distributed import fleet


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed() -> DistInfo:
    """Start fleet in collective mode; a plain `python launch/train.py` runs as one rank."""
    fleet.init(is_collective=True)
    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size())


def wrap_model(layer: paddle.nn.Layer, info: DistInfo) -> paddle.nn.Layer:
    """Return the data-parallel wrapper of `layer`; with one rank, the layer itself.

    fleet.distributed_model asserts on a plain layer when the world size is 1.
    """
    if info.world_size == 1:
        return layer
    return fleet.distributed_model(layer)


def wrap_optimizer(optimizer, info: DistInfo):
    if info.world_size == 1:
        return optimizer
    return fleet.distributed_optimizer(optimizer)


def unwrap_optimizer(optimizer):
    """Return the optimizer inside fleet's wrapper, whose state_dict and lr the trainer reads."""
    return getattr(optimizer, "_inner_opt", optimizer)


def grad_sync(wrapped: paddle.nn.Layer, sync: bool):
    """Return a context that skips the gradient all-reduce unless `sync` (the last backward of a step)."""
    if sync or not hasattr(wrapped, "no_sync"):
        return contextlib.nullcontext()
    return wrapped.no_sync()


def all_reduce_sum(values: list[float], info: DistInfo) -> list[float]:
    """Sum floats over ranks. Host sync: the result is copied to the CPU."""
    if info.world_size == 1:
        return list(values)
    tensor = paddle.to_tensor(values, dtype="float64")
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.numpy().tolist()


def any_rank_failed(failed: bool, info: DistInfo) -> bool:
    """Return True on every rank if any rank passes failed=True, so all stop together."""
    return all_reduce_sum([1.0 if failed else 0.0], info)[0] > 0


def barrier(info: DistInfo) -> None:
    if info.world_size > 1:
        dist.barrier()
