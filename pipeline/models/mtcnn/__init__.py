"""MTCNN face detection and 5-point alignment, as used by the ID-similarity evaluation."""

from pipeline.models.mtcnn.align import align_face, reference_points_112, similarity_transform_for_cv2
from pipeline.models.mtcnn.detector import MTCNN
from pipeline.models.mtcnn.nets import ONet, PNet, RNet, load_official_weights
from pipeline.models.mtcnn.weights import read_official_npy, read_official_npy_dir, split_flat_state_dict

__all__ = [
    "MTCNN",
    "ONet",
    "PNet",
    "RNet",
    "align_face",
    "load_official_weights",
    "read_official_npy",
    "read_official_npy_dir",
    "reference_points_112",
    "similarity_transform_for_cv2",
    "split_flat_state_dict",
]
