"""FFHQ-style alignment: quad geometry on synthetic landmarks, the warp, and `build.py --align`.

dlib's 68-point model cannot be downloaded here. The end-to-end build test trains a tiny shape
predictor with dlib itself. It proves detection, the landmark plumbing and the no-face path, but
not landmark quality. A real portrait is aligned only when SAM_DLIB_LANDMARKS names the model.
"""

import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from pipeline.data.face_align import AlignmentQuad, FaceAligner, align_image, quad_from_landmarks
from shards.builder import BuildOptions, Progress, run_build

REPO_ROOT = Path(__file__).resolve().parents[1]

# Landmarks of a frontal face: eye centres (100, 120) and (160, 120), mouth corners (110, 190) and (150, 190).
EYE_LEFT, EYE_RIGHT = np.array([100.0, 120.0]), np.array([160.0, 120.0])
MOUTH_LEFT, MOUTH_RIGHT = np.array([110.0, 190.0]), np.array([150.0, 190.0])


def synthetic_landmarks(eye_left=EYE_LEFT, eye_right=EYE_RIGHT, mouth_left=MOUTH_LEFT, mouth_right=MOUTH_RIGHT):
    """Return [68, 2] landmarks whose eye rings average to the eye centres; other points are filler."""
    landmarks = np.zeros((68, 2))
    ring = np.array([[-6, 0], [-3, -3], [3, -3], [6, 0], [3, 3], [-3, 3]], dtype=float)
    landmarks[36:42] = eye_left + ring
    landmarks[42:48] = eye_right + ring
    landmarks[48] = mouth_left
    landmarks[54] = mouth_right
    return landmarks


def rotate_points(points, degrees, center):
    angle = math.radians(degrees)
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    return (np.asarray(points) - center) @ rotation.T + center


def test_quad_frontal_face_geometry():
    quad = quad_from_landmarks(synthetic_landmarks())
    # half side = max(2 * 60, 1.8 * 70) = 126; centre = eye midpoint + 0.1 * (0, 70) = (130, 127).
    assert quad.side == pytest.approx(252.0)
    expected = [[4, 1], [4, 253], [256, 253], [256, 1]]
    np.testing.assert_allclose(quad.corners, expected, atol=1e-9)


def test_quad_wide_eyes_set_the_size():
    quad = quad_from_landmarks(synthetic_landmarks(eye_left=np.array([60.0, 120.0]),
                                                   eye_right=np.array([200.0, 120.0])))
    assert quad.side == pytest.approx(4 * 140.0)


def test_quad_rotates_with_the_face():
    center = np.array([130.0, 150.0])
    upright = quad_from_landmarks(synthetic_landmarks())
    tilted = quad_from_landmarks(rotate_points(synthetic_landmarks(), 30, center))
    assert tilted.side == pytest.approx(upright.side)
    np.testing.assert_allclose(tilted.corners, rotate_points(upright.corners, 30, center), atol=1e-9)


def test_quad_rejects_wrong_landmark_count():
    with pytest.raises(ValueError, match=r"expected \(68, 2\)"):
        quad_from_landmarks(np.zeros((5, 2)))


def marker_image(size, points, radius=6):
    """Return a grey image with a red, green and blue disc at the three given points."""
    image = Image.new("RGB", size, (128, 128, 128))
    draw = ImageDraw.Draw(image)
    for (x, y), color in zip(points, [(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=color)
    return image


def marker_centroid(pixels, channel):
    others = [c for c in range(3) if c != channel]
    mask = (pixels[..., channel] > 200) & (pixels[..., others[0]] < 60) & (pixels[..., others[1]] < 60)
    ys, xs = np.nonzero(mask)
    assert len(xs) > 0, f"marker of channel {channel} not found"
    return np.array([xs.mean(), ys.mean()])


def expected_output_position(point, quad, output_size):
    """Map a source point into the output square through the quad's axes."""
    top_left, bottom_left, _, top_right = quad.corners
    x_axis, y_axis = top_right - top_left, bottom_left - top_left
    offset = np.asarray(point) - top_left
    return np.array([offset @ x_axis / (x_axis @ x_axis), offset @ y_axis / (y_axis @ y_axis)]) * output_size


@pytest.mark.parametrize("degrees", [0, 25, -40])
def test_align_maps_markers_to_quad_positions(degrees):
    center = np.array([200.0, 200.0])
    shift = np.array([70.0, 60.0])
    landmarks = rotate_points(synthetic_landmarks() + shift, degrees, center)
    eyes = rotate_points([EYE_LEFT + shift, EYE_RIGHT + shift, (MOUTH_LEFT + MOUTH_RIGHT) / 2 + shift],
                         degrees, center)
    image = marker_image((400, 400), eyes)
    quad = quad_from_landmarks(landmarks)

    aligned = np.asarray(align_image(image, quad, 128))
    assert aligned.shape == (128, 128, 3)
    for channel, point in enumerate(eyes):
        found = marker_centroid(aligned, channel)
        np.testing.assert_allclose(found, expected_output_position(point, quad, 128), atol=1.0)
    # Upright in the output: both eyes on one row, the mouth below their midpoint.
    left, right, mouth = (marker_centroid(aligned, c) for c in range(3))
    assert abs(left[1] - right[1]) < 1.0
    assert mouth[1] > left[1] + 20
    assert abs(mouth[0] - (left[0] + right[0]) / 2) < 1.0


def test_align_undoes_rotation_of_real_face(faces_dir):
    face = Image.open(faces_dir / "ffhq" / "00001.png").convert("RGB")
    canvas = Image.new("RGB", (512, 512), (90, 90, 90))
    canvas.paste(face, (100, 80))
    landmarks = synthetic_landmarks() + np.array([100.0, 80.0])
    center = np.array([256.0, 256.0])
    tilted = canvas.rotate(20, resample=Image.BICUBIC, center=(256, 256))  # counter-clockwise on screen
    tilted_landmarks = rotate_points(landmarks, -20, center)

    straight = np.asarray(align_image(canvas, quad_from_landmarks(landmarks), 128)).astype(int)
    undone = np.asarray(align_image(tilted, quad_from_landmarks(tilted_landmarks), 128)).astype(int)
    not_undone = np.asarray(align_image(tilted, quad_from_landmarks(landmarks), 128)).astype(int)
    assert np.abs(undone - straight).mean() < 4
    assert np.abs(not_undone - straight).mean() > 15


def test_align_pads_quad_past_the_edge(faces_dir):
    face = Image.open(faces_dir / "ffhq" / "00002.png").convert("RGB")
    landmarks = synthetic_landmarks() - np.array([60.0, 60.0])  # the quad starts 56 px left of the image
    quad = quad_from_landmarks(landmarks)
    assert quad.corners[:, 0].min() < 0

    aligned = np.asarray(align_image(face, quad, 64)).astype(int)
    assert aligned.shape == (64, 64, 3)
    # Padding fills the outside with blurred reflections faded to the median, never black.
    outside = aligned[:, :10]
    assert outside.min() > 0
    assert np.abs(outside - np.median(np.asarray(face), axis=(0, 1))).mean() < 60


def test_align_shrinks_large_source_first(faces_dir):
    face = Image.open(faces_dir / "celeba_hq" / "006930.jpg").convert("RGB")
    small = face.resize((256, 256), Image.LANCZOS)
    landmarks_small = synthetic_landmarks()
    quad_large = AlignmentQuad(quad_from_landmarks(landmarks_small).corners * 4, 252.0 * 4)
    from_large = np.asarray(align_image(face, quad_large, 64)).astype(int)
    from_small = np.asarray(align_image(small, quad_from_landmarks(landmarks_small), 64)).astype(int)
    assert np.abs(from_large - from_small).mean() < 4


def run_cli(*args):
    return subprocess.run([sys.executable, str(REPO_ROOT / "shards" / "build.py"), *map(str, args)],
                          capture_output=True, text=True)


def test_cli_align_without_landmarks_fails_early(faces_dir, tmp_path):
    result = run_cli("--input", faces_dir, "--output", tmp_path / "out", "--align")
    assert result.returncode == 2
    assert "--align needs --landmarks PATH" in result.stderr
    assert not (tmp_path / "out").exists()


def test_cli_align_missing_landmarks_file_fails_early(faces_dir, tmp_path):
    result = run_cli("--input", faces_dir, "--output", tmp_path / "out", "--align",
                     "--landmarks", tmp_path / "missing.dat")
    assert result.returncode == 2
    assert f"--landmarks file {tmp_path / 'missing.dat'} not found" in result.stderr
    assert not (tmp_path / "out").exists()


def test_cli_align_invalid_landmarks_file_fails_early(faces_dir, tmp_path):
    pytest.importorskip("dlib", reason="dlib is not installed; install it with `pip install dlib-bin`")
    bogus = tmp_path / "bogus.dat"
    bogus.write_bytes(b"not a model")
    result = run_cli("--input", faces_dir, "--output", tmp_path / "out", "--align", "--landmarks", bogus)
    assert result.returncode == 2
    assert "is not a dlib shape predictor" in result.stderr
    assert not (tmp_path / "out").exists()


def test_cli_landmarks_without_align_rejected(faces_dir, tmp_path):
    result = run_cli("--input", faces_dir, "--output", tmp_path / "out", "--landmarks", tmp_path / "x.dat")
    assert result.returncode == 2
    assert "without --align" in result.stderr


# Landmark positions relative to the detector box (0..1), used to train the tiny predictor.
TEMPLATE_POINTS = {
    **{i: (0.05 + 0.9 * i / 16, 0.9) for i in range(0, 17)},
    **{36 + i: (0.30 + dx, 0.38 + dy) for i, (dx, dy) in enumerate(
        [(-0.05, 0), (-0.02, -0.02), (0.02, -0.02), (0.05, 0), (0.02, 0.02), (-0.02, 0.02)])},
    **{42 + i: (0.70 + dx, 0.38 + dy) for i, (dx, dy) in enumerate(
        [(-0.05, 0), (-0.02, -0.02), (0.02, -0.02), (0.05, 0), (0.02, 0.02), (-0.02, 0.02)])},
    48: (0.35, 0.78), 54: (0.65, 0.78),
}


@pytest.fixture(scope="module")
def tiny_predictor(faces_dir, tmp_path_factory):
    """Train a tiny 68-point dlib shape predictor on template landmarks of the detected FFHQ faces."""
    dlib = pytest.importorskip("dlib", reason="dlib is not installed; install it with `pip install dlib-bin`")
    detector = dlib.get_frontal_face_detector()
    images, objects = [], []
    for path in sorted((faces_dir / "ffhq").glob("*.png"))[:4]:
        pixels = np.asarray(Image.open(path).convert("RGB"))
        box = detector(pixels, 1)[0]
        relative = [TEMPLATE_POINTS.get(i, (0.5, 0.6)) for i in range(68)]
        points = [dlib.point(int(box.left() + rx * box.width()), int(box.top() + ry * box.height()))
                  for rx, ry in relative]
        images.append(pixels)
        objects.append([dlib.full_object_detection(box, points)])
    options = dlib.shape_predictor_training_options()
    options.tree_depth, options.cascade_depth, options.num_trees_per_cascade_level = 1, 1, 1
    options.oversampling_amount, options.feature_pool_size, options.num_test_splits = 1, 10, 2
    options.num_threads = 1
    path = tmp_path_factory.mktemp("predictor") / "tiny_68.dat"
    dlib.train_shape_predictor(images, objects, options).save(str(path))
    return path


def test_build_align_with_tiny_predictor(faces_dir, tmp_path, tiny_predictor):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("00005.png", "00006.png"):
        (folder / name).write_bytes((faces_dir / "ffhq" / name).read_bytes())
    Image.linear_gradient("L").convert("RGB").save(folder / "no_face.png")

    options = BuildOptions(input=folder, output=tmp_path / "out", resolution=64, align=True,
                           landmarks=tiny_predictor)
    report = run_build(options, Progress(io.StringIO()))
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    assert report.num_written == 2
    assert index["skipped"][0]["path"] == "no_face.png"
    assert index["skipped"][0]["kind"] == "no_face"
    assert index["build"]["align"]["landmarks_sha256"]

    import tarfile
    with tarfile.open(tmp_path / "out" / "shard-000000.tar") as tar:
        meta = json.loads(tar.extractfile("00005.json").read())
        image = Image.open(io.BytesIO(tar.extractfile("00005.jpg").read()))
    assert image.size == (64, 64)
    assert len(meta["align"]["quad"]) == 4
    assert len(meta["align"]["face_box"]) == 4
    assert meta["crop_box"] is None


def test_align_real_portrait_with_dlib_model(faces_dir):
    model = os.environ.get("SAM_DLIB_LANDMARKS")
    if not model or not Path(model).is_file():
        pytest.skip("dlib's 68-point model is not available; set SAM_DLIB_LANDMARKS to "
                    "shape_predictor_68_face_landmarks.dat to align a real portrait")
    face = Image.open(faces_dir / "ffhq" / "00001.png").convert("RGB")
    # An unaligned portrait: the FFHQ face enlarged, tilted by 8 degrees and off centre.
    portrait = Image.new("RGB", (700, 600), (70, 80, 90))
    portrait.paste(face.resize((384, 384), Image.BICUBIC).rotate(8, resample=Image.BICUBIC, fillcolor=(70, 80, 90)),
                   (220, 120))
    aligned = FaceAligner(model, output_size=256).align(portrait)

    assert aligned.image.size == (256, 256)
    # FFHQ images are aligned this way already, so aligning again nearly reproduces the face.
    realigned = np.asarray(aligned.image).astype(float)
    original = np.asarray(face).astype(float)
    assert np.abs(realigned - original).mean() < 30
    assert np.corrcoef(realigned.ravel(), original.ravel())[0, 1] > 0.7
