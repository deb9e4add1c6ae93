"""Shard builder and verifier on hostile inputs: foreign formats, split stability, zip name
repeats, stale split folders and malformed index files.

Every input is made here from small synthetic pictures, so the tests need no data folder.
"""

import hashlib
import io
import json
import shutil
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


# ----------------------------------------------------------------------------- stale split folders


@pytest.fixture
def small_input(tmp_path):
    """Return a folder of eight small pictures, enough to fill two splits."""
    folder = tmp_path / "in"
    folder.mkdir()
    for seed in range(8):
        picture(seed).save(folder / f"{seed:02d}.png")
    return folder


def test_build_without_split_removes_split_sets(small_input, tmp_path):
    output = tmp_path / "out"
    build(small_input, output, splits=parse_splits("train=0.5,val=0.5"))
    assert (output / "val" / "index.json").is_file()
    report = build(small_input, output)

    assert report.removed_splits == ["train", "val"]
    assert "removed the shard sets of earlier splits train, val" in report.summary_line(0.0)
    assert not (output / "train").exists()
    assert not (output / "val").exists()
    assert not (output / "splits.json").exists()
    assert verify_output(output) == ([], 8)


def test_renamed_splits_remove_old_split_set(small_input, tmp_path):
    output = tmp_path / "out"
    build(small_input, output, splits=parse_splits("train=0.5,val=0.5"))
    report = build(small_input, output, splits=parse_splits("train=0.5,test=0.5"))

    assert report.removed_splits == ["val"]
    assert not (output / "val").exists()
    assert sorted(path.name for path in output.iterdir()) == ["splits.json", "test", "train"]
    assert verify_output(output) == ([], 8)


def test_stale_split_folder_keeps_foreign_files(small_input, tmp_path):
    output = tmp_path / "out"
    build(small_input, output, splits=parse_splits("train=0.5,val=0.5"))
    (output / "val" / "notes.txt").write_text("keep me")
    build(small_input, output)
    assert sorted(path.name for path in (output / "val").iterdir()) == ["notes.txt"]
    assert verify_output(output) == ([], 8)


def test_interrupted_split_build_then_plain_build(small_input, tmp_path):
    # A split build stopped before splits.json leaves only split folders with checkpoints.
    output = tmp_path / "out"
    build(small_input, output, splits=parse_splits("train=0.5,val=0.5"))
    (output / "splits.json").unlink()
    for name in ("train", "val"):
        (output / name / "index.json").unlink()
    report = build(small_input, output)
    assert report.removed_splits == ["train", "val"]
    assert verify_output(output) == ([], 8)


def test_verify_rejects_split_folder_beside_index(small_input, tmp_path):
    build(small_input, tmp_path / "split", splits=parse_splits("train=0.5,val=0.5"))
    build(small_input, tmp_path / "plain")
    shutil.copytree(tmp_path / "split" / "val", tmp_path / "plain" / "val")
    result = run_verify(tmp_path / "plain")
    assert result.returncode == 1
    assert "val/: split folder next to the top-level index.json" in result.stdout

    shutil.copy(tmp_path / "split" / "splits.json", tmp_path / "plain" / "splits.json")
    problems, _ = verify_output(tmp_path / "plain")
    assert any(line.startswith("splits.json: present next to the top-level index.json") for line in problems)


def test_verify_rejects_unlisted_split_and_shard(small_input, tmp_path):
    output = tmp_path / "out"
    build(small_input, output, splits=parse_splits("train=0.5,val=0.5"))
    shutil.copytree(output / "val", output / "old")
    shutil.copy(output / "val" / "shard-000000.tar", output / "shard-000000.tar")
    problems, _ = verify_output(output)
    assert any(line.startswith("old/: split folder not listed in splits.json") for line in problems), problems
    assert any(line.startswith("shard-000000.tar: shard file outside the split folders") for line in problems), \
        problems


# ----------------------------------------------------------------------------- malformed index files


@pytest.fixture
def clean_output(small_input, tmp_path):
    """Return a finished build of the small pictures in two shards, and a copy of it beside it."""
    output = tmp_path / "out"
    build(small_input, output, samples_per_shard=4)
    shutil.copytree(output, tmp_path / "sibling")
    return output


def rewrite_json(path, change):
    value = json.loads(path.read_text())
    path.write_text(json.dumps(change(value)))


def set_in_first_shard(key, value):
    def change(index):
        index["shards"][0][key] = value
        return index
    return change


def drop_key(key):
    def change(index):
        del index[key]
        return index
    return change


MALFORMED_INDEXES = {
    "list": (lambda index: [index], "index.json: expected a JSON object, found list"),
    "no_shards": (drop_key("shards"), "index.json: missing 'shards'"),
    "shards_not_list": (lambda index: dict(index, shards={"name": "x"}), "index.json: 'shards' is {'name': 'x'}"),
    "record_not_object": (lambda index: dict(index, shards=[5]), "index.json: shards[0]: expected a JSON object"),
    "record_no_name": (lambda index: dict(index, shards=[{k: v for k, v in index["shards"][0].items() if k != "name"}]),
                       "index.json: shards[0]: missing 'name'"),
    "name_traversal": (set_in_first_shard("name", "../sibling/shard-000000.tar"),
                       "index.json: shards[0]: 'name' is '../sibling/shard-000000.tar'"),
    "name_absolute": (set_in_first_shard("name", "/etc/passwd"), "index.json: shards[0]: 'name' is '/etc/passwd'"),
    "samples_string": (set_in_first_shard("samples", "4"), "index.json: shards[0]: 'samples' is '4'"),
    "bytes_bool": (set_in_first_shard("bytes", True), "index.json: shards[0]: 'bytes' is True"),
    "sha256_short": (set_in_first_shard("sha256", "abc"), "index.json: shards[0]: 'sha256' is 'abc'"),
    "name_twice": (lambda index: dict(index, shards=[index["shards"][0], index["shards"][0]]),
                   "index.json: shards[1]: name 'shard-000000.tar' is listed twice"),
    "resolution_string": (lambda index: dict(index, resolution="16"), "index.json: 'resolution' is '16'"),
    "image_format_gif": (lambda index: dict(index, image_format="gif"), "index.json: 'image_format' is 'gif'"),
    "format_missing": (drop_key("format"), "index.json: format is None"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED_INDEXES))
def test_verify_reports_malformed_index(clean_output, case):
    change, expected_start = MALFORMED_INDEXES[case]
    rewrite_json(clean_output / "index.json", change)
    result = run_verify(clean_output)
    assert result.returncode == 1, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    assert any(line.startswith(expected_start) for line in result.stdout.splitlines()), result.stdout


def test_verify_reports_deeply_nested_index(clean_output):
    (clean_output / "index.json").write_text("[" * 100_000 + "]" * 100_000)
    result = run_verify(clean_output)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stdout.startswith("index.json: unreadable JSON")


def test_verify_follows_no_symlink_out_of_folder(clean_output, tmp_path):
    shard = clean_output / "shard-000000.tar"
    shard.unlink()
    shard.symlink_to(tmp_path / "sibling" / "shard-000000.tar")
    problems, _ = verify_output(clean_output)
    assert problems == ["shard-000000.tar: is a symbolic link; verify.py reads only files inside the folder, "
                        "so replace it with the file"]


def test_verify_reports_malformed_splits_json(small_input, tmp_path):
    output = tmp_path / "out"
    build(small_input, output, splits=parse_splits("train=0.5,val=0.5"))
    cases = {
        "not_object": ("[]", "splits.json: expected a JSON object, found list"),
        "no_splits": ('{"format": "sam-shards/1"}', "splits.json: missing 'splits'"),
        "entry_no_name": ('{"splits": [{}]}', "splits.json: splits[0]: missing 'name'"),
        "name_traversal": ('{"splits": [{"name": "../out"}]}', "splits.json: splits[0]: 'name' is '../out'"),
        "name_dot": ('{"splits": [{"name": "."}]}', "splits.json: splits[0]: 'name' is '.'"),
    }
    for case, (text, expected_start) in cases.items():
        (output / "splits.json").write_text(text)
        result = run_verify(output)
        assert result.returncode == 1, case
        assert "Traceback" not in result.stderr, case
        assert result.stdout.startswith(expected_start), (case, result.stdout)
