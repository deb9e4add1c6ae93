"""Train a few tiny steps on every rank, then write each rank's age-encoder weights to <output_dir>/rank<r>.npz.

Used by tests/test_grad_sync.py under paddle.distributed.launch; arguments are config overrides.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402

from pipeline.config import load_config  # noqa: E402
from pipeline.train.distributed import init_distributed  # noqa: E402
from pipeline.train.run_log import setup_console_logging  # noqa: E402
from pipeline.train.trainer import Trainer  # noqa: E402


def main() -> None:
    cfg = load_config(str(Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml"), sys.argv[1:])
    info = init_distributed()
    setup_console_logging(info.rank)
    trainer = Trainer(cfg, info, resume="none")
    initial = {k: v.numpy().copy() for k, v in trainer.sam.encoder.state_dict().items()}
    trainer.run()
    final = {k: v.numpy() for k, v in trainer.sam.encoder.state_dict().items()}
    np.savez(Path(cfg.output_dir) / f"rank{info.rank}.npz", **final)
    np.savez(Path(cfg.output_dir) / f"initial{info.rank}.npz", **initial)


if __name__ == "__main__":
    main()
