"""Shard builder and verifier on hostile inputs: foreign formats, split stability, zip name
repeats, stale split folders and malformed index files.

Every input is made here from small synthetic pictures, so the tests need no data folder.
"""

import hashlib
import io
import json
import subprocess
import sys
import tarfile
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shards.builder import BuildOptions, Progress, run_build
from shards.plan import parse_splits, split_for_key, split_for_path
from shards.verify import verify_output

REPO_ROOT = Path(__file__).resolve().parents[1]
RESOLUTION = 16
POSTSCRIPT = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n"
              b"newpath 0 0 moveto 10 10 lineto stroke\nshowpage\n")


def picture(seed, size=24):
    """Return a random RGB picture, different for each seed."""
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    return Image.fromarray(pixels, mode="RGB")


def encoded(image, pil_format):
    buffer = io.BytesIO()
    image.save(buffer, format=pil_format)
    return buffer.getvalue()


def build(input_path, output, **options):
    options.setdefault("resolution", RESOLUTION)
    return run_build(BuildOptions(input=Path(input_path), output=Path(output), **options), Progress(io.StringIO()))


def read_index(folder):
    return json.loads((Path(folder) / "index.json").read_text())


def skipped_entries(index, path):
    return [entry for entry in index["skipped"] if entry["path"] == path]


def sample_sources(folder):
    """Return the `source` of every sample in the shards of `folder/index.json`, in shard order."""
    sources = []
    for record in read_index(folder)["shards"]:
        with tarfile.open(Path(folder) / record["name"]) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".json"):
                    sources.append(json.loads(tar.extractfile(member).read())["source"])
    return sources


def run_verify(folder):
    return subprocess.run([sys.executable, str(REPO_ROOT / "shards" / "verify.py"), str(folder)],
                          capture_output=True, text=True)


# ----------------------------------------------------------------------------- decoders


def test_postscript_input_skipped_as_not_image(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    picture(0).save(folder / "good.png")
    (folder / "face.jpg").write_bytes(POSTSCRIPT)
    build(folder, tmp_path / "out")
    index = read_index(tmp_path / "out")
    entries = skipped_entries(index, "face.jpg")
    assert len(entries) == 1, index["skipped"]
    assert entries[0]["kind"] == "not_image"
    assert "supported format (BMP, GIF, JPEG, PNG, TIFF, WEBP)" in entries[0]["reason"]
    assert index["num_samples"] == 1


def test_other_pil_format_not_decoded(tmp_path):
    # PIL reads PPM natively; the builder must still decode only its listed formats.
    folder = tmp_path / "in"
    folder.mkdir()
    picture(0).save(folder / "good.png")
    picture(1).save(folder / "portable.ppm", format="PPM")
    build(folder, tmp_path / "out")
    index = read_index(tmp_path / "out")
    assert [entry["kind"] for entry in skipped_entries(index, "portable.ppm")] == ["not_image"]
    assert sample_sources(tmp_path / "out") == ["good.png"]


def test_verify_rejects_png_in_jpg_member(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    picture(0).save(folder / "good.png")
    output = tmp_path / "out"
    build(folder, output, image_format="jpg")
    shard = output / "shard-000000.tar"
    png_member = encoded(picture(2, size=RESOLUTION), "PNG")
    with tarfile.open(shard) as tar:
        members = [(info, tar.extractfile(info).read()) for info in tar.getmembers()]
    with tarfile.open(shard, "w", format=tarfile.USTAR_FORMAT) as tar:
        for info, data in members:
            data = png_member if info.name.endswith(".jpg") else data
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    problems, _ = verify_output(output)
    assert any(line.startswith("shard-000000.tar: sample good: image does not decode as JPEG") for line in problems), \
        problems


# ----------------------------------------------------------------------------- splits


def split_of_each_source(output, split_names):
    """Return {source path: split name} over the split folders of a build."""
    return {source: name for name in split_names for source in sample_sources(Path(output) / name)}


def test_two_encodings_share_split_whatever_else_exists(tmp_path):
    long_stem = "L" * 200
    alone = tmp_path / "alone"
    alone.mkdir()
    picture(0).save(alone / "a.png")
    picture(1).save(alone / f"{long_stem}.png")
    both = tmp_path / "both"
    both.mkdir()
    picture(0).save(both / "a.png")
    picture(2).save(both / "a.jpg", quality=95)
    picture(1).save(both / f"{long_stem}.png")
    picture(3).save(both / f"{long_stem}.jpg", quality=95)
    splits = parse_splits("train=0.5,val=0.5")
    build(alone, tmp_path / "out_alone", splits=splits)
    build(both, tmp_path / "out_both", splits=splits)

    split_alone = split_of_each_source(tmp_path / "out_alone", ["train", "val"])
    split_both = split_of_each_source(tmp_path / "out_both", ["train", "val"])
    assert len(split_both) == 4
    assert split_both["a.jpg"] == split_both["a.png"]
    assert split_both[f"{long_stem}.jpg"] == split_both[f"{long_stem}.png"]
    assert split_both["a.png"] == split_alone["a.png"]
    assert split_both[f"{long_stem}.png"] == split_alone[f"{long_stem}.png"]


def test_split_ignores_extension_and_collisions():
    splits = parse_splits("a=0.25,b=0.25,c=0.25,d=0.25")
    for relpath in ("x/y.png", "a.png", "L" * 200 + ".png"):
        jpg_path = relpath[: -len(".png")] + ".jpg"
        assert split_for_path(relpath, splits) == split_for_path(jpg_path, splits), relpath
    # Short paths keep the split of their key, so ordinary builds keep their split assignment.
    assert split_for_path("x/y.png", splits) == split_for_key("x-y", splits)


# ----------------------------------------------------------------------------- zip input


def test_zip_repeated_name_first_kept_later_skipped(tmp_path):
    first = encoded(picture(0), "PNG")
    second = encoded(picture(1), "PNG")
    archive = tmp_path / "in.zip"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns when it writes a repeated name
        with zipfile.ZipFile(archive, "w") as zf:
            zf.writestr("deep/one.png", first)
            zf.writestr("other.png", encoded(picture(2), "PNG"))
            zf.writestr("deep/one.png", second)
    build(archive, tmp_path / "out")

    index = read_index(tmp_path / "out")
    entries = skipped_entries(index, "deep/one.png")
    assert len(entries) == 1, index["skipped"]
    assert entries[0]["kind"] == "duplicate_name"
    assert "zip member 3 of 3 has the same name as member 1" in entries[0]["reason"]
    assert sample_sources(tmp_path / "out") == ["deep/one.png", "other.png"]
    with tarfile.open(tmp_path / "out" / "shard-000000.tar") as tar:
        meta = json.loads(tar.extractfile("deep-one.json").read())
    assert meta["sha256"] == hashlib.sha256(first).hexdigest()
