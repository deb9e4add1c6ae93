"""Parity of MTCNN detection and alignment with the official PyTorch MTCNN and its real weights.

Every intermediate array of the case is compared for each of the five photos, then the
112x112 aligned crops that the ID-similarity evaluation consumes.
"""

import numpy as np
import pytest
from PIL import Image

from pipeline.checkpoint.torch_format import load_torch_file
from pipeline.models.mtcnn import MTCNN
from pipeline.models.mtcnn.align import landmarks_to_points, reference_points_112, similarity_transform_for_cv2, warp_face

pytestmark = pytest.mark.parity

CASE = "i_mtcnn"
IMAGE_COUNT = 5

NET_OUTPUT_ATOL = 1e-5
LANDMARK_ATOL_PX = 1e-3
TFM_ATOL = 1e-4
# Final boxes are calibrated with ONet's continuous offsets (no rounding), so a 1e-7
# offset difference moves a corner by 1e-7 x the box size. Their corners get the landmark
# tolerance and their scores the network-output tolerance.
FINAL_BOX_ATOL_PX = 1e-3
# OpenCV's bilinear warp snaps source coordinates to 1/32 px, so the ~1e-5 tfm drift that
# float32 network differences cause can move a few samples across a grid line and change
# them by one grey level. The crops from the reference tfm itself match exactly.
MAX_OFF_BY_ONE_VALUES = 16

EXACT_ARRAYS = [
    "scales",
    "stage1_boxes_per_scale_count",
    "pnet_scale0_input",
    "stage1_boxes",
    "rnet_input_first4",
    "stage2_boxes",
    "onet_input_first4",
]
NET_OUTPUT_ARRAYS = [
    "pnet_scale0_offsets",
    "pnet_scale0_probs",
    "rnet_offsets",
    "rnet_probs",
    "onet_landmarks_raw",
    "onet_offsets",
    "onet_probs",
]
ALL_ARRAYS = EXACT_ARRAYS + NET_OUTPUT_ARRAYS + ["final_boxes", "final_landmarks", "tfm"]
IMAGES = range(IMAGE_COUNT)


@pytest.fixture(scope="module")
def case(golden):
    return golden(CASE)


@pytest.fixture(scope="module")
def detector(case):
    return MTCNN.from_state_dict(load_torch_file(case.weights_path))


def image_name(case, index):
    return case.meta["images"][f"img{index}"]


def load_image(case, index):
    return Image.open(case.folder / image_name(case, index)).convert("RGB")


def load_reference_crop(case, index):
    return np.asarray(Image.open(case.folder / f"aligned_{index}_{image_name(case, index)}"))


@pytest.fixture(scope="module")
def runs(case, detector):
    """Run align() once per image; return {index: (trace dict, aligned PIL image)}."""
    results = {}
    for index in IMAGES:
        trace = {}
        aligned, _ = detector.align(load_image(case, index), trace)
        results[index] = (trace, aligned)
    return results


def expected_and_actual(case, runs, index, name):
    expected = case.io[f"img{index}.{name}"]
    actual = runs[index][0][name]
    assert actual.shape == expected.shape, f"img{index}.{name}: shape {actual.shape} != {expected.shape}"
    assert actual.dtype == expected.dtype, f"img{index}.{name}: dtype {actual.dtype} != {expected.dtype}"
    return expected, actual


def test_case_arrays_all_covered(case):
    expected_keys = {f"img{index}.{name}" for index in IMAGES for name in ALL_ARRAYS}
    assert set(case.io) == expected_keys


@pytest.mark.parametrize("name", EXACT_ARRAYS)
@pytest.mark.parametrize("index", IMAGES)
def test_exact_array(case, runs, index, name):
    expected, actual = expected_and_actual(case, runs, index, name)
    np.testing.assert_array_equal(actual, expected, err_msg=f"img{index}.{name}")


@pytest.mark.parametrize("name", NET_OUTPUT_ARRAYS)
@pytest.mark.parametrize("index", IMAGES)
def test_network_output(case, runs, index, name):
    expected, actual = expected_and_actual(case, runs, index, name)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=NET_OUTPUT_ATOL, err_msg=f"img{index}.{name}")


@pytest.mark.parametrize("index", IMAGES)
def test_final_boxes(case, runs, index):
    expected, actual = expected_and_actual(case, runs, index, "final_boxes")
    np.testing.assert_allclose(actual[:, :4], expected[:, :4], rtol=0, atol=FINAL_BOX_ATOL_PX)
    np.testing.assert_allclose(actual[:, 4], expected[:, 4], rtol=0, atol=NET_OUTPUT_ATOL)


@pytest.mark.parametrize("index", IMAGES)
def test_final_landmarks(case, runs, index):
    expected, actual = expected_and_actual(case, runs, index, "final_landmarks")
    np.testing.assert_allclose(actual, expected, rtol=0, atol=LANDMARK_ATOL_PX)


@pytest.mark.parametrize("index", IMAGES)
def test_tfm(case, runs, index):
    expected, actual = expected_and_actual(case, runs, index, "tfm")
    np.testing.assert_allclose(actual, expected, rtol=0, atol=TFM_ATOL)


@pytest.mark.parametrize("index", IMAGES)
def test_tfm_from_reference_landmarks(case, index):
    """The similarity fit alone reproduces the official tfm from the official landmarks."""
    landmarks = case.io[f"img{index}.final_landmarks"][0]
    transform = similarity_transform_for_cv2(landmarks_to_points(landmarks), reference_points_112())
    np.testing.assert_allclose(transform, case.io[f"img{index}.tfm"], rtol=0, atol=1e-9)


@pytest.mark.parametrize("index", IMAGES)
def test_crop_from_reference_tfm_exact(case, index):
    """The warp alone reproduces the official crop bit for bit from the official tfm."""
    image_rgb = np.asarray(load_image(case, index))
    crop = warp_face(image_rgb, case.io[f"img{index}.tfm"])
    np.testing.assert_array_equal(crop, load_reference_crop(case, index))


@pytest.mark.parametrize("index", IMAGES)
def test_aligned_crop(case, runs, index):
    aligned = runs[index][1]
    assert aligned is not None
    assert aligned.size == (112, 112)
    assert aligned.mode == "RGB"

    difference = np.abs(np.asarray(aligned).astype(np.int16) - load_reference_crop(case, index))
    assert difference.max() <= 1
    assert np.count_nonzero(difference) <= MAX_OFF_BY_ONE_VALUES


@pytest.mark.parametrize(
    "pixels",
    [
        np.full((256, 256, 3), 128, dtype=np.uint8),  # PNet proposes boxes, RNet rejects them
        np.zeros((12, 12, 3), dtype=np.uint8),  # too small for any pyramid scale
    ],
    ids=["flat_grey", "tiny"],
)
def test_align_without_face_returns_none(detector, pixels):
    aligned, transform = detector.align(Image.fromarray(pixels))
    assert aligned is None
    assert transform is None


def test_detect_faces_without_face_shapes(detector):
    boxes, landmarks = detector.detect_faces(Image.fromarray(np.full((64, 64, 3), 128, dtype=np.uint8)))
    assert boxes.shape == (0, 5)
    assert boxes.dtype == np.float64
    assert landmarks.shape == (0, 10)
    assert landmarks.dtype == np.float32


def test_grayscale_image_rejected(detector):
    with pytest.raises(ValueError, match="convert\\('RGB'\\)"):
        detector.detect_faces(Image.new("L", (64, 64)))


def test_reference_points_match_square_template():
    expected = [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]]
    points = reference_points_112()
    assert points.dtype == np.float32
    np.testing.assert_allclose(points, expected, rtol=0, atol=1e-4)


def test_similarity_fit_recovers_exact_transform():
    angle_rad, scale = 0.3, 1.7
    linear = scale * np.array([[np.cos(angle_rad), -np.sin(angle_rad)], [np.sin(angle_rad), np.cos(angle_rad)]])
    expected = np.hstack([linear, [[5.0], [-3.0]]])  # [2, 3] as cv2 takes it
    src_points = np.float32([[10, 20], [40, 22], [25, 35], [14, 50], [37, 49]])
    dst_points = np.float32(src_points @ linear.T + expected[:, 2])

    transform = similarity_transform_for_cv2(src_points, dst_points)
    np.testing.assert_allclose(transform, expected, rtol=0, atol=1e-4)
