"""Start a training run: distributed set-up, logging, the trainer, and a clean stop on errors."""

from __future__ import annotations

import logging

from pipeline.config import Config
from pipeline.data.stream import read_shard_index
from pipeline.train.distributed import init_distributed
from pipeline.train.run_log import setup_console_logging

log = logging.getLogger("sam")


def check_inputs(cfg: Config) -> None:
    """Fail before any network is built when the data cannot be read."""
    if not cfg.data.train_shards:
        raise SystemExit("error: data.train_shards is not set; point it at a folder built by shards/build.py")
    read_shard_index(cfg.data.train_shards, cfg.data.resolution)


def train(cfg: Config, resume: str = "auto") -> None:
    check_inputs(cfg)
    info = init_distributed()
    setup_console_logging(info.rank)

    from pipeline.train.trainer import Trainer

    trainer = Trainer(cfg, info, resume=resume)
    trainer.run()
