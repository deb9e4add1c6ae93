"""Start a training run: distributed set-up, logging, the trainer, and a clean stop on errors."""

from __future__ import annotations

import fcntl
import logging
import os
import socket
from pathlib import Path

from pipeline.config import Config
from pipeline.data.stream import read_shard_index
from pipeline.train.distributed import any_rank_failed, init_distributed
from pipeline.train.run_log import setup_console_logging

log = logging.getLogger("sam")


def check_inputs(cfg: Config) -> None:
    """Fail before any network is built when the data cannot be read."""
    if not cfg.data.train_shards:
        raise SystemExit("error: data.train_shards is not set; point it at a folder built by shards/build.py")
    read_shard_index(cfg.data.train_shards, cfg.data.resolution)


class OutputDirBusyError(RuntimeError):
    """Another training process holds the lock of the output folder."""


def lock_output_dir(output_dir: Path):
    """Take an exclusive lock on `<output_dir>/train.lock`, held until the process exits.

    It is a POSIX record lock (lockf): the kernel releases it when this process dies, and forked
    DataLoader workers do not inherit it, so a crashed run leaves no stale lock behind.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    lock_path = output_dir / "train.lock"
    try:
        handle = open(lock_path, "a+")
    except OSError as exc:
        raise OutputDirBusyError(f"cannot open {lock_path}: {exc}; choose an output_dir you can write to") from exc
    try:
        fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # EACCES or EAGAIN: another process has the lock
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise OutputDirBusyError(
            f"output_dir {output_dir} is in use by a running training ({holder}); wait for it to finish or "
            "choose another output_dir"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    handle.flush()
    return handle


def train(cfg: Config, resume: str = "auto") -> None:
    check_inputs(cfg)
    info = init_distributed()
    setup_console_logging(info.rank)

    # Rank 0 locks the output folder; every rank stops if it could not, before any work.
    lock, busy = None, None
    if info.is_main:
        try:
            lock = lock_output_dir(Path(cfg.output_dir))
        except OSError as exc:  # e.g. output_dir is a file or cannot be created
            busy = OutputDirBusyError(f"cannot use output_dir {cfg.output_dir}: {exc}")
        except OutputDirBusyError as exc:
            busy = exc
    if any_rank_failed(busy is not None, info):
        raise busy or OutputDirBusyError(f"output_dir {cfg.output_dir} is in use by another training run")

    from pipeline.train.trainer import Trainer

    trainer = Trainer(cfg, info, resume=resume)
    trainer.run()
    if lock is not None:
        lock.close()
