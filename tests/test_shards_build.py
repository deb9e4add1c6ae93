"""Shard builds on the real faces: index correctness, determinism, splits, zip input, resume."""

import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from webdataset.tariterators import group_by_keys, tar_file_iterator

from shards.builder import BuildOptions, Progress, run_build
from shards.keys import assign_keys, natural_key
from shards.plan import parse_splits, split_for_key

REPO_ROOT = Path(__file__).resolve().parents[1]
BUILD_SCRIPT = REPO_ROOT / "shards" / "build.py"
NUM_FACES = 52  # 10 FFHQ PNG + 42 CelebA-HQ JPEG


def build(input_dir, output_dir, **options):
    """Run a build in this process with progress lines discarded."""
    return run_build(BuildOptions(input=Path(input_dir), output=Path(output_dir), **options), Progress(io.StringIO()))


def run_cli(*args, **kwargs):
    return subprocess.run([sys.executable, str(BUILD_SCRIPT), *map(str, args)], capture_output=True, text=True,
                          **kwargs)


def read_index(folder):
    return json.loads((Path(folder) / "index.json").read_text())


def read_samples(folder):
    """Return {key: {"jpg"|"png": bytes, "json": dict}} over all shards of an index, in order."""
    samples = {}
    for record in read_index(folder)["shards"]:
        with open(Path(folder) / record["name"], "rb") as handle:
            members = (dict(member, __url__=record["name"]) for member in tar_file_iterator(handle))
            for sample in group_by_keys(members):
                sample = {k: v for k, v in sample.items() if not k.startswith("__") or k == "__key__"}
                sample["json"] = json.loads(sample["json"])
                samples[sample.pop("__key__")] = sample
    return samples


def tree_bytes(folder):
    """Return {relative path: bytes} of every file under a folder, hidden files included."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def faces_build(faces_dir, tmp_path_factory):
    output = tmp_path_factory.mktemp("faces_build") / "out"
    report = build(faces_dir, output, resolution=32, samples_per_shard=8)
    return output, report


def test_build_counts_real_faces(faces_build):
    output, report = faces_build
    index = read_index(output)
    assert index["format"] == "sam-shards/1"
    assert index["num_samples"] == NUM_FACES
    assert report.num_written == NUM_FACES
    assert index["resolution"] == 32
    assert index["image_format"] == "jpg"
    assert [s["name"] for s in index["shards"]] == [f"shard-{i:06d}.tar" for i in range(7)]
    assert sum(s["samples"] for s in index["shards"]) == NUM_FACES
    assert index["skipped"] == [{"kind": "not_image", "path": "README.md",
                                 "reason": "not an image in a supported format (BMP, GIF, JPEG, PNG, TIFF, WEBP): "
                                           "no decoder recognises its content"}]


def test_index_sizes_and_hashes_match_files(faces_build):
    output, _ = faces_build
    for record in read_index(output)["shards"]:
        data = (output / record["name"]).read_bytes()
        assert len(data) == record["bytes"], record["name"]
        assert hashlib.sha256(data).hexdigest() == record["sha256"], record["name"]
        with tarfile.open(output / record["name"]) as tar:
            names = tar.getnames()
        assert len(names) == 2 * record["samples"], record["name"]


def test_tar_members_have_fixed_metadata(faces_build):
    output, _ = faces_build
    with tarfile.open(output / "shard-000000.tar") as tar:
        members = tar.getmembers()
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) for m in members} == {(0, 0, 0, "", "", 0o644)}
    names = [m.name for m in members]
    assert names[:4] == ["celeba_hq-006930.jpg", "celeba_hq-006930.json",
                         "celeba_hq-012712.jpg", "celeba_hq-012712.json"]


def test_sample_json_records_source(faces_build, faces_dir):
    output, _ = faces_build
    samples = read_samples(output)
    assert len(samples) == NUM_FACES
    meta = samples["ffhq-00003"]["json"]
    source_bytes = (faces_dir / "ffhq" / "00003.png").read_bytes()
    assert meta["source"] == "ffhq/00003.png"
    assert meta["original_size"] == [256, 256]
    assert meta["sha256"] == hashlib.sha256(source_bytes).hexdigest()
    assert meta["format"] == "PNG"
    assert samples["celeba_hq-006930"]["json"]["original_size"] == [1024, 1024]
    for key, sample in samples.items():
        assert Image.open(io.BytesIO(sample["jpg"])).size == (32, 32), key


def test_sample_pixels_match_pil_bilinear(faces_dir, tmp_path):
    build(faces_dir / "ffhq", tmp_path / "out", resolution=64, image_format="png")
    sample = read_samples(tmp_path / "out")["00005"]
    stored = np.asarray(Image.open(io.BytesIO(sample["png"])))
    expected = np.asarray(Image.open(faces_dir / "ffhq" / "00005.png").convert("RGB").resize((64, 64),
                                                                                             Image.BILINEAR))
    np.testing.assert_array_equal(stored, expected)


def test_two_builds_byte_identical(faces_build, faces_dir, tmp_path):
    first_output, _ = faces_build
    build(faces_dir, tmp_path / "again", resolution=32, samples_per_shard=8)
    assert tree_bytes(tmp_path / "again") == tree_bytes(first_output)


def test_two_workers_match_one_worker(faces_build, faces_dir, tmp_path):
    first_output, _ = faces_build
    build(faces_dir, tmp_path / "parallel", resolution=32, samples_per_shard=8, workers=2)
    assert tree_bytes(tmp_path / "parallel") == tree_bytes(first_output)


def test_zip_input_gives_same_shards(faces_build, faces_dir, tmp_path):
    archive = tmp_path / "faces.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(faces_dir.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(faces_dir).as_posix())
    build(archive, tmp_path / "from_zip", resolution=32, samples_per_shard=8)
    from_zip = read_index(tmp_path / "from_zip")
    from_folder = read_index(faces_build[0])
    assert from_zip["shards"] == from_folder["shards"]
    assert from_zip["skipped"] == from_folder["skipped"]
    assert from_zip["build"]["input"] == "faces.zip"


def test_split_folders_disjoint_and_deterministic(faces_dir, tmp_path):
    options = dict(resolution=16, samples_per_shard=10, splits=parse_splits("train=0.75,val=0.25"))
    build(faces_dir, tmp_path / "a", **options)
    build(faces_dir, tmp_path / "b", workers=2, **options)
    assert tree_bytes(tmp_path / "a") == tree_bytes(tmp_path / "b")

    train = read_samples(tmp_path / "a" / "train")
    val = read_samples(tmp_path / "a" / "val")
    assert set(train).isdisjoint(val)
    assert len(train) + len(val) == NUM_FACES
    assert len(val) > 0
    splits = parse_splits("train=0.75,val=0.25")
    assert all(split_for_key(key, splits).name == "train" for key in train)
    assert all(split_for_key(key, splits).name == "val" for key in val)
    top = json.loads((tmp_path / "a" / "splits.json").read_text())
    assert [(s["name"], s["num_samples"]) for s in top["splits"]] == [("train", len(train)), ("val", len(val))]
    assert not (tmp_path / "a" / "index.json").exists()


def test_split_spec_rejects_bad_sum():
    with pytest.raises(ValueError, match="sum to 0.9"):
        parse_splits("train=0.8,val=0.1")


def test_keys_from_paths_unique_and_readable():
    paths = ["00000/00001.png", "a b/c.d.png", "a_b/c_d.png", "a_b/c_d.jpg", "__meta__.png", "café.jpg"]
    keys = assign_keys(paths)
    assert keys[0] == "00000-00001"
    assert keys[1] == "a_b-c_d"
    assert keys[2].startswith("a_b-c_d-")
    assert len(keys[2]) == len("a_b-c_d-") + 8
    assert keys[3].startswith("a_b-c_d-")
    assert keys[3] != keys[2]
    assert keys[4] == "_meta__"
    assert keys[5] == "cafe"
    assert len(set(keys)) == len(keys)
    assert all("." not in key for key in keys)
    assert len(natural_key("x" * 300 + ".png")) == 90


def test_cli_progress_and_summary(faces_dir, tmp_path):
    result = run_cli("--input", faces_dir / "ffhq", "--output", tmp_path / "out", "--resolution", "16",
                     "--samples-per-shard", "4")
    assert result.returncode == 0, result.stderr
    assert "[build] 3/3 shards done" in result.stderr
    assert "images/s" in result.stderr
    assert "summary: 10 written, 0 skipped, 0 duplicates, 0 upsampled, 3 shards (0 reused)" in result.stderr


def test_cli_rejects_invalid_resolution(faces_dir, tmp_path):
    result = run_cli("--input", faces_dir, "--output", tmp_path / "out", "--resolution", "0")
    assert result.returncode == 2
    assert "--resolution is 0" in result.stderr
    assert not (tmp_path / "out").exists()


def test_cli_rejects_missing_input(tmp_path):
    result = run_cli("--input", tmp_path / "nowhere", "--output", tmp_path / "out")
    assert result.returncode == 2
    assert f"--input {tmp_path / 'nowhere'} does not exist" in result.stderr
    assert not (tmp_path / "out").exists()


def test_output_with_foreign_files_rejected(faces_dir, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="contains no earlier shard build"):
        build(faces_dir / "ffhq", tmp_path / "out")


def test_output_inside_input_rejected(faces_dir, tmp_path):
    shutil.copytree(faces_dir / "ffhq", tmp_path / "in")
    with pytest.raises(ValueError, match="inside --input"):
        build(tmp_path / "in", tmp_path / "in" / "shards")


def test_rerun_reuses_complete_shards(faces_dir, tmp_path):
    build(faces_dir / "ffhq", tmp_path / "out", resolution=16, samples_per_shard=3)
    before = {p.name: p.stat() for p in (tmp_path / "out").glob("shard-*.tar")}
    report = build(faces_dir / "ffhq", tmp_path / "out", resolution=16, samples_per_shard=3)
    assert report.num_shards_reused == 4
    for path in (tmp_path / "out").glob("shard-*.tar"):
        assert (path.stat().st_ino, path.stat().st_mtime_ns) == (before[path.name].st_ino,
                                                                  before[path.name].st_mtime_ns)


def test_corrupt_shard_rebuilt_on_rerun(faces_dir, tmp_path):
    build(faces_dir / "ffhq", tmp_path / "out", resolution=16, samples_per_shard=3)
    expected = tree_bytes(tmp_path / "out")
    shard = tmp_path / "out" / "shard-000001.tar"
    data = bytearray(shard.read_bytes())
    data[700] ^= 0xFF
    shard.write_bytes(bytes(data))
    report = build(faces_dir / "ffhq", tmp_path / "out", resolution=16, samples_per_shard=3)
    assert report.num_shards_reused == 3
    assert tree_bytes(tmp_path / "out") == expected


def test_changed_options_rebuild_and_drop_stale_shards(faces_dir, tmp_path):
    build(faces_dir / "ffhq", tmp_path / "out", resolution=16, samples_per_shard=2)
    report = build(faces_dir / "ffhq", tmp_path / "out", resolution=16, samples_per_shard=5)
    build(faces_dir / "ffhq", tmp_path / "fresh", resolution=16, samples_per_shard=5)
    assert report.num_shards_reused == 0
    assert tree_bytes(tmp_path / "out") == tree_bytes(tmp_path / "fresh")


def shard_state(folder):
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in Path(folder).glob("shard-*.tar")}


def test_killed_build_resumes_byte_identical(faces_dir, tmp_path):
    shutil.copytree(faces_dir / "ffhq", tmp_path / "in" / "ffhq")
    for path in sorted((faces_dir / "celeba_hq").glob("*.jpg"))[:10]:
        shutil.copy(path, tmp_path / "in" / path.name)
    num_inputs = 20
    args = ["--input", tmp_path / "in", "--resolution", "128", "--format", "png", "--samples-per-shard", "1"]
    reference = run_cli(*args, "--output", tmp_path / "reference")
    assert reference.returncode == 0, reference.stderr

    output = tmp_path / "out"
    process = subprocess.Popen([sys.executable, str(BUILD_SCRIPT), *map(str, args), "--output", str(output)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 60
    while len(shard_state(output)) < 5 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (output / "index.json").exists(), "the build finished before it was killed"

    # Every shard under a final name is complete: its checkpoint vouches for its bytes.
    complete = shard_state(output)
    assert 5 <= len(complete) < num_inputs
    for name in complete:
        record = json.loads((output / ".checkpoint" / f"{name}.json").read_text())["result"]["record"]
        assert hashlib.sha256((output / name).read_bytes()).hexdigest() == record["sha256"], name

    resumed = run_cli(*args, "--output", output)
    assert resumed.returncode == 0, resumed.stderr
    assert f"({len(complete)} reused)" in resumed.stderr
    assert tree_bytes(output) == tree_bytes(tmp_path / "reference")
    after = shard_state(output)
    assert {name: after[name] for name in complete} == complete
    assert not list(output.glob(".*partial"))
