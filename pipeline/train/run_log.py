"""Rank-0 run logging: one fixed-format status line, stats.jsonl and VisualDL scalars and images."""

from __future__ import annotations

import json
import logging
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

log = logging.getLogger("sam")


def setup_console_logging(rank: int) -> None:
    """Send INFO logs of rank 0 (and warnings of every rank) to stdout with a rank prefix."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter(f"%(asctime)s [rank {rank}] %(levelname)s %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO if rank == 0 else logging.WARNING)


def peak_memory_gib() -> float:
    """Return this process's peak memory in GiB: device memory on a GPU, resident memory on a CPU."""
    import paddle

    if paddle.device.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0:
        # NOTE: only reachable on a CUDA machine; CI runs the CPU branch.
        return paddle.device.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is in KiB on Linux


def format_eta(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def to_uint8_image(img: np.ndarray) -> np.ndarray:
    """Turn a CHW image in [-1, 1] into HWC uint8 the way SAM saves outputs (clip, scale, truncate)."""
    hwc = np.clip((img.transpose(1, 2, 0) + 1.0) / 2.0, 0.0, 1.0)
    return (hwc * 255.0).astype(np.uint8)


def image_grid(rows: list[list[np.ndarray]]) -> np.ndarray:
    """Tile rows of CHW [-1, 1] images into one HWC uint8 image."""
    return np.concatenate([np.concatenate([to_uint8_image(img) for img in row], axis=1) for row in rows], axis=0)


# Real-pass terms shown in the status line; stats.jsonl and VisualDL hold every term of both passes.
STATUS_TERMS = ("l2", "lpips", "id", "aging", "w_norm")


def _parse_record(line: str) -> dict | None:
    """Return a stats.jsonl record, or None for a damaged line (cut short by a crash, or edited)."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    if not isinstance(record, dict):
        return None
    step = record.get("step")
    return record if isinstance(step, int) and not isinstance(step, bool) else None


def drop_records_after(stats_path: Path, step: int, lineage: str | None = None) -> None:
    """Move records past `step`, records of another lineage and damaged lines to stats.superseded.jsonl.

    Steps redone after a resume are then logged once, and nothing an earlier run logged is lost.
    """
    if not stats_path.is_file():
        return
    lines = [line if line.endswith("\n") else line + "\n" for line in stats_path.read_text().splitlines(keepends=True)
             if line.strip()]
    kept, moved = [], []
    for line in lines:
        record = _parse_record(line)
        same_line = record is not None and record.get("lineage") in (None, lineage)
        (kept if same_line and record["step"] <= step else moved).append(line)
    if not moved:
        return
    log.info("moving %d stats.jsonl record(s) past step %d, the step this run starts from, to "
             "stats.superseded.jsonl", len(moved), step)
    with open(stats_path.with_name("stats.superseded.jsonl"), "a") as f:
        f.writelines(moved)
    staging = stats_path.with_suffix(".jsonl.tmp")
    staging.write_text("".join(kept))
    os.replace(staging, stats_path)


class RunLogger:
    """Writes the status line, stats.jsonl and VisualDL records; every method is a no-op off rank 0."""

    def __init__(self, output_dir: str | Path, rank: int, max_steps: int, start_step: int = 0,
                 lineage: str | None = None):
        self.enabled = rank == 0
        self.lineage = lineage
        self.max_steps = max_steps
        self.writer = None
        if not self.enabled:
            return
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.stats_path = out / "stats.jsonl"
        drop_records_after(self.stats_path, start_step, lineage)
        self.vdl_dir = out / "vdl"

    def _vdl(self):
        """Return the VisualDL writer, created at the first record so that a run with nothing to do leaves no file."""
        if self.writer is None:
            from visualdl import LogWriter

            # VisualDL names its file by the second it was created, so two writers created in the same
            # second would share it. The name carries the process id too.
            # NOTE: VisualDL cannot drop records, so steps redone after a resume appear twice there;
            # stats.jsonl contains each step once.
            file_name = f"vdlrecords.{int(time.time())}.{os.getpid()}.log"
            self.writer = LogWriter(logdir=str(self.vdl_dir), file_name=file_name)
        return self.writer

    def status(self, step: int, record: dict) -> None:
        """Print the status line and append the record to stats.jsonl and VisualDL."""
        if not self.enabled:
            return
        terms = " ".join(f"{name} {record[f'loss_{name}_real']:.4f}" for name in STATUS_TERMS
                         if f"loss_{name}_real" in record)
        cycle = record.get("loss_total_cycle", float("nan"))
        line = (
            f"step {step:>7d}/{self.max_steps} | loss {record['loss']:.4f} | real: {terms} | cycle {cycle:.4f} | "
            f"lr {record['lr']:.2e} | {record['images_per_sec']:.2f} img/s | "
            f"data wait {100 * record['data_wait_share']:.0f}% | eta {format_eta(record['eta_sec'])} | "
            f"mem {record['peak_mem_gib']:.2f} GiB"
        )
        log.info(line)
        with open(self.stats_path, "a") as f:
            f.write(json.dumps({"step": step, **record, "lineage": self.lineage}) + "\n")
        for key, value in record.items():
            if isinstance(value, (int, float)):
                self._vdl().add_scalar(f"train/{key}", float(value), step)

    def scalars(self, step: int, prefix: str, values: dict) -> None:
        """Record extra scalars (validation metrics) in stats.jsonl and VisualDL."""
        if not self.enabled:
            return
        with open(self.stats_path, "a") as f:
            f.write(json.dumps({"step": step, prefix: values, "lineage": self.lineage}) + "\n")
        for key, value in values.items():
            self._vdl().add_scalar(f"{prefix}/{key}", float(value), step)

    def image(self, step: int, tag: str, grid_uint8: np.ndarray) -> None:
        if self.enabled:
            self._vdl().add_image(tag, grid_uint8, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
