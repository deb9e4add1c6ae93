"""Stream training images from webdataset tar shards, split across ranks and loader workers.

webdataset's own splitters read torch or the RANK/WORLD_SIZE variables, which Paddle does not set,
so the split here is explicit and exact. For every epoch, all ranks shuffle the shard order with
the same seed and lay the samples end to end. Rank r takes the r-th of `world_size` equal
contiguous ranges, and the last `total % world_size` samples of that epoch's order are left out.
Ranks therefore see disjoint samples and the same sample count. Each rank's range is split the
same way across its DataLoader workers. The stream never ends, because training length is
`train.max_steps`: every rank runs the same number of steps and no collective waits at an epoch end.

Resuming is exact. The order depends only on (seed, epoch, rank, worker) and the flips on (seed,
epoch, key), and a worker skips the samples its rank already consumed before decoding them.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import paddle
from PIL import Image
from webdataset.filters import _shuffle
from webdataset.tariterators import group_by_keys, tar_file_iterator

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = ("jpg", "png")
# Decoders PIL may use for shard images. Naming them keeps PIL from handing other formats, such as
# PostScript, to external programs.
IMAGE_FORMATS = ("JPEG", "PNG")


class ShardIndexError(ValueError):
    """A shard folder without a usable index.json."""


class ShardReadError(RuntimeError):
    """A shard that could not be read to the end, named in the message."""


@dataclass(frozen=True)
class ShardInfo:
    path: Path
    num_samples: int


@dataclass(frozen=True)
class SampleRange:
    """Samples [start, stop) of one shard, in the shard's own order."""

    shard: ShardInfo
    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start


def read_shard_index(folder: str | Path, resolution: int | None = None,
                     option: str = "data.train_shards") -> list[ShardInfo]:
    """Read `<folder>/index.json` and return its shards, checking that each file exists.

    `option` names the config key that set `folder`, for messages.
    """
    folder = Path(folder)
    index_path = folder / "index.json"
    if not index_path.is_file():
        raise ShardIndexError(
            f"no index.json in shard folder {folder}; build shards with "
            f"`python shards/build.py --input IMAGES --output {folder}` or fix {option}"
        )
    try:
        index = json.loads(index_path.read_text())
    except json.JSONDecodeError as exc:
        raise ShardIndexError(f"invalid index.json in {folder}: {exc}; rebuild the shards") from exc
    if resolution is not None and index.get("resolution") not in (None, resolution):
        raise ShardIndexError(
            f"shards in {folder} have resolution {index.get('resolution')} but data.resolution is {resolution}; "
            "rebuild the shards with --resolution or change data.resolution"
        )
    if not isinstance(index, dict) or not isinstance(index.get("shards"), list):
        raise ShardIndexError(f"invalid index.json in {folder}: expected an object with a 'shards' list; rebuild the shards")
    shards = []
    for entry in index["shards"]:
        name, count = (entry.get("name"), entry.get("samples")) if isinstance(entry, dict) else (None, None)
        if (not isinstance(name, str) or Path(name).name != name or name in ("", ".", "..")
                or isinstance(count, bool) or not isinstance(count, int) or count < 0):
            raise ShardIndexError(f"invalid shard entry {entry!r} in {folder}/index.json: expected a file name and a "
                                  "sample count; rebuild the shards")
        path = folder / name
        if not path.is_file():
            raise ShardIndexError(f"shard {path} is listed in index.json but missing; rebuild or restore it")
        shards.append(ShardInfo(path=path, num_samples=count))
    if not shards or sum(s.num_samples for s in shards) == 0:
        raise ShardIndexError(f"shard folder {folder} contains no samples; check the --input of shards/build.py")
    return shards


def _seed_for(*parts: object) -> int:
    """Derive a 64-bit seed from any tuple of values, identical in every process."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little")


def split_range(ranges: list[SampleRange], part: int, num_parts: int) -> list[SampleRange]:
    """Return the `part`-th of `num_parts` equal contiguous pieces of the concatenated ranges.

    Each piece has floor(total / num_parts) samples; the remainder at the end is left out.
    """
    total = sum(len(r) for r in ranges)
    per_part = total // num_parts
    begin, end = part * per_part, (part + 1) * per_part
    pieces, offset = [], 0
    for r in ranges:
        lo, hi = max(begin, offset), min(end, offset + len(r))
        if lo < hi:
            pieces.append(SampleRange(r.shard, r.start + lo - offset, r.start + hi - offset))
        offset += len(r)
    return pieces


def epoch_ranges(shards: list[ShardInfo], seed: int, epoch: int, rank: int, world_size: int,
                 worker_id: int, num_workers: int) -> list[SampleRange]:
    """Return the sample ranges one loader worker of one rank reads in `epoch`."""
    order = list(range(len(shards)))
    random.Random(_seed_for("shard-order", seed, epoch)).shuffle(order)
    whole = [SampleRange(shards[i], 0, shards[i].num_samples) for i in order]
    rank_ranges = split_range(whole, rank, world_size)
    return split_range(rank_ranges, worker_id, num_workers)


def samples_per_worker_epoch(shards: list[ShardInfo], world_size: int, num_workers: int) -> int:
    """Return how many samples each loader worker reads per epoch."""
    total = sum(s.num_samples for s in shards)
    return (total // world_size) // num_workers


def read_range(sample_range: SampleRange) -> Iterator[dict]:
    """Yield the raw samples (bytes per member) of one range, raising ShardReadError on corruption."""
    path = sample_range.shard.path
    index = 0
    try:
        with open(path, "rb") as stream:
            files = ({**f, "__url__": str(path)} for f in tar_file_iterator(stream))
            for sample in group_by_keys(files):
                if index >= sample_range.stop:
                    if sample_range.stop == sample_range.shard.num_samples:
                        raise ShardReadError(
                            f"shard {path} contains more samples than the {sample_range.shard.num_samples} that "
                            "index.json lists; run `python shards/verify.py` on the shard folder"
                        )
                    return
                if index >= sample_range.start:
                    if "json" not in sample or not any(s in sample for s in IMAGE_SUFFIXES):
                        raise ShardReadError(
                            f"sample {sample['__key__']!r} in shard {path} lacks its image or json member"
                        )
                    yield sample
                index += 1
    except ShardReadError:
        raise
    except Exception as exc:  # tarfile.ReadError, OSError, EOFError, ValueError from truncated data
        raise ShardReadError(f"shard {path} is corrupt or truncated near sample {index}: {exc}") from exc
    if index < sample_range.stop:
        raise ShardReadError(
            f"shard {path} ended after {index} samples but index.json lists {sample_range.shard.num_samples}; "
            "run `python shards/verify.py` on the shard folder"
        )


def decode_image(sample: dict, resolution: int, flip: bool) -> np.ndarray:
    """Decode a sample's image to float32 CHW in [-1, 1], flipped horizontally if asked."""
    suffix = next(s for s in IMAGE_SUFFIXES if s in sample)
    try:
        img = Image.open(io.BytesIO(sample[suffix]), formats=IMAGE_FORMATS)
    except (OSError, SyntaxError) as exc:  # PIL raises these for undecodable data
        raise ShardReadError(f"sample {sample['__key__']!r} in {sample.get('__url__')} is not a JPEG or PNG image: {exc}")
    with img:
        img = img.convert("RGB")
        if img.size != (resolution, resolution):
            raise ShardReadError(
                f"sample {sample['__key__']!r} in {sample.get('__url__')} is {img.size[0]}x{img.size[1]}, "
                f"expected {resolution}x{resolution}; rebuild the shards with --resolution {resolution}"
            )
        pixels = np.asarray(img, dtype=np.float32)
    if flip:
        pixels = pixels[:, ::-1, :]
    # HWC uint8 values -> CHW in [-1, 1], as ToTensor + Normalize(0.5, 0.5).
    return np.ascontiguousarray(pixels.transpose(2, 0, 1)) / 127.5 - 1.0


class ShardStream(paddle.io.IterableDataset):
    """Infinite stream of (image, data_error_count) for one rank, in webdataset tar shards.

    A subclass of paddle.io.IterableDataset, because paddle.io.DataLoader treats a bare webdataset
    pipeline as map-style and its reader dies on len().

    Args:
        shard_dir: folder holding index.json and the shards.
        rank, world_size: this process's place in the data-parallel group.
        batch_size: images per batch, used to turn `skip_batches` into samples.
        skip_batches: batches this rank consumed before a resume.
        on_error: "raise" stops at a corrupt shard; "skip" logs it and moves on, counting it.
    """

    def __init__(self, shard_dir: str | Path, *, resolution: int, rank: int, world_size: int, seed: int,
                 batch_size: int, num_workers: int = 0, shuffle_buffer: int = 1000, flip_prob: float = 0.5,
                 first_epoch: int = 0, skip_batches: int = 0, on_error: str = "raise",
                 error_dir: str | Path | None = None):
        super().__init__()
        self.shards = read_shard_index(shard_dir, resolution)
        total = sum(s.num_samples for s in self.shards)
        readers = world_size * max(num_workers, 1)
        if total // readers < 1:
            raise ShardIndexError(
                f"shard folder {shard_dir} contains {total} samples, too few for {world_size} rank(s) x "
                f"{max(num_workers, 1)} loader worker(s); lower data.num_workers or add images"
            )
        self.resolution = resolution
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.batch_size = batch_size
        self.shuffle_buffer = shuffle_buffer
        self.flip_prob = flip_prob
        self.first_epoch = first_epoch
        self.skip_batches = skip_batches
        self.on_error = on_error
        self.error_dir = Path(error_dir) if error_dir is not None else None
        if self.error_dir is not None:
            (self.error_dir / f"rank{rank}.txt").unlink(missing_ok=True)  # left by an earlier run

    def _worker(self) -> tuple[int, int]:
        info = paddle.io.get_worker_info()
        return (0, 1) if info is None else (info.id, info.num_workers)

    def _role(self, worker_id: int, num_workers: int) -> int:
        """Return which worker of the original run this worker continues.

        The DataLoader takes batches from its workers in turn, starting at worker 0, so batch k of
        a run came from worker k % num_workers. After a resume at batch s, the new worker w serves
        batches s + w, s + w + num_workers, ..., which the original worker (s + w) % num_workers served.
        """
        return (worker_id + self.skip_batches) % num_workers

    def _skip_samples(self, role: int, num_workers: int) -> int:
        """Return the samples the original worker `role` had delivered in the first skip_batches batches."""
        own_batches = (self.skip_batches - role + num_workers - 1) // num_workers
        return max(own_batches, 0) * self.batch_size

    def _epoch_samples(self, epoch: int, worker_id: int, num_workers: int, errors: list[int]) -> Iterator[dict]:
        ranges = epoch_ranges(self.shards, self.seed, epoch, self.rank, self.world_size, worker_id, num_workers)
        for sample_range in ranges:
            try:
                yield from read_range(sample_range)
            except ShardReadError as exc:
                if self.on_error == "raise":
                    raise ShardReadError(f"{exc}. Set data.on_error=skip to skip corrupt shards") from exc
                errors[0] += 1
                log.warning("skipping the rest of a corrupt shard (data.on_error=skip): %s", exc)

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        worker_id, num_workers = self._worker()
        role = self._role(worker_id, num_workers)
        per_epoch = samples_per_worker_epoch(self.shards, self.world_size, num_workers)
        if per_epoch == 0:
            raise ShardIndexError(
                f"{sum(s.num_samples for s in self.shards)} samples cannot feed {self.world_size} ranks x "
                f"{num_workers} loader workers; lower data.num_workers or add images"
            )
        skip = self._skip_samples(role, num_workers)
        # Whole epochs are skipped by arithmetic; the rest by reading without decoding.
        epochs_done, skip = divmod(skip, per_epoch)
        errors = [0]
        try:
            yield from self._samples_from(self.first_epoch + epochs_done, skip, role, num_workers, errors)
        except ShardReadError as exc:
            self._record_error(exc)
            raise

    def _record_error(self, exc: Exception) -> None:
        """Write the error where the main process finds it; Paddle's loader passes on only that a worker failed."""
        if self.error_dir is None:
            return
        self.error_dir.mkdir(parents=True, exist_ok=True)
        (self.error_dir / f"rank{self.rank}.txt").write_text(str(exc))

    def _samples_from(self, first_epoch: int, skip: int, worker_id: int, num_workers: int,
                      errors: list[int]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for epoch in itertools.count(first_epoch):
            rng = random.Random(_seed_for("shuffle", self.seed, epoch, self.rank, worker_id))
            raw = self._epoch_samples(epoch, worker_id, num_workers, errors)
            yielded = 0
            for sample in _shuffle(raw, bufsize=self.shuffle_buffer, initial=self.shuffle_buffer, rng=rng):
                yielded += 1
                if skip:
                    skip -= 1
                    continue
                flip = random.Random(_seed_for("flip", self.seed, epoch, sample["__key__"])).random() < self.flip_prob
                try:
                    image = decode_image(sample, self.resolution, flip)
                except ShardReadError as exc:
                    if self.on_error == "raise":
                        raise ShardReadError(f"{exc}. Set data.on_error=skip to skip corrupt samples") from exc
                    errors[0] += 1
                    log.warning("skipping a corrupt sample (data.on_error=skip): %s", exc)
                    continue
                yield image, np.array(errors[0], dtype=np.int64)
            if yielded == 0:
                raise ShardReadError(
                    f"rank {self.rank} worker {worker_id} read no sample in epoch {epoch}: every shard it was given "
                    "is corrupt; run `python shards/verify.py` on the shard folder"
                )


def shard_set_digest(shard_dir: str | Path) -> str:
    """Return a sha256 over the shard names, sample counts and file hashes that index.json lists."""
    index = json.loads((Path(shard_dir) / "index.json").read_text())
    entries = [[s.get("name"), s.get("samples"), s.get("sha256")] for s in index.get("shards", [])]
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()


def read_data_error(error_dir: str | Path, rank: int) -> str | None:
    """Return the data error a loader worker of `rank` recorded, or None."""
    path = Path(error_dir) / f"rank{rank}.txt"
    return path.read_text() if path.is_file() else None


def first_images(shard_dir: str | Path, count: int, resolution: int) -> np.ndarray:
    """Return the first `count` readable images of the shards, unflipped, as [n, 3, H, W] float32.

    Corrupt shards and samples are passed over with a warning, so n may be below `count`, or 0.
    """
    images = []
    for shard in read_shard_index(shard_dir, resolution):
        try:
            for sample in read_range(SampleRange(shard, 0, shard.num_samples)):
                images.append(decode_image(sample, resolution, flip=False))
                if len(images) == count:
                    return np.stack(images)
        except ShardReadError as exc:
            log.warning("the VisualDL image grid passes over a corrupt shard: %s", exc)
    if not images:
        log.warning("no readable image in %s for the VisualDL image grid; the grid is left out", shard_dir)
        return np.zeros([0, 3, resolution, resolution], dtype=np.float32)
    return np.stack(images)


def sample_keys(shard_dir: str | Path, *, rank: int, world_size: int, seed: int, epoch: int,
                num_workers: int = 1) -> list[str]:
    """Return the keys one rank reads in one epoch, across all its workers (for tests and audits)."""
    shards = read_shard_index(shard_dir)
    keys = []
    for worker_id in range(num_workers):
        for sample_range in epoch_ranges(shards, seed, epoch, rank, world_size, worker_id, num_workers):
            keys.extend(s["__key__"] for s in read_range(sample_range))
    return keys
