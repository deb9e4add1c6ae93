"""Shared start-up of the entry points: import path, quiet Paddle import, config arguments."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

# Paddle warns at import when ccache is missing; that only matters for building C++ extensions.
warnings.filterwarnings("ignore", message="No ccache found")


def add_config_arguments(parser: argparse.ArgumentParser, config_required: bool = True) -> None:
    parser.add_argument("-c", "--config", required=config_required, help="YAML config file, e.g. configs/tiny.yaml")
    parser.add_argument(
        "-o", "--override", action="append", default=[], metavar="KEY=VALUE",
        help="override one config key; the value is read as YAML (repeatable), e.g. -o train.max_steps=20",
    )


def load_config_or_exit(args):
    """Load the config; on an invalid key or value, print the error and exit with status 2."""
    from pipeline.config import ConfigError, load_config

    try:
        return load_config(args.config, args.override)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def user_error_types() -> tuple:
    """Return the exception types that describe a user's mistake (bad file, option or data)."""
    from pipeline.checkpoint.pretrained import WeightsMismatchError
    from pipeline.checkpoint.torch_format import CheckpointFormatError, UnsafeCheckpointError
    from pipeline.config import ConfigError
    from pipeline.data.stream import ShardIndexError
    from pipeline.data.stream import ShardReadError
    from pipeline.train.checkpoint import CheckpointError
    from pipeline.train.run import OutputDirBusyError

    return (WeightsMismatchError, CheckpointFormatError, UnsafeCheckpointError, ConfigError, ShardIndexError,
            ShardReadError, CheckpointError, OutputDirBusyError, FileNotFoundError)


def exit_on_user_error(main) -> None:
    """Run `main`; print a user error (status 2) or a failed run (status 1) as one `error:` line."""
    from pipeline.train.trainer import TrainingError

    try:
        main()
    except user_error_types() as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except TrainingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
