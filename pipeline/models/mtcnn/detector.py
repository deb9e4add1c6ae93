"""MTCNN face detection (PNet -> RNet -> ONet cascade) and 112x112 alignment.

This reproduces pixel2style2pixel's MTCNN, which its ID-similarity evaluation uses, step for
step in NumPy with the networks in Paddle. Boxes are float64 [n, 5] rows
(x1, y1, x2, y2, score) in pixels with inclusive corners, so a box is x2 - x1 + 1 wide.
"""

import math

import numpy as np
import paddle
from PIL import Image

from pipeline.models.mtcnn.align import align_face
from pipeline.models.mtcnn.nets import ONet, PNet, RNet, load_official_weights
from pipeline.models.mtcnn.weights import read_official_npy_dir, split_flat_state_dict

MIN_DETECTION_SIZE_PX = 12  # PNet's receptive field
PYRAMID_FACTOR = 0.707  # about sqrt(0.5): each pyramid level halves the area
PNET_STRIDE_PX = 2
PNET_CELL_SIZE_PX = 12
RNET_INPUT_SIZE_PX = 24
ONET_INPUT_SIZE_PX = 48
PER_SCALE_NMS_THRESHOLD = 0.5


# ---------------------------------------------------------------------------
# Pipeline stages (NumPy)
# ---------------------------------------------------------------------------


def pyramid_scales(width_px, height_px, min_face_size_px):
    """Return the image pyramid scales so that faces down to `min_face_size_px` reach PNet's 12 px."""
    base_scale = MIN_DETECTION_SIZE_PX / min_face_size_px
    scaled_min_side = min(width_px, height_px) * base_scale
    scales = []
    level = 0
    while scaled_min_side > MIN_DETECTION_SIZE_PX:
        scales.append(base_scale * PYRAMID_FACTOR**level)
        scaled_min_side *= PYRAMID_FACTOR
        level += 1
    return scales


def to_network_input(pixels_hwc):
    """Convert [H, W, 3] float32 pixels in [0, 255] to a [1, 3, H, W] float32 network input."""
    chw = pixels_hwc.transpose((2, 0, 1))[None]
    return (chw - 127.5) * 0.0078125


def resize_for_scale(image, scale):
    """Resize a PIL image by `scale` (sizes rounded up) with PIL bilinear into a [1,3,h,w] input."""
    width_px, height_px = image.size
    size = (math.ceil(width_px * scale), math.ceil(height_px * scale))
    resized = image.resize(size, Image.BILINEAR)
    return to_network_input(np.asarray(resized, dtype=np.float32))


def candidate_boxes(face_probs, offsets, scale, threshold):
    """Turn PNet's map into boxes in original-image pixels.

    face_probs: [h, w] face probability per window; offsets: [1, 4, h, w].
    Each map cell is a 12x12 window at stride 2 in the scaled image. Returns [n, 9] float64
    rows (x1, y1, x2, y2, score, 4 offsets); coordinates use np.round (half to even).
    """
    rows, cols = np.where(face_probs > threshold)
    if rows.size == 0:
        return np.zeros((0, 9))
    window_offsets = np.stack([offsets[0, i, rows, cols] for i in range(4)])  # [4, n]
    scores = face_probs[rows, cols]
    corners = np.stack(
        [
            np.round((PNET_STRIDE_PX * cols + 1.0) / scale),
            np.round((PNET_STRIDE_PX * rows + 1.0) / scale),
            np.round((PNET_STRIDE_PX * cols + 1.0 + PNET_CELL_SIZE_PX) / scale),
            np.round((PNET_STRIDE_PX * rows + 1.0 + PNET_CELL_SIZE_PX) / scale),
        ]
    )
    return np.vstack([corners, scores, window_offsets]).T


def box_areas(boxes):
    """Return the areas of [n, >=4] inclusive-corner boxes."""
    return (boxes[:, 2] - boxes[:, 0] + 1.0) * (boxes[:, 3] - boxes[:, 1] + 1.0)


def nms(boxes, overlap_threshold, mode="union"):
    """Greedy non-maximum suppression; return the kept row indices, best score first.

    boxes: [n, >=5]. Overlap is IoU for mode 'union' and intersection / smaller area for
    mode 'min'. Candidates are visited in np.argsort order of the scores, as in the
    official code, so ties resolve the same way.
    """
    if mode not in ("union", "min"):
        raise ValueError(f"invalid NMS mode {mode!r}; use 'union' or 'min'")
    areas = box_areas(boxes)
    order = np.argsort(boxes[:, 4])  # ascending; the best box is last
    keep = []
    while order.size > 0:
        best, rest = order[-1], order[:-1]
        keep.append(best)
        inter_w = np.maximum(0.0, np.minimum(boxes[best, 2], boxes[rest, 2]) - np.maximum(boxes[best, 0], boxes[rest, 0]) + 1.0)
        inter_h = np.maximum(0.0, np.minimum(boxes[best, 3], boxes[rest, 3]) - np.maximum(boxes[best, 1], boxes[rest, 1]) + 1.0)
        intersection = inter_w * inter_h
        if mode == "min":
            overlap = intersection / np.minimum(areas[best], areas[rest])
        else:
            overlap = intersection / (areas[best] + areas[rest] - intersection)
        order = rest[~(overlap > overlap_threshold)]  # NaN overlaps stay, as in the official code
    return np.array(keep, dtype=np.int64)


def calibrate_boxes(boxes, offsets):
    """Shift each corner by its regression offset times the box size, into a new [n, 5] array.

    offsets: [n, 4] (dx1, dy1, dx2, dy2) in box widths/heights.
    """
    widths = (boxes[:, 2] - boxes[:, 0] + 1.0)[:, None]
    heights = (boxes[:, 3] - boxes[:, 1] + 1.0)[:, None]
    calibrated = boxes.copy()
    calibrated[:, 0:4] = boxes[:, 0:4] + np.hstack([widths, heights, widths, heights]) * offsets
    return calibrated


def square_boxes(boxes):
    """Grow each box to a square around its centre; return [n, 5] with the score column 0.

    The official code builds the result with zeros_like and never copies the scores. Every
    later stage overwrites them, so the zeros are kept for parity of the intermediate boxes.
    """
    squared = np.zeros_like(boxes)
    heights = boxes[:, 3] - boxes[:, 1] + 1.0
    widths = boxes[:, 2] - boxes[:, 0] + 1.0
    sides = np.maximum(heights, widths)
    squared[:, 0] = boxes[:, 0] + widths * 0.5 - sides * 0.5
    squared[:, 1] = boxes[:, 1] + heights * 0.5 - sides * 0.5
    squared[:, 2] = squared[:, 0] + sides - 1.0
    squared[:, 3] = squared[:, 1] + sides - 1.0
    return squared


def square_and_round(boxes):
    """Square the boxes, then round their corners to whole pixels (np.round)."""
    squared = square_boxes(boxes)
    squared[:, 0:4] = np.round(squared[:, 0:4])
    return squared


def clip_boxes_to_image(boxes, width_px, height_px):
    """Clip the corners into the image, into a new [n, 5] array.

    NOTE: the official crop helper clips the caller's boxes in place as a side effect, so
    the next stage calibrates and places landmarks on the clipped boxes. The detector calls
    this after every crop to match.
    """
    clipped = boxes.copy()
    clipped[:, 0] = np.where(boxes[:, 0] < 0.0, 0.0, boxes[:, 0])
    clipped[:, 1] = np.where(boxes[:, 1] < 0.0, 0.0, boxes[:, 1])
    clipped[:, 2] = np.where(boxes[:, 2] > width_px - 1.0, width_px - 1.0, boxes[:, 2])
    clipped[:, 3] = np.where(boxes[:, 3] > height_px - 1.0, height_px - 1.0, boxes[:, 3])
    return clipped


def crop_box(image_rgb, box):
    """Cut one box out of an [H, W, 3] uint8 image, with zeros where the box leaves the image."""
    x1, y1, x2, y2 = (int(value) for value in box[:4])  # whole-pixel corners after rounding
    height_px, width_px = image_rgb.shape[:2]
    crop = np.zeros((y2 - y1 + 1, x2 - x1 + 1, 3), dtype=np.uint8)
    src_x1, src_y1 = max(x1, 0), max(y1, 0)
    src_x2, src_y2 = min(x2, width_px - 1), min(y2, height_px - 1)
    if src_x1 <= src_x2 and src_y1 <= src_y2:
        crop[src_y1 - y1 : src_y2 - y1 + 1, src_x1 - x1 : src_x2 - x1 + 1] = image_rgb[
            src_y1 : src_y2 + 1, src_x1 : src_x2 + 1
        ]
    return crop


def crop_boxes(image_rgb, boxes, size_px):
    """Crop every box and resize it with PIL bilinear into [n, 3, size, size] float32 inputs."""
    inputs = np.zeros((len(boxes), 3, size_px, size_px), dtype=np.float32)
    for i, box in enumerate(boxes):
        crop = Image.fromarray(crop_box(image_rgb, box)).resize((size_px, size_px), Image.BILINEAR)
        inputs[i] = to_network_input(np.asarray(crop, dtype=np.float32))[0]
    return inputs


def landmarks_to_pixels(raw_landmarks, boxes):
    """Convert ONet landmarks [n, 10] (fractions of the box) to pixels; return float32 [n, 10].

    x = x1 + (x2 - x1 + 1) * raw_x and y = y1 + (y2 - y1 + 1) * raw_y, computed in float64.
    """
    widths = (boxes[:, 2] - boxes[:, 0] + 1.0)[:, None]
    heights = (boxes[:, 3] - boxes[:, 1] + 1.0)[:, None]
    landmarks = raw_landmarks.astype(np.float32, copy=True)
    landmarks[:, 0:5] = boxes[:, 0:1] + widths * raw_landmarks[:, 0:5]
    landmarks[:, 5:10] = boxes[:, 1:2] + heights * raw_landmarks[:, 5:10]
    return landmarks


def _record(trace, name, value):
    if trace is not None:
        trace[name] = value


def _no_faces():
    return np.zeros((0, 5)), np.zeros((0, 10), dtype=np.float32)


# ---------------------------------------------------------------------------
# Detector
# ---------------------------------------------------------------------------


class MTCNN:
    """Face detector and aligner with the official MTCNN defaults.

    Build it from loaded nets, from the official `.npy` files (`from_npy_dir`) or from a flat
    `pnet.`/`rnet.`/`onet.` state dict in the official layout (`from_state_dict`).
    """

    def __init__(self, pnet, rnet, onet, min_face_size_px=20.0, thresholds=(0.15, 0.25, 0.35),
                 nms_thresholds=(0.7, 0.7, 0.7)):
        if len(thresholds) != 3 or len(nms_thresholds) != 3:
            raise ValueError(
                f"thresholds {thresholds} and nms_thresholds {nms_thresholds} need one value per "
                "stage (PNet, RNet, ONet)"
            )
        if min_face_size_px <= 0:
            raise ValueError(f"min_face_size_px must be positive, got {min_face_size_px}")
        self.pnet, self.rnet, self.onet = pnet, rnet, onet
        for net in (pnet, rnet, onet):
            net.eval()
        self.min_face_size_px = min_face_size_px
        self.thresholds = tuple(thresholds)
        self.nms_thresholds = tuple(nms_thresholds)

    @classmethod
    def from_state_dict(cls, flat_state, **options):
        """Build from {'pnet.<key>': array, 'rnet.<key>': ..., 'onet.<key>': ...} (official layout)."""
        return cls._from_per_net(split_flat_state_dict(flat_state), **options)

    @classmethod
    def from_npy_dir(cls, directory, **options):
        """Build from a directory that contains the official pnet.npy, rnet.npy and onet.npy."""
        return cls._from_per_net(read_official_npy_dir(directory), **options)

    @classmethod
    def _from_per_net(cls, per_net_state, **options):
        nets = {"pnet": PNet(), "rnet": RNet(), "onet": ONet()}
        for name, net in nets.items():
            load_official_weights(net, per_net_state[name])
        return cls(nets["pnet"], nets["rnet"], nets["onet"], **options)

    # -- stages ---------------------------------------------------------------

    def _run_pnet(self, image, scale, trace):
        """Return PNet's candidates at one scale after per-scale NMS, [n, 9]."""
        pnet_input = resize_for_scale(image, scale)  # [1, 3, ceil(H*s), ceil(W*s)]
        offsets, probs = self.pnet(paddle.to_tensor(pnet_input))
        offsets, probs = offsets.numpy(), probs.numpy()
        if trace is not None and "pnet_scale0_input" not in trace:
            trace.update(pnet_scale0_input=pnet_input, pnet_scale0_offsets=offsets, pnet_scale0_probs=probs)

        candidates = candidate_boxes(probs[0, 1], offsets, scale, self.thresholds[0])
        return candidates[nms(candidates[:, 0:5], PER_SCALE_NMS_THRESHOLD)]

    def _stage1_proposals(self, image, trace):
        """Run PNet over the pyramid; return squared, rounded proposals [n1, 5]."""
        scales = pyramid_scales(*image.size, self.min_face_size_px)
        per_scale = [self._run_pnet(image, scale, trace) for scale in scales]
        _record(trace, "scales", np.array(scales))
        _record(trace, "stage1_boxes_per_scale_count", np.array([len(b) for b in per_scale], dtype=np.int64))

        # NOTE: the official code raises when no scale yields a candidate, as for an image
        # smaller than 12 px. Here that case returns no faces, so align() returns None.
        candidates = np.vstack([np.zeros((0, 9))] + per_scale)  # [n, 9]
        candidates = candidates[nms(candidates[:, 0:5], self.nms_thresholds[0])]
        boxes = square_and_round(calibrate_boxes(candidates[:, 0:5], candidates[:, 5:9]))
        _record(trace, "stage1_boxes", boxes.copy())
        return boxes

    def _stage2_refine(self, image, image_rgb, boxes, trace):
        """Score proposals with RNet; return refined, squared, rounded boxes [n2, 5]."""
        crops = crop_boxes(image_rgb, boxes, RNET_INPUT_SIZE_PX)  # [n1, 3, 24, 24]
        boxes = clip_boxes_to_image(boxes, *image.size)
        offsets, probs = (out.numpy() for out in self.rnet(paddle.to_tensor(crops)))
        _record(trace, "rnet_input_first4", crops[:4])
        _record(trace, "rnet_offsets", offsets)
        _record(trace, "rnet_probs", probs)

        keep = np.where(probs[:, 1] > self.thresholds[1])[0]
        boxes, offsets = boxes[keep], offsets[keep]
        boxes[:, 4] = probs[keep, 1]
        keep = nms(boxes, self.nms_thresholds[1])
        boxes = square_and_round(calibrate_boxes(boxes[keep], offsets[keep]))
        _record(trace, "stage2_boxes", boxes.copy())
        return boxes

    def _stage3_output(self, image, image_rgb, boxes, trace):
        """Score boxes with ONet; return final boxes [n, 5] float64 and landmarks [n, 10] float32."""
        crops = crop_boxes(image_rgb, boxes, ONET_INPUT_SIZE_PX)  # [n2, 3, 48, 48]
        boxes = clip_boxes_to_image(boxes, *image.size)
        raw_landmarks, offsets, probs = (out.numpy() for out in self.onet(paddle.to_tensor(crops)))
        _record(trace, "onet_input_first4", crops[:4])
        _record(trace, "onet_landmarks_raw", raw_landmarks)
        _record(trace, "onet_offsets", offsets)
        _record(trace, "onet_probs", probs)

        keep = np.where(probs[:, 1] > self.thresholds[2])[0]
        boxes, offsets, raw_landmarks = boxes[keep], offsets[keep], raw_landmarks[keep]
        boxes[:, 4] = probs[keep, 1]
        landmarks = landmarks_to_pixels(raw_landmarks, boxes)
        boxes = calibrate_boxes(boxes, offsets)
        keep = nms(boxes, self.nms_thresholds[2], mode="min")
        return boxes[keep], landmarks[keep]

    # -- public API -----------------------------------------------------------

    def detect_faces(self, image, trace=None):
        """Detect faces in an RGB PIL image.

        Returns (boxes [n, 5] float64 rows x1, y1, x2, y2, score; landmarks [n, 10] float32,
        5 x then 5 y, in pixels), best face first. With `trace` (a dict), the intermediate
        arrays of every stage are stored in it under their names.
        """
        if not isinstance(image, Image.Image) or image.mode != "RGB":
            mode = getattr(image, "mode", type(image).__name__)
            raise ValueError(f"MTCNN needs an RGB PIL image, got {mode}; convert with image.convert('RGB')")
        image_rgb = np.asarray(image, dtype=np.uint8)

        with paddle.no_grad():
            boxes = self._stage1_proposals(image, trace)
            if len(boxes) > 0:
                boxes = self._stage2_refine(image, image_rgb, boxes, trace)
            if len(boxes) == 0:
                boxes, landmarks = _no_faces()
            else:
                boxes, landmarks = self._stage3_output(image, image_rgb, boxes, trace)

        _record(trace, "final_boxes", boxes)
        _record(trace, "final_landmarks", landmarks)
        return boxes, landmarks

    def align(self, image, trace=None):
        """Align the first detected face to 112x112.

        Returns (aligned RGB PIL image, tfm [2, 3] float64 for cv2.warpAffine), or
        (None, None) when no face is found.
        """
        _, landmarks = self.detect_faces(image, trace)
        if len(landmarks) == 0:
            return None, None
        aligned, transform = align_face(np.asarray(image, dtype=np.uint8), landmarks[0])
        _record(trace, "tfm", transform)
        return Image.fromarray(aligned), transform
