"""FFHQ-style face alignment from dlib's 68 facial landmarks.

The method is the one used to make the FFHQ dataset (Karras et al., "A Style-Based Generator
Architecture for GANs", 2019), which SAM also applies to its inputs with a 256-pixel output:
- an oriented square ("quad") is placed from the eye centres and the mouth corners. Its x axis
  is the sum of the eye-to-eye vector and the eye-to-mouth vector turned by -90 degrees. Its half
  side is max(2.0 x eye distance, 1.8 x eye-to-mouth distance). Its centre is the eye midpoint
  moved by 0.1 of the eye-to-mouth vector toward the mouth.
- a source much larger than the output is first shrunk by an integer factor. The source is then
  cropped around the quad. Where the quad reaches past the image edge, the image gets reflected
  padding that is blurred and faded to the median colour away from the real pixels.
- the quad is warped to the output square with bilinear sampling.
The landmark indices follow dlib's 68-point scheme (iBUG 300-W): eyes 36-41 and 42-47, mouth
corners 48 and 54.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

LEFT_EYE = slice(36, 42)
RIGHT_EYE = slice(42, 48)
MOUTH_LEFT_CORNER = 48
MOUTH_RIGHT_CORNER = 54
NUM_LANDMARKS = 68

HALF_SIDE_PER_EYE_DISTANCE = 2.0
HALF_SIDE_PER_EYE_TO_MOUTH = 1.8
CENTER_SHIFT_TOWARD_MOUTH = 0.1
BORDER_PER_SIDE = 0.1
MIN_BORDER_PX = 3
PAD_PER_SIDE = 0.3
BLUR_SIGMA_PER_SIDE = 0.02


class NoFaceFound(ValueError):
    """The face detector found no face in the image."""


@dataclass(frozen=True)
class AlignmentQuad:
    """The oriented square to cut out, in source pixel coordinates (x, y)."""

    corners: np.ndarray  # [4, 2]: top-left, bottom-left, bottom-right, top-right of the output
    side: float  # side length in source pixels

    def scaled(self, factor: float) -> "AlignmentQuad":
        return AlignmentQuad(self.corners * factor, float(self.side * factor))

    def shifted(self, dx: float, dy: float) -> "AlignmentQuad":
        return AlignmentQuad(self.corners + np.array([dx, dy]), self.side)

    def bounds(self) -> tuple[int, int, int, int]:
        """Return the integer box (left, top, right, bottom) that contains the quad."""
        x, y = self.corners[:, 0], self.corners[:, 1]
        return (math.floor(x.min()), math.floor(y.min()), math.ceil(x.max()), math.ceil(y.max()))


def quad_from_landmarks(landmarks: np.ndarray) -> AlignmentQuad:
    """Place the FFHQ crop square from 68 landmarks given as [68, 2] (x, y) pixel positions."""
    landmarks = np.asarray(landmarks, dtype=np.float64)
    if landmarks.shape != (NUM_LANDMARKS, 2):
        raise ValueError(f"landmarks have shape {landmarks.shape}; expected ({NUM_LANDMARKS}, 2) from dlib's "
                         "68-point predictor")
    eye_left = landmarks[LEFT_EYE].mean(axis=0)
    eye_right = landmarks[RIGHT_EYE].mean(axis=0)
    eye_center = (eye_left + eye_right) / 2
    mouth_center = (landmarks[MOUTH_LEFT_CORNER] + landmarks[MOUTH_RIGHT_CORNER]) / 2
    eye_to_eye = eye_right - eye_left
    eye_to_mouth = mouth_center - eye_center

    # The eye-to-mouth vector turned by -90 degrees points along the face's x axis, like eye_to_eye.
    mouth_direction_as_x = np.array([eye_to_mouth[1], -eye_to_mouth[0]])
    x_axis = eye_to_eye + mouth_direction_as_x
    half_side = max(HALF_SIDE_PER_EYE_DISTANCE * np.hypot(*eye_to_eye),
                    HALF_SIDE_PER_EYE_TO_MOUTH * np.hypot(*eye_to_mouth))
    x_axis = x_axis / np.hypot(*x_axis) * half_side
    y_axis = np.array([-x_axis[1], x_axis[0]])  # x turned by +90 degrees: down in image coordinates
    center = eye_center + CENTER_SHIFT_TOWARD_MOUTH * eye_to_mouth

    corners = np.stack([center - x_axis - y_axis, center - x_axis + y_axis,
                        center + x_axis + y_axis, center + x_axis - y_axis])
    return AlignmentQuad(corners, float(2 * half_side))


def align_image(image: Image.Image, quad: AlignmentQuad, output_size: int) -> Image.Image:
    """Cut the quad out of an RGB image into an output_size x output_size RGB image."""
    image, quad = shrink_for_output(image, quad, output_size)
    image, quad = crop_around_quad(image, quad)
    image, quad = pad_beyond_edges(image, quad)
    return image.transform((output_size, output_size), Image.QUAD, data=(quad.corners + 0.5).flatten(),
                           resample=Image.BILINEAR)


def shrink_for_output(image: Image.Image, quad: AlignmentQuad, output_size: int):
    """Downscale by an integer factor when the quad is over 4x the output, so warping does not alias."""
    factor = math.floor(quad.side / output_size * 0.5)
    if factor <= 1:
        return image, quad
    size = (round(image.width / factor), round(image.height / factor))
    return image.resize(size, Image.LANCZOS), quad.scaled(1.0 / factor)


def border_px(quad: AlignmentQuad) -> int:
    """Return the margin kept around the quad when cropping."""
    return max(round(quad.side * BORDER_PER_SIDE), MIN_BORDER_PX)


def crop_around_quad(image: Image.Image, quad: AlignmentQuad):
    """Crop the image to the quad's bounding box plus a border, clipped to the image."""
    border = border_px(quad)
    left, top, right, bottom = quad.bounds()
    box = (max(left - border, 0), max(top - border, 0),
           min(right + border, image.width), min(bottom + border, image.height))
    if box == (0, 0, image.width, image.height):
        return image, quad
    return image.crop(box), quad.shifted(-box[0], -box[1])


def pad_beyond_edges(image: Image.Image, quad: AlignmentQuad):
    """Pad with blurred, faded reflections where the quad reaches past the image."""
    border = border_px(quad)
    left, top, right, bottom = quad.bounds()
    needed = np.array([border - left, border - top, right - image.width + border, bottom - image.height + border])
    needed = np.maximum(needed, 0)
    if needed.max() <= border - 4:
        return image, quad
    pad_left, pad_top, pad_right, pad_bottom = np.maximum(needed, round(quad.side * PAD_PER_SIDE))

    pixels = np.asarray(image, dtype=np.float32)  # [H, W, 3]
    padded = np.pad(pixels, ((pad_top, pad_bottom), (pad_left, pad_right), (0, 0)), mode="reflect")
    mask = edge_distance_mask(padded.shape[:2], (pad_left, pad_top, pad_right, pad_bottom))  # [H, W, 1]

    blurred = np.asarray(
        Image.fromarray(np.uint8(np.clip(np.rint(padded), 0, 255))).filter(
            ImageFilter.GaussianBlur(radius=float(quad.side * BLUR_SIGMA_PER_SIDE))),
        dtype=np.float32)
    padded += (blurred - padded) * np.clip(mask * 3.0 + 1.0, 0.0, 1.0)
    padded += (np.median(padded, axis=(0, 1)) - padded) * np.clip(mask, 0.0, 1.0)
    result = Image.fromarray(np.uint8(np.clip(np.rint(padded), 0, 255)), "RGB")
    return result, quad.shifted(pad_left, pad_top)


def edge_distance_mask(shape_hw: tuple[int, int], pads: tuple[int, int, int, int]) -> np.ndarray:
    """Return [H, W, 1]: 0 inside the original image, rising to 1 at the far edge of each pad."""
    height, width = shape_hw
    pad_left, pad_top, pad_right, pad_bottom = (max(int(p), 1) for p in pads)
    x = np.arange(width, dtype=np.float32)[None, :, None]
    y = np.arange(height, dtype=np.float32)[:, None, None]
    horizontal = 1.0 - np.minimum(x / pad_left, (width - 1 - x) / pad_right)
    vertical = 1.0 - np.minimum(y / pad_top, (height - 1 - y) / pad_bottom)
    return np.maximum(horizontal, vertical)


@dataclass
class AlignedFace:
    """An aligned face image with the geometry that produced it."""

    image: Image.Image
    quad: AlignmentQuad
    face_box: tuple[int, int, int, int]
    output_size: int

    def metadata(self) -> dict:
        """Return JSON-ready facts: the quad corners in source pixels and the detector box."""
        return {
            "quad": np.round(self.quad.corners, 2).tolist(),
            "face_box": list(self.face_box),
            "upsampled": bool(self.quad.side < self.output_size),
        }


def import_dlib():
    """Import dlib, raising ImportError with the install command when it is missing."""
    try:
        import dlib
    except ImportError as exc:
        raise ImportError("face alignment needs dlib; install it with `pip install dlib-bin`") from exc
    return dlib


class FaceAligner:
    """Detect the largest face with dlib's HOG detector and align it the FFHQ way."""

    def __init__(self, landmarks_path: str | Path, output_size: int = 256, detector_upsample: int = 1):
        landmarks_path = Path(landmarks_path)
        if not landmarks_path.is_file():
            raise ValueError(f"landmark model {landmarks_path} not found; pass dlib's "
                             "shape_predictor_68_face_landmarks.dat")
        dlib = import_dlib()
        try:
            self.predictor = dlib.shape_predictor(str(landmarks_path))
        except RuntimeError as exc:
            raise ValueError(f"landmark model {landmarks_path} is not a dlib shape predictor: {exc}") from exc
        self.detector = dlib.get_frontal_face_detector()
        self.output_size = output_size
        self.detector_upsample = detector_upsample

    def detect_landmarks(self, image: Image.Image) -> tuple[np.ndarray, tuple[int, int, int, int]]:
        """Return the [68, 2] landmarks and box (left, top, right, bottom) of the largest face."""
        pixels = np.asarray(image.convert("RGB"))
        faces = list(self.detector(pixels, self.detector_upsample))
        if not faces:
            raise NoFaceFound(f"dlib's frontal face detector found no face in the {image.width}x{image.height} image")
        # NOTE: SAM's script keeps the last detection; the largest face is kept here so that
        # a small face in the background never wins.
        face = max(faces, key=lambda rect: rect.width() * rect.height())
        shape = self.predictor(pixels, face)
        if shape.num_parts != NUM_LANDMARKS:
            raise ValueError(f"the landmark model gives {shape.num_parts} points; FFHQ alignment needs the "
                             f"{NUM_LANDMARKS}-point model")
        landmarks = np.array([[shape.part(i).x, shape.part(i).y] for i in range(NUM_LANDMARKS)], dtype=np.float64)
        return landmarks, (face.left(), face.top(), face.right(), face.bottom())

    def align(self, image: Image.Image) -> AlignedFace:
        """Align the largest face in an RGB image, raising NoFaceFound when there is none."""
        landmarks, face_box = self.detect_landmarks(image)
        quad = quad_from_landmarks(landmarks)
        aligned = align_image(image.convert("RGB"), quad, self.output_size)
        return AlignedFace(aligned, quad, face_box, self.output_size)
