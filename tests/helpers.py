"""Helpers for tests that build real shards and launch real training processes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def build_shards(input_dir: Path, output_dir: Path, samples_per_shard: int = 4, extra: tuple = ()) -> Path:
    """Run shards/build.py and return the output folder."""
    cmd = [sys.executable, str(REPO_ROOT / "shards" / "build.py"), "--input", str(input_dir),
           "--output", str(output_dir), "--samples-per-shard", str(samples_per_shard), *extra]
    subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO_ROOT)
    return output_dir


def copy_faces(src: Path, dst: Path, count: int | None = None) -> Path:
    """Copy the first `count` images of a face folder into `dst`."""
    dst.mkdir(parents=True, exist_ok=True)
    for path in sorted(src.iterdir())[:count]:
        shutil.copy(path, dst / path.name)
    return dst


def train_command(nproc: int, log_dir: Path, overrides: list[str], config: str = "configs/tiny.yaml",
                  extra: tuple = ()) -> list[str]:
    """Return the command that trains with `nproc` ranks (plain python for one rank)."""
    script = [str(REPO_ROOT / "launch" / "train.py"), "-c", str(REPO_ROOT / config)]
    for item in overrides:
        script += ["-o", item]
    script += list(extra)
    if nproc == 1:
        return [sys.executable, *script]
    return [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", str(nproc),
            "--log_dir", str(log_dir), *script]


def run_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT)
    return env


def read_worker_logs(log_dir: Path) -> str:
    """Return every rank's log of a paddle.distributed.launch run, for failure messages."""
    parts = []
    for path in sorted(Path(log_dir).glob("workerlog.*")):
        parts.append(f"--- {path.name} ---\n{path.read_text(errors='replace')[-4000:]}")
    return "\n".join(parts)
