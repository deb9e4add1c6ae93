"""Time shard builds over the same images with 1 and 2 worker processes.

The images are the bundled-data faces perturbed as in bench_shard_memory.py (a mix of 256 px PNG
and 1024 px JPEG, so decoding and resizing dominate). Each build starts from an empty output folder.

Usage:
    python bench/bench_shard_workers.py [--images 400] [--workers 1,2] [--samples-per-shard 50]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_shard_memory import DEFAULT_FACES, REPO_ROOT, load_faces, write_dataset  # noqa: E402


def time_build(input_dir: Path, output_dir: Path, workers: int, samples_per_shard: int) -> float:
    command = [sys.executable, str(REPO_ROOT / "shards" / "build.py"), "--input", str(input_dir), "--output",
               str(output_dir), "--workers", str(workers), "--samples-per-shard", str(samples_per_shard)]
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--faces", type=Path, default=DEFAULT_FACES)
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--samples-per-shard", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_dataset(tmp / "images", args.images, load_faces(args.faces))
        print("| workers | time (s) | images/s |\n|---|---|---|")
        for run, workers in enumerate(map(int, args.workers.split(","))):
            seconds = time_build(tmp / "images", tmp / f"out{run}", workers, args.samples_per_shard)
            print(f"| {workers} | {seconds:.1f} | {args.images / seconds:.0f} |")


if __name__ == "__main__":
    main()
