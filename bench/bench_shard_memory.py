"""Measure the peak memory of shard builds over 200 and 2,000 images.

The images are made from the real faces (FFHQ 256 PNG, CelebA-HQ 1024 JPEG) with small random
perturbations (shift, brightness, mirror) and laid out like FFHQ, 1,000 per subfolder. Each build
runs `shards/build.py` as a subprocess. The resident set size (RSS) of the build process and its
workers is sampled from /proc every 10 ms and summed, and the maximum sum is the peak. The script prints both peaks and
whether the 2,000-image peak is within 10% of the 200-image peak. Linux only (reads /proc).

Usage:
    python bench/bench_shard_memory.py [--faces DIR] [--workers 2] [--samples-per-shard 100]
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageEnhance

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_FACES = REPO_ROOT.parent / "shared" / "data" / "faces"
SIZES = (200, 2000)
POLL_INTERVAL_SEC = 0.01
TOLERANCE = 0.10


def load_faces(faces_dir: Path) -> list[tuple[Image.Image, str]]:
    """Return every face image with the format to save its copies in."""
    faces = [(Image.open(p).convert("RGB"), "PNG") for p in sorted((faces_dir / "ffhq").glob("*.png"))]
    faces += [(Image.open(p).convert("RGB"), "JPEG") for p in sorted((faces_dir / "celeba_hq").glob("*.jpg"))]
    if not faces:
        raise SystemExit(f"no faces found under {faces_dir}; pass --faces with the ffhq/ and celeba_hq/ folders")
    return faces


def perturb(image: Image.Image, rng: random.Random) -> Image.Image:
    """Return a slightly shifted, brightened or darkened, maybe mirrored copy of the same size."""
    width, height = image.size
    shift = max(width // 64, 1)
    dx, dy = rng.randint(0, shift), rng.randint(0, shift)
    moved = image.crop((dx, dy, width - shift + dx, height - shift + dy)).resize((width, height), Image.BILINEAR)
    moved = ImageEnhance.Brightness(moved).enhance(rng.uniform(0.95, 1.05))
    return moved.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else moved


def write_dataset(folder: Path, num_images: int, faces: list[tuple[Image.Image, str]], seed: int = 0) -> None:
    """Write `num_images` perturbed faces into 1,000-image subfolders."""
    rng = random.Random(seed)
    for i in range(num_images):
        image, image_format = faces[i % len(faces)]
        subfolder = folder / f"{i // 1000 * 1000:05d}"
        subfolder.mkdir(parents=True, exist_ok=True)
        suffix = "png" if image_format == "PNG" else "jpg"
        perturb(image, rng).save(subfolder / f"{i:05d}.{suffix}", format=image_format, quality=95)


def process_tree(root_pid: int) -> list[int]:
    """Return the pid and all descendant pids of a process (via /proc/<pid>/task/*/children)."""
    pids, queue = [], [root_pid]
    while queue:
        pid = queue.pop()
        pids.append(pid)
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                queue += [int(child) for child in (task / "children").read_text().split()]
            except OSError:
                continue
    return pids


def memory_kib(pid: int) -> tuple[int, int]:
    """Return (current RSS, peak RSS so far) of a process in KiB, or zeros when it has exited."""
    values = {"VmRSS:": 0, "VmHWM:": 0}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            field = line.split(maxsplit=1)[0] if line else ""
            if field in values:
                values[field] = int(line.split()[1])
    except OSError:
        pass
    return values["VmRSS:"], values["VmHWM:"]


def measure_build(input_dir: Path, output_dir: Path, workers: int, samples_per_shard: int) -> dict:
    """Run one build and return its peak tree RSS, wall time and exit status."""
    command = [sys.executable, str(REPO_ROOT / "shards" / "build.py"), "--input", str(input_dir),
               "--output", str(output_dir), "--workers", str(workers), "--samples-per-shard", str(samples_per_shard)]
    start_sec = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak_tree_kib = 0
    peak_by_pid_kib: dict[int, int] = {}
    while process.poll() is None:
        readings = {pid: memory_kib(pid) for pid in process_tree(process.pid)}
        peak_tree_kib = max(peak_tree_kib, sum(rss for rss, _ in readings.values()))
        for pid, (_, peak) in readings.items():
            peak_by_pid_kib[pid] = max(peak_by_pid_kib.get(pid, 0), peak)
        time.sleep(POLL_INTERVAL_SEC)
    stderr = process.stderr.read()
    if process.returncode != 0:
        raise SystemExit(f"build failed with status {process.returncode}:\n{stderr}")
    summary = [line for line in stderr.splitlines() if line.startswith("summary:")]
    return {"peak_tree_mib": peak_tree_kib / 1024, "sum_process_peaks_mib": sum(peak_by_pid_kib.values()) / 1024,
            "process_peaks_mib": sorted(round(v / 1024, 1) for v in peak_by_pid_kib.values()),
            "wall_sec": time.monotonic() - start_sec,
            "summary": summary[-1] if summary else ""}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--faces", type=Path, default=DEFAULT_FACES, help="folder with ffhq/ and celeba_hq/")
    parser.add_argument("--workers", type=int, default=2, help="build worker processes")
    parser.add_argument("--samples-per-shard", type=int, default=100, help="input files per shard")
    args = parser.parse_args()

    faces = load_faces(args.faces)
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench_shard_memory_") as temp:
        for num_images in SIZES:
            input_dir = Path(temp) / f"in_{num_images}"
            write_dataset(input_dir, num_images, faces)
            results[num_images] = measure_build(input_dir, Path(temp) / f"out_{num_images}", args.workers,
                                                args.samples_per_shard)
            result = results[num_images]
            print(f"{num_images:5d} images: peak RSS {result['peak_tree_mib']:.1f} MiB (build process + "
                  f"{args.workers} workers, sampled every {POLL_INTERVAL_SEC * 1000:.0f} ms), "
                  f"{result['wall_sec']:.1f} s, {num_images / result['wall_sec']:.1f} images/s")
            print(f"      per-process peaks (VmHWM) {result['process_peaks_mib']} MiB, "
                  f"sum {result['sum_process_peaks_mib']:.1f} MiB")
            print(f"      {result['summary']}")

    small, large = (results[n]["peak_tree_mib"] for n in SIZES)
    ratio = large / small
    verdict = "within" if ratio <= 1 + TOLERANCE else "NOT within"
    print(f"2000-image peak is {ratio:.3f}x the 200-image peak: {verdict} {TOLERANCE:.0%}")
    return 0 if ratio <= 1 + TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main())
