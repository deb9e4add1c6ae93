"""shards/verify.py finds damaged shards and names the shard and sample of each problem."""

import io
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from shards.builder import BuildOptions, Progress, run_build
from shards.plan import parse_splits
from shards.verify import verify_output

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def clean_build(faces_dir, tmp_path_factory):
    """Return a finished build of the 10 FFHQ faces: 4 shards of 3, 3, 3 and 1 samples."""
    output = tmp_path_factory.mktemp("verify") / "clean"
    options = BuildOptions(input=faces_dir / "ffhq", output=output, resolution=24, samples_per_shard=3)
    run_build(options, Progress(io.StringIO()))
    return output


@pytest.fixture
def damaged(clean_build, tmp_path):
    """Return a fresh copy of the clean build to damage."""
    return Path(shutil.copytree(clean_build, tmp_path / "damaged"))


def run_verify(folder):
    return subprocess.run([sys.executable, str(REPO_ROOT / "shards" / "verify.py"), str(folder)],
                          capture_output=True, text=True)


def rewrite_tar(path, replace):
    """Rewrite a shard, passing each (TarInfo, bytes) through `replace`, which may return None to drop it."""
    with tarfile.open(path) as tar:
        members = [(info, tar.extractfile(info).read()) for info in tar.getmembers()]
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for info, data in members:
            replaced = replace(info, data)
            if replaced is not None:
                info.size = len(replaced)
                tar.addfile(info, io.BytesIO(replaced))


def test_clean_build_passes(clean_build):
    result = run_verify(clean_build)
    assert result.returncode == 0, result.stdout
    assert result.stdout == ""
    assert "OK: 10 samples" in result.stderr


def test_flipped_byte_reported(damaged):
    shard = damaged / "shard-000001.tar"
    data = bytearray(shard.read_bytes())
    data[2000] ^= 0x01
    shard.write_bytes(bytes(data))
    result = run_verify(damaged)
    assert result.returncode == 1
    assert "shard-000001.tar: sha256 differs from index.json" in result.stdout
    assert "shard-000000.tar" not in result.stdout


def test_missing_json_member_reported(damaged):
    rewrite_tar(damaged / "shard-000001.tar", lambda info, data: None if info.name == "00004.json" else data)
    problems, _ = verify_output(damaged)
    assert "shard-000001.tar: sample 00004: missing json member" in problems
    assert "shard-000001.tar: sha256 differs from index.json (the file is corrupt or was replaced)" in problems
    assert run_verify(damaged).returncode == 1


def test_missing_shard_file_reported(damaged):
    (damaged / "shard-000002.tar").unlink()
    result = run_verify(damaged)
    assert result.returncode == 1
    assert result.stdout.splitlines() == ["shard-000002.tar: missing shard file"]


def test_wrong_resolution_image_reported(damaged):
    small = io.BytesIO()
    Image.new("RGB", (8, 8)).save(small, format="JPEG")
    rewrite_tar(damaged / "shard-000000.tar",
                lambda info, data: small.getvalue() if info.name == "00001.jpg" else data)
    problems, _ = verify_output(damaged)
    assert "shard-000000.tar: sample 00001: image is 8x8, index.json resolution is 24" in problems


def test_undecodable_image_reported(damaged):
    rewrite_tar(damaged / "shard-000003.tar", lambda info, data: b"garbage" if info.name.endswith(".jpg") else data)
    problems, _ = verify_output(damaged)
    assert any(line.startswith("shard-000003.tar: sample 00009: image does not decode") for line in problems)


def test_sample_count_mismatch_reported(damaged):
    rewrite_tar(damaged / "shard-000000.tar", lambda info, data: None if info.name.startswith("00002.") else data)
    problems, _ = verify_output(damaged)
    assert "shard-000000.tar: holds 2 samples, index.json lists 3" in problems


def test_unlisted_shard_reported(damaged):
    shutil.copy(damaged / "shard-000000.tar", damaged / "shard-000009.tar")
    problems, _ = verify_output(damaged)
    assert problems == ["shard-000009.tar: shard file not listed in index.json"]


def test_split_layout_verified(faces_dir, tmp_path):
    options = BuildOptions(input=faces_dir / "ffhq", output=tmp_path / "out", resolution=16,
                           splits=parse_splits("train=0.5,val=0.5"))
    run_build(options, Progress(io.StringIO()))
    assert verify_output(tmp_path / "out") == ([], 10)
    (tmp_path / "out" / "val" / "shard-000000.tar").unlink()
    problems, _ = verify_output(tmp_path / "out")
    assert problems == ["val/shard-000000.tar: missing shard file"]


def test_folder_without_index_reported(tmp_path):
    result = run_verify(tmp_path)
    assert result.returncode == 1
    assert "no index.json or splits.json" in result.stdout
