"""Every kind of bad input file ends up either as a correct sample or in index.json `skipped`.

Each test builds a small folder with one good face and the file under test, both made from the
real faces, and asserts where that file ended up. `assert_all_files_accounted` checks that no
input file was lost.
"""

import io
import json
import os
import shutil
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from webdataset.tariterators import group_by_keys, tar_file_iterator

from shards.builder import BuildOptions, Progress, run_build

REPO_ROOT = Path(__file__).resolve().parents[1]
RESOLUTION = 32


@pytest.fixture
def input_dir(tmp_path, faces_dir):
    """Return a folder holding one good FFHQ face as good.png."""
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(faces_dir / "ffhq" / "00000.png", folder / "good.png")
    return folder


@pytest.fixture
def face(faces_dir):
    return Image.open(faces_dir / "ffhq" / "00001.png").convert("RGB")


@pytest.fixture
def celeba_bytes(faces_dir):
    return (faces_dir / "celeba_hq" / "006930.jpg").read_bytes()


def build(input_path, output, **options):
    options.setdefault("resolution", RESOLUTION)
    options.setdefault("image_format", "png")
    return run_build(BuildOptions(input=Path(input_path), output=Path(output), **options), Progress(io.StringIO()))


def load_output(output):
    """Return (index, {source path: sample}) with each sample's json parsed and image decoded."""
    index = json.loads((Path(output) / "index.json").read_text())
    samples = {}
    for record in index["shards"]:
        with open(Path(output) / record["name"], "rb") as handle:
            members = (dict(m, __url__=record["name"]) for m in tar_file_iterator(handle))
            for sample in group_by_keys(members):
                meta = json.loads(sample["json"])
                image = Image.open(io.BytesIO(sample[index["image_format"]]))
                samples[meta["source"]] = {"key": sample["__key__"], "meta": meta, "pixels": np.asarray(image)}
    return index, samples


def skipped_entry(index, path):
    matches = [entry for entry in index["skipped"] if entry["path"] == path]
    assert len(matches) == 1, f"{path} not in skipped: {index['skipped']}"
    return matches[0]


def input_paths(folder):
    """Return every non-folder entry under `folder` (and symlinks to folders), escaped like the index."""
    paths = []
    for root, dirs, files in os.walk(os.fsencode(folder)):
        rel_root = os.path.relpath(root, os.fsencode(folder))
        for name in files + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            rel = os.path.normpath(os.path.join(rel_root, name))
            paths.append(rel.decode("utf-8", errors="backslashreplace"))
    return sorted(paths)


def assert_all_files_accounted(input_folder, output):
    index, samples = load_output(output)
    skipped = [entry["path"] for entry in index["skipped"]]
    assert sorted(list(samples) + skipped) == input_paths(input_folder)


def build_and_locate(input_folder, output, **options):
    build(input_folder, output, **options)
    assert_all_files_accounted(input_folder, output)
    index, samples = load_output(output)
    assert "good.png" in samples
    return index, samples


def resized(image, size=RESOLUTION):
    return np.asarray(image.convert("RGB").resize((size, size), Image.BILINEAR))


def png_chunk(tag, data):
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def png_bytes(width, height, bit_depth, color_type, raw_rows):
    """Return a PNG file built by hand (PIL cannot write 16-bit RGB)."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(raw_rows))
            + png_chunk(b"IEND", b""))


def test_truncated_jpeg_skipped(input_dir, tmp_path, celeba_bytes):
    (input_dir / "cut.jpg").write_bytes(celeba_bytes[: len(celeba_bytes) // 2])
    index, samples = build_and_locate(input_dir, tmp_path / "out")
    assert skipped_entry(index, "cut.jpg")["kind"] == "truncated"
    assert "cut.jpg" not in samples


def test_truncated_png_skipped(input_dir, tmp_path, faces_dir):
    data = (faces_dir / "ffhq" / "00002.png").read_bytes()
    (input_dir / "cut.png").write_bytes(data[: len(data) // 2])
    index, _ = build_and_locate(input_dir, tmp_path / "out")
    entry = skipped_entry(index, "cut.png")
    assert entry["kind"] == "truncated"
    assert entry["reason"].startswith("truncated image")


def test_zero_byte_file_skipped(input_dir, tmp_path):
    (input_dir / "empty.jpg").write_bytes(b"")
    index, _ = build_and_locate(input_dir, tmp_path / "out")
    assert skipped_entry(index, "empty.jpg") == {"path": "empty.jpg", "kind": "empty_file",
                                                 "reason": "empty file (0 bytes)"}


def test_text_with_image_extension_skipped(input_dir, tmp_path):
    (input_dir / "notes.png").write_text("this is not a picture\n")
    index, _ = build_and_locate(input_dir, tmp_path / "out")
    assert skipped_entry(index, "notes.png")["kind"] == "not_image"


def test_png_named_jpg_kept(input_dir, tmp_path, face):
    face.save(input_dir / "really_png.jpg", format="PNG")
    _, samples = build_and_locate(input_dir, tmp_path / "out")
    sample = samples["really_png.jpg"]
    assert sample["meta"]["format"] == "PNG"
    assert sample["key"] == "really_png"
    np.testing.assert_array_equal(sample["pixels"], resized(face))


def test_cmyk_jpeg_converted(input_dir, tmp_path, face):
    face.convert("CMYK").save(input_dir / "cmyk.jpg", quality=95)
    _, samples = build_and_locate(input_dir, tmp_path / "out")
    sample = samples["cmyk.jpg"]
    assert sample["meta"]["mode"] == "CMYK"
    assert np.abs(sample["pixels"].astype(int) - resized(face)).mean() < 4


def test_grayscale_jpeg_converted(input_dir, tmp_path, face):
    face.convert("L").save(input_dir / "grey.jpg", quality=95)
    _, samples = build_and_locate(input_dir, tmp_path / "out")
    pixels = samples["grey.jpg"]["pixels"]
    assert pixels.shape == (RESOLUTION, RESOLUTION, 3)
    np.testing.assert_array_equal(pixels[..., 0], pixels[..., 1])
    np.testing.assert_array_equal(pixels[..., 0], pixels[..., 2])
    assert np.abs(pixels[..., 0].astype(int) - resized(face.convert("L"))[..., 0]).mean() < 3


def test_rgba_png_alpha_dropped(input_dir, tmp_path, face):
    rgba = face.copy()
    rgba.putalpha(Image.linear_gradient("L").resize(face.size))
    rgba.save(input_dir / "rgba.png")
    _, samples = build_and_locate(input_dir, tmp_path / "out")
    assert samples["rgba.png"]["meta"]["mode"] == "RGBA"
    np.testing.assert_array_equal(samples["rgba.png"]["pixels"], resized(face))


def test_la_png_converted(input_dir, tmp_path, face):
    grey_alpha = face.convert("LA")
    grey_alpha.save(input_dir / "la.png")
    _, samples = build_and_locate(input_dir, tmp_path / "out")
    assert samples["la.png"]["meta"]["mode"] == "LA"
    np.testing.assert_array_equal(samples["la.png"]["pixels"], resized(face.convert("L")))


def test_palette_png_converted(input_dir, tmp_path, face):
    palette = face.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    palette.info["transparency"] = 0
    palette.save(input_dir / "palette.png", transparency=0)
    _, samples = build_and_locate(input_dir, tmp_path / "out")
    assert samples["palette.png"]["meta"]["mode"] == "P"
    np.testing.assert_array_equal(samples["palette.png"]["pixels"], resized(palette.convert("RGB")))


def test_16bit_grey_png_scaled_not_clipped(input_dir, tmp_path, face):
    grey_8bit = np.asarray(face.convert("L"))
    Image.fromarray(grey_8bit.astype(np.uint16) * 257).save(input_dir / "grey16.png")
    _, samples = build_and_locate(input_dir, tmp_path / "out")
    sample = samples["grey16.png"]
    assert sample["meta"]["mode"].startswith("I")
    expected = resized(Image.fromarray(grey_8bit))
    np.testing.assert_array_equal(sample["pixels"], expected)
    assert sample["pixels"].mean() < 250  # clipping would turn nearly every pixel white


def test_16bit_rgb_png_scaled(input_dir, tmp_path, face):
    rgb_16bit = np.asarray(face).astype(np.uint16) * 257  # [H, W, 3]
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in rgb_16bit)
    (input_dir / "rgb16.png").write_bytes(png_bytes(face.width, face.height, 16, 2, rows))
    _, samples = build_and_locate(input_dir, tmp_path / "out")
    np.testing.assert_array_equal(samples["rgb16.png"]["pixels"], resized(face))


def test_exif_rotated_jpeg_made_upright(input_dir, tmp_path, face):
    exif = Image.Exif()
    exif[0x0112] = 6  # the viewer rotates the stored pixels 90 degrees clockwise
    face.transpose(Image.Transpose.ROTATE_90).save(input_dir / "rotated.jpg", quality=95, exif=exif)
    _, samples = build_and_locate(input_dir, tmp_path / "out")
    sample = samples["rotated.jpg"]
    assert sample["meta"]["exif_orientation"] == 6
    upright_error = np.abs(sample["pixels"].astype(int) - resized(face)).mean()
    sideways_error = np.abs(sample["pixels"].astype(int) - resized(face.transpose(Image.Transpose.ROTATE_90))).mean()
    assert upright_error < 4
    assert sideways_error > 20


def test_small_image_upsampled_and_recorded(input_dir, tmp_path, face):
    face.resize((20, 20), Image.BILINEAR).save(input_dir / "tiny.png")
    report = build(input_dir, tmp_path / "out")
    index, samples = load_output(tmp_path / "out")
    assert samples["tiny.png"]["meta"]["upsampled"] is True
    assert samples["tiny.png"]["meta"]["original_size"] == [20, 20]
    assert samples["good.png"]["meta"]["upsampled"] is False
    assert samples["tiny.png"]["pixels"].shape == (RESOLUTION, RESOLUTION, 3)
    assert index["num_upsampled"] == 1
    assert report.num_upsampled == 1


def test_non_square_center_cropped(input_dir, tmp_path, face):
    wide = Image.new("RGB", (face.width + 100, face.height), (255, 0, 0))
    wide.paste(face, (50, 0))
    wide.save(input_dir / "wide.png")
    _, samples = build_and_locate(input_dir, tmp_path / "out")
    sample = samples["wide.png"]
    assert sample["meta"]["crop_box"] == [50, 0, 50 + face.width, face.height]
    np.testing.assert_array_equal(sample["pixels"], resized(face))


def test_non_square_rejected_with_crop_reject(input_dir, tmp_path, face):
    face.crop((0, 0, 200, 256)).save(input_dir / "tall.png")
    index, _ = build_and_locate(input_dir, tmp_path / "out", crop="reject")
    entry = skipped_entry(index, "tall.png")
    assert entry["kind"] == "not_square"
    assert "200x256" in entry["reason"]


def test_pixel_bomb_rejected_before_decoding(input_dir, tmp_path):
    # 60000 x 60000 grey pixels declared in the header, only one row of data present.
    (input_dir / "bomb.png").write_bytes(png_bytes(60000, 60000, 8, 0, b"\x00" * 60001))
    index, _ = build_and_locate(input_dir, tmp_path / "out")
    entry = skipped_entry(index, "bomb.png")
    assert entry["kind"] == "too_many_pixels"
    assert "60000x60000" in entry["reason"]
    assert "--max-pixels" in entry["reason"]


def test_duplicate_content_reported(input_dir, tmp_path):
    shutil.copy(input_dir / "good.png", input_dir / "zz_copy.png")
    shutil.copy(input_dir / "good.png", input_dir / "good_copy.jpg")
    index, samples = build_and_locate(input_dir, tmp_path / "out")
    # good.png sorts first, so it is kept and both copies point to it.
    assert "good.png" in samples
    for path in ("good_copy.jpg", "zz_copy.png"):
        assert skipped_entry(index, path) == {"path": path, "kind": "duplicate",
                                              "reason": "duplicate of good.png (same file content)"}


def test_unreadable_file_skipped(input_dir, tmp_path, celeba_bytes):
    locked = input_dir / "locked.jpg"
    if os.geteuid() == 0:
        # Root reads files regardless of their mode; reading this process's memory at
        # offset 0 fails with EIO instead.
        if not os.path.exists("/proc/self/mem"):
            pytest.skip("running as root without /proc/self/mem: no way to make a file unreadable")
        os.symlink("/proc/self/mem", locked)
    else:
        locked.write_bytes(celeba_bytes)
        locked.chmod(0)
    index, _ = build_and_locate(input_dir, tmp_path / "out")
    entry = skipped_entry(index, "locked.jpg")
    assert entry["kind"] == "unreadable"
    assert entry["reason"].startswith("unreadable: ")


def test_fifo_skipped_without_blocking(input_dir, tmp_path):
    os.mkfifo(input_dir / "pipe.jpg")
    index, _ = build_and_locate(input_dir, tmp_path / "out")
    assert skipped_entry(index, "pipe.jpg") == {"path": "pipe.jpg", "kind": "not_regular_file",
                                                "reason": "not a regular file (FIFO)"}


def test_symlink_loops_skipped(input_dir, tmp_path):
    os.symlink("b.jpg", input_dir / "a.jpg")
    os.symlink("a.jpg", input_dir / "b.jpg")
    (input_dir / "sub").mkdir()
    os.symlink("..", input_dir / "sub" / "up")
    os.symlink("../good.png", input_dir / "sub" / "link_to_good.png")
    index, samples = build_and_locate(input_dir, tmp_path / "out")
    assert skipped_entry(index, "a.jpg")["kind"] == "symlink_loop"
    assert skipped_entry(index, "b.jpg")["kind"] == "symlink_loop"
    assert skipped_entry(index, "sub/up")["kind"] == "symlink_loop"
    # A symlink to a good image is read through; its content duplicates good.png.
    assert skipped_entry(index, "sub/link_to_good.png")["reason"] == "duplicate of good.png (same file content)"


def test_non_utf8_names_escaped(input_dir, tmp_path, face):
    folder_bytes = os.fsencode(input_dir)
    buffer = io.BytesIO()
    face.save(buffer, format="PNG")
    with open(folder_bytes + b"/caf\xe9.png", "wb") as handle:
        handle.write(buffer.getvalue())
    with open(folder_bytes + b"/\xff\xfe.jpg", "wb") as handle:
        handle.write(b"not an image")
    index, samples = build_and_locate(input_dir, tmp_path / "out")
    assert samples["caf\\xe9.png"]["key"] == "caf_"
    np.testing.assert_array_equal(samples["caf\\xe9.png"]["pixels"], resized(face))
    assert skipped_entry(index, "\\xff\\xfe.jpg")["kind"] == "not_image"
    (tmp_path / "out" / "index.json").read_bytes().decode("ascii")


def test_file_over_size_limit_skipped(input_dir, tmp_path):
    (input_dir / "huge.png").write_bytes(b"\x89PNG" + bytes(2 * 1024 * 1024))
    index, _ = build_and_locate(input_dir, tmp_path / "out", max_file_mb=1)
    entry = skipped_entry(index, "huge.png")
    assert entry["kind"] == "file_too_large"
    assert "--max-file-mb" in entry["reason"]


def test_zip_with_bad_members(tmp_path, faces_dir, celeba_bytes):
    archive = tmp_path / "in.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(faces_dir / "ffhq" / "00000.png", "good.png")
        zf.writestr("sub/", b"")
        zf.writestr("sub/cut.jpg", celeba_bytes[:5000])
        zf.writestr("sub/empty.jpg", b"")
        zf.writestr("sub/crc.png", (faces_dir / "ffhq" / "00003.png").read_bytes(), compress_type=zipfile.ZIP_STORED)
    with zipfile.ZipFile(archive) as zf:
        info = zf.getinfo("sub/crc.png")
    data = bytearray(archive.read_bytes())
    name_length, extra_length = struct.unpack("<HH", data[info.header_offset + 26: info.header_offset + 30])
    data[info.header_offset + 30 + name_length + extra_length + 1000] ^= 0xFF
    archive.write_bytes(bytes(data))

    build(archive, tmp_path / "out")
    index, samples = load_output(tmp_path / "out")
    assert list(samples) == ["good.png"]
    assert skipped_entry(index, "sub/cut.jpg")["kind"] == "truncated"
    assert skipped_entry(index, "sub/empty.jpg")["kind"] == "empty_file"
    crc_entry = skipped_entry(index, "sub/crc.png")
    assert crc_entry["kind"] == "unreadable"
    assert "CRC" in crc_entry["reason"]
    assert len(index["skipped"]) == 3


def run_cli(*args):
    return subprocess.run([sys.executable, str(REPO_ROOT / "shards" / "build.py"), *map(str, args)],
                          capture_output=True, text=True)


def test_strict_fails_after_writing_report(input_dir, tmp_path):
    (input_dir / "empty.jpg").write_bytes(b"")
    result = run_cli("--input", input_dir, "--output", tmp_path / "out", "--resolution", RESOLUTION, "--strict")
    assert result.returncode == 1
    assert "--strict and 1 input files were skipped" in result.stderr
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    assert index["num_samples"] == 1
    assert skipped_entry(index, "empty.jpg")["kind"] == "empty_file"


def test_strict_passes_clean_input(input_dir, tmp_path):
    result = run_cli("--input", input_dir, "--output", tmp_path / "out", "--resolution", RESOLUTION, "--strict")
    assert result.returncode == 0, result.stderr


def test_all_bad_kinds_together_keep_every_good_face(tmp_path, faces_dir, celeba_bytes, face):
    folder = tmp_path / "in"
    shutil.copytree(faces_dir, folder)
    (folder / "zz_bad").mkdir()
    (folder / "zz_bad" / "cut.jpg").write_bytes(celeba_bytes[:20000])
    (folder / "zz_bad" / "empty.png").write_bytes(b"")
    (folder / "zz_bad" / "bomb.png").write_bytes(png_bytes(60000, 60000, 8, 0, b"\x00" * 60001))
    os.mkfifo(folder / "zz_bad" / "pipe.png")
    os.symlink("loop.png", folder / "zz_bad" / "loop.png")
    shutil.copy(faces_dir / "ffhq" / "00004.png", folder / "zz_bad" / "same_as_ffhq4.png")
    face.convert("CMYK").save(folder / "zz_bad" / "cmyk.jpg")

    report = build(folder, tmp_path / "out", workers=2, samples_per_shard=7)
    assert_all_files_accounted(folder, tmp_path / "out")
    index, samples = load_output(tmp_path / "out")
    good_faces = [f"{sub}/{p.name}" for sub in ("ffhq", "celeba_hq") for p in (faces_dir / sub).iterdir()]
    assert set(good_faces) <= set(samples)
    assert "zz_bad/cmyk.jpg" in samples
    assert report.num_written == 53
    assert dict(report.skipped_by_kind) == {"not_image": 1, "truncated": 1, "empty_file": 1, "too_many_pixels": 1,
                                            "not_regular_file": 1, "symlink_loop": 1, "duplicate": 1}
