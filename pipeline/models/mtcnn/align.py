"""Five-point face alignment to a 112x112 crop, as the official MTCNN `align()` does it.

The transform is MATLAB's `cp2tform(..., 'similarity')` as ported to NumPy by the official
code: a least-squares similarity fit that may include a reflection, applied with
cv2.warpAffine (bilinear, constant border 0).
"""

import cv2
import numpy as np

ALIGNED_SIZE_PX = 112

# Landmark template of the 96x112 ArcFace/SphereFace crop (x, y): left eye, right eye,
# nose tip, left and right mouth corners.
TEMPLATE_POINTS_96X112 = np.array(
    [
        [30.29459953, 51.69630051],
        [65.53179932, 51.50139999],
        [48.02519989, 71.73660278],
        [33.54930115, 92.3655014],
        [62.72990036, 92.20410156],
    ]
)


def reference_points_112():
    """Return the [5, 2] float32 template for the 112x112 crop.

    The 96x112 template is centred in the square by shifting x by (112 - 96) / 2 = 8 px.
    The shift is done in float64 before the float32 cast, as in the official code.
    """
    return np.float32(TEMPLATE_POINTS_96X112 + np.array([8.0, 0.0]))


def _fit_inverse_similarity(src_points, dst_points):
    """Fit dst -> src with a non-reflective similarity by least squares.

    Returns the 3x3 matrix T_inv in row-vector form ([x, y, 1] @ T_inv = [u, v, 1]).
    The model is u = a*x + b*y + tx, v = -b*x + a*y + ty.
    """
    num_points = dst_points.shape[0]
    x = dst_points[:, 0:1].astype(np.float64)
    y = dst_points[:, 1:2].astype(np.float64)
    ones = np.ones((num_points, 1))
    zeros = np.zeros((num_points, 1))
    design = np.vstack([np.hstack([x, y, ones, zeros]), np.hstack([y, -x, zeros, ones])])  # [2K, 4]
    target = np.concatenate([src_points[:, 0], src_points[:, 1]]).astype(np.float64)  # [2K]

    if np.linalg.matrix_rank(design) < 4:
        raise ValueError(
            f"cannot fit a similarity transform to landmarks {src_points.tolist()}: at least two "
            "distinct points are required"
        )
    a, b, tx, ty = np.linalg.lstsq(design, target, rcond=None)[0]
    return np.array([[a, -b, 0.0], [b, a, 0.0], [tx, ty, 1.0]])


def _fit_nonreflective_similarity(src_points, dst_points):
    """Return the 3x3 row-vector matrix mapping src to dst (inverse of the dst -> src fit)."""
    forward = np.linalg.inv(_fit_inverse_similarity(src_points, dst_points))
    forward[:, 2] = [0.0, 0.0, 1.0]
    return forward


def _apply_row_transform(transform, points):
    """Map [K, 2] points with a 3x3 row-vector matrix and return [K, 2] float64."""
    homogeneous = np.hstack([points, np.ones((points.shape[0], 1))])
    return (homogeneous @ transform)[:, :2]


def fit_reflective_similarity(src_points, dst_points):
    """Fit the similarity (possibly with a reflection) that maps src onto dst.

    src_points, dst_points: [K, 2] float32 (x, y). Returns the 3x3 row-vector matrix.
    Two candidates are fitted, one with and one without a reflection about the y axis.
    The one with the smaller residual is kept, and a tie keeps the non-reflective one.
    """
    direct = _fit_nonreflective_similarity(src_points, dst_points)

    mirrored_dst = dst_points.copy()
    mirrored_dst[:, 0] = -mirrored_dst[:, 0]
    reflect_x = np.diag([-1.0, 1.0, 1.0])
    reflected = _fit_nonreflective_similarity(src_points, mirrored_dst) @ reflect_x

    # NOTE: the official port negates the x column of dst in place before it measures the
    # residuals, so both candidates are scored against the mirrored points. This keeps that
    # behaviour, because it decides which transform the reference crops used.
    direct_error = np.linalg.norm(_apply_row_transform(direct, src_points) - mirrored_dst)
    reflected_error = np.linalg.norm(_apply_row_transform(reflected, src_points) - mirrored_dst)
    return direct if direct_error <= reflected_error else reflected


def similarity_transform_for_cv2(src_points, dst_points):
    """Return the [2, 3] float64 affine matrix for cv2.warpAffine that maps src onto dst."""
    return fit_reflective_similarity(src_points, dst_points)[:, :2].T


def landmarks_to_points(landmarks):
    """Convert one face's [10] landmarks (5 x, then 5 y) to [5, 2] float32 (x, y) points."""
    landmarks = np.asarray(landmarks)
    return np.float32(np.stack([landmarks[:5], landmarks[5:10]], axis=1))


def warp_face(image_rgb, transform, size_px=ALIGNED_SIZE_PX):
    """Warp an [H, W, 3] uint8 image with a [2, 3] affine into a [size, size, 3] uint8 crop.

    Bilinear interpolation with a constant zero border, the cv2.warpAffine defaults.
    """
    return cv2.warpAffine(image_rgb, transform, (size_px, size_px))


def align_face(image_rgb, landmarks):
    """Align one face given its [10] landmarks; return (crop [112,112,3] uint8, tfm [2,3])."""
    transform = similarity_transform_for_cv2(landmarks_to_points(landmarks), reference_points_112())
    return warp_face(image_rgb, transform), transform
