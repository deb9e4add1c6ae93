"""Measure the training stream's throughput (decoded 256 px images per second) per loader worker count.

Usage: python bench/bench_stream.py [--images 400] [--workers 0,1,2]
Builds JPEG shards from the bundled faces (copied with small perturbations) into a temp folder.
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import paddle  # noqa: E402

from pipeline.data.stream import ShardStream  # noqa: E402
from tests.helpers import build_shards  # noqa: E402

FACES = Path(__file__).resolve().parents[1] / "demo" / "faces" / "ffhq"


def make_images(folder: Path, count: int) -> None:
    folder.mkdir(parents=True)
    sources = sorted(FACES.glob("*.png"))
    rng = np.random.default_rng(0)
    for i in range(count):
        pixels = np.asarray(Image.open(sources[i % len(sources)]).convert("RGB"), dtype=np.int16)
        pixels = np.clip(pixels + rng.integers(-3, 4, size=pixels.shape), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:05d}.png")


def measure(shards: Path, workers: int, batches: int, batch_size: int) -> float:
    stream = ShardStream(shards, resolution=256, rank=0, world_size=1, seed=0, batch_size=batch_size,
                         shuffle_buffer=100)
    loader = paddle.io.DataLoader(stream, batch_size=batch_size, num_workers=workers, drop_last=True)
    it = iter(loader)
    next(it)  # start-up (worker spawn, first shard) is not counted
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--workers", default="0,1,2")
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_images(tmp / "images", args.images)
        shards = build_shards(tmp / "images", tmp / "shards", samples_per_shard=100)
        print("| loader workers | images/s |\n|---|---|")
        for workers in map(int, args.workers.split(",")):
            print(f"| {workers} | {measure(shards, workers, args.batches, args.batch_size):.0f} |")


if __name__ == "__main__":
    main()
