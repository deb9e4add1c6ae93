"""Read the test set from its shards and split it across ranks by position, losing no sample.

The training stream drops the remainder that does not divide by the number of ranks; evaluation
must not. Position i of the test set (index.json order, then each shard's own order) goes to rank
i % world_size, so ranks differ by at most one image and every image is scored exactly once.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from pipeline.data.stream import IMAGE_FORMATS, IMAGE_SUFFIXES, SampleRange, ShardReadError, read_range, read_shard_index


@dataclass(frozen=True)
class EvalImage:
    """One evaluation image: its position in the test set, its sample key and its RGB pixels."""

    index: int
    key: str
    pixels: np.ndarray  # [H, W, 3] uint8


def count_test_images(shard_dir: str | Path, resolution: int) -> int:
    """Return the number of samples index.json lists for the test shards."""
    return sum(shard.num_samples for shard in read_shard_index(shard_dir, resolution, option="data.test_shards"))


def rank_indices(total: int, rank: int, world_size: int) -> list[int]:
    """Return the test-set positions rank `rank` scores: rank, rank + world_size, ..."""
    return list(range(rank, total, world_size))


def decode_pixels(sample: dict, resolution: int) -> np.ndarray:
    """Decode a shard sample's image to [resolution, resolution, 3] uint8 RGB."""
    suffix = next(s for s in IMAGE_SUFFIXES if s in sample)
    try:
        img = Image.open(io.BytesIO(sample[suffix]), formats=IMAGE_FORMATS)
    except (OSError, SyntaxError) as exc:  # PIL raises these for undecodable data
        raise ShardReadError(f"sample {sample['__key__']!r} in {sample.get('__url__')} is not a JPEG or PNG image "
                             f"({exc}); run `python shards/verify.py` on the shard folder") from exc
    with img:
        pixels = np.asarray(img.convert("RGB"), dtype=np.uint8)
    if pixels.shape[:2] != (resolution, resolution):
        raise ShardReadError(
            f"sample {sample['__key__']!r} in {sample.get('__url__')} is {pixels.shape[1]}x{pixels.shape[0]}, "
            f"expected {resolution}x{resolution}; rebuild the shards with --resolution {resolution}"
        )
    return pixels


def read_test_images(shard_dir: str | Path, resolution: int, indices: list[int]) -> Iterator[EvalImage]:
    """Yield the test images at the given positions, in increasing position order.

    Shards that contain none of the positions are not opened. The others are read from the first
    requested sample to the last one, and only the requested samples are decoded.
    """
    requested = sorted(set(indices))
    shards = read_shard_index(shard_dir, resolution, option="data.test_shards")
    offset = 0
    cursor = 0
    for shard in shards:
        end = offset + shard.num_samples
        in_shard = []
        while cursor < len(requested) and requested[cursor] < end:
            in_shard.append(requested[cursor])
            cursor += 1
        if in_shard:
            local_range = SampleRange(shard, in_shard[0] - offset, in_shard[-1] - offset + 1)
            chosen = set(in_shard)
            for position, sample in enumerate(read_range(local_range), start=in_shard[0]):
                if position in chosen:
                    yield EvalImage(position, sample["__key__"], decode_pixels(sample, resolution))
        offset = end
    if cursor < len(requested):
        raise IndexError(
            f"test positions {requested[cursor:][:5]} lie beyond the {offset} samples of {shard_dir}; "
            "the index.json and the requested subset disagree"
        )


def to_signed_chw(pixels_u8: np.ndarray) -> np.ndarray:
    """Convert [H, W, 3] uint8 to float32 [3, H, W] in [-1, 1], exactly as the training stream does."""
    return np.ascontiguousarray(pixels_u8.astype(np.float32).transpose(2, 0, 1)) / 127.5 - 1.0
