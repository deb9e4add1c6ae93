"""The training stream: rank and worker split, exact resume, flips and corrupt shards."""

import json
import shutil

import numpy as np
import paddle
import pytest

from pipeline.data.stream import (ShardIndexError, ShardReadError, ShardStream, first_images, read_shard_index,
                                  sample_keys)
from tests.helpers import build_shards

RESOLUTION = 256


@pytest.fixture(scope="module")
def ffhq_shards(faces_dir, tmp_path_factory):
    """Ten real FFHQ faces in four shards of 3, 3, 3 and 1 samples."""
    return build_shards(faces_dir / "ffhq", tmp_path_factory.mktemp("shards") / "ffhq", samples_per_shard=3)


def all_keys(shard_dir):
    index = json.loads((shard_dir / "index.json").read_text())
    return index["num_samples"]


def make_stream(shard_dir, rank=0, world_size=1, **kwargs):
    args = dict(resolution=RESOLUTION, rank=rank, world_size=world_size, seed=0, batch_size=2, shuffle_buffer=4)
    args.update(kwargs)
    return ShardStream(shard_dir, **args)


@pytest.mark.parametrize("epoch", [0, 1, 2])
def test_two_ranks_see_disjoint_samples(ffhq_shards, epoch):
    rank0 = sample_keys(ffhq_shards, rank=0, world_size=2, seed=0, epoch=epoch)
    rank1 = sample_keys(ffhq_shards, rank=1, world_size=2, seed=0, epoch=epoch)
    assert len(rank0) == len(rank1) == 5
    assert set(rank0).isdisjoint(rank1)
    assert len(set(rank0)) == len(rank0)


@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_ranks_get_equal_counts_with_uneven_shards(ffhq_shards, world_size):
    counts = [len(sample_keys(ffhq_shards, rank=r, world_size=world_size, seed=0, epoch=0)) for r in range(world_size)]
    assert counts == [10 // world_size] * world_size
    keys = [k for r in range(world_size) for k in sample_keys(ffhq_shards, rank=r, world_size=world_size, seed=0, epoch=0)]
    assert len(set(keys)) == len(keys)


def test_workers_split_a_rank_disjointly(ffhq_shards):
    per_worker = [sample_keys(ffhq_shards, rank=0, world_size=1, seed=0, epoch=0, num_workers=1)]
    both = sample_keys(ffhq_shards, rank=0, world_size=1, seed=0, epoch=0, num_workers=2)
    assert len(both) == 10
    assert len(set(both)) == 10
    assert set(both) == set(per_worker[0])


def test_epochs_change_the_order(ffhq_shards):
    first = sample_keys(ffhq_shards, rank=0, world_size=2, seed=0, epoch=0)
    second = sample_keys(ffhq_shards, rank=0, world_size=2, seed=0, epoch=1)
    third = sample_keys(ffhq_shards, rank=0, world_size=2, seed=0, epoch=2)
    assert not (first == second == third)


def take(iterable, count):
    return [item for _, item in zip(range(count), iterable)]


def test_stream_is_infinite_and_normalised(ffhq_shards):
    images = [img for img, _ in take(iter(make_stream(ffhq_shards, rank=1, world_size=2)), 12)]
    assert len(images) == 12  # more than the rank's 5 samples per epoch
    assert images[0].shape == (3, RESOLUTION, RESOLUTION)
    assert images[0].dtype == np.float32
    assert -1.0 <= min(img.min() for img in images) and max(img.max() for img in images) <= 1.0


def test_flip_prob_one_mirrors_every_image(ffhq_shards):
    plain = first_images(ffhq_shards, 10, RESOLUTION)
    flipped = [img for img, _ in take(iter(make_stream(ffhq_shards, flip_prob=1.0)), 10)]
    plain_set = {img.tobytes() for img in plain}
    assert all(img[:, :, ::-1].tobytes() in plain_set for img in flipped)
    assert all(img.tobytes() not in plain_set for img in flipped)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_skips_exactly_the_consumed_batches(ffhq_shards, num_workers):
    def batches(skip):
        stream = make_stream(ffhq_shards, rank=0, world_size=2, skip_batches=skip)
        loader = paddle.io.DataLoader(stream, batch_size=2, num_workers=num_workers, drop_last=True)
        return [img.numpy() for img, _ in take(iter(loader), 9 - skip)]

    fresh = batches(0)
    for skip in (3, 4):  # 3 is not a multiple of the worker count
        resumed = batches(skip)
        assert len(resumed) == 9 - skip
        for expected, got in zip(fresh[skip:], resumed):
            np.testing.assert_array_equal(got, expected)


def test_missing_index_names_the_build_command(tmp_path):
    with pytest.raises(ShardIndexError, match="shards/build.py"):
        read_shard_index(tmp_path)


def test_resolution_mismatch_rejected(ffhq_shards):
    with pytest.raises(ShardIndexError, match="data.resolution"):
        read_shard_index(ffhq_shards, resolution=128)


def truncated_copy(shard_dir, tmp_path):
    copy = tmp_path / "truncated"
    shutil.copytree(shard_dir, copy)
    victim = copy / "shard-000001.tar"
    victim.write_bytes(victim.read_bytes()[: 7000])
    return copy


def test_corrupt_shard_raises_with_its_name(ffhq_shards, tmp_path):
    shards = truncated_copy(ffhq_shards, tmp_path)
    with pytest.raises(ShardReadError, match="shard-000001.tar"):
        take(iter(make_stream(shards, on_error="raise")), 30)


def test_corrupt_shard_skipped_and_counted(ffhq_shards, tmp_path):
    shards = truncated_copy(ffhq_shards, tmp_path)
    items = take(iter(make_stream(shards, on_error="skip")), 30)
    assert len(items) == 30
    assert int(items[-1][1]) >= 1


def test_postscript_sample_is_not_decoded(ffhq_shards, tmp_path):
    """A sample whose bytes are PostScript is rejected instead of being handed to Ghostscript."""
    from pipeline.data.stream import decode_image

    sample = {"__key__": "evil", "__url__": "shard-x.tar", "jpg": b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 1 1\n"}
    with pytest.raises(ShardReadError, match="not a JPEG or PNG"):
        decode_image(sample, RESOLUTION, flip=False)
