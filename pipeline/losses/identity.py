"""SAM's identity loss on a frozen ArcFace IR-SE50, and plain face embeddings for evaluation.

Per sample i, with f the l2-normalised embedding of the cropped and pooled face:
  diff_target = <f(y_hat), f(y)>, diff_input = <f(y_hat), f(x)>, diff_views = <f(y), f(x)>
  loss = sum_i w_i * (1 - diff_target_i) / n
where w_i = 0.25 * cos(pi * |target_age_i - input_age_i|) + 0.75 (ages / 100) when the
loss is weighted, else 1.
"""

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

# Rows 35..222 and columns 32..219 of a 256x256 aligned face: the face without hair and
# background, as SAM crops it.
FACE_CROP_ROWS = slice(35, 223)
FACE_CROP_COLS = slice(32, 220)
EMBEDDING_INPUT_SIZE = 112
LOSS_INPUT_SIZE = 256


def crop_and_pool_face(images):
    """Crop the 188x188 face region of [B, 3, 256, 256] images and average-pool it to 112x112."""
    if images.ndim != 4 or list(images.shape[1:]) != [3, LOSS_INPUT_SIZE, LOSS_INPUT_SIZE]:
        raise ValueError(
            f"the identity loss expects images of shape [B, 3, {LOSS_INPUT_SIZE}, {LOSS_INPUT_SIZE}], "
            f"got {list(images.shape)}; pool generator outputs to {LOSS_INPUT_SIZE}x{LOSS_INPUT_SIZE} first"
        )
    face = images[:, :, FACE_CROP_ROWS, FACE_CROP_COLS]
    # Paddle's adaptive pooling uses PyTorch's windows [floor(i*188/112), ceil((i+1)*188/112)).
    return F.adaptive_avg_pool2d(face, EMBEDDING_INPUT_SIZE)


def extract_feats(facenet, images):
    """Return the l2-normalised embeddings [B, E] of the face crops of 256x256 images."""
    return facenet(crop_and_pool_face(images))


def age_gap_weights(target_ages, input_ages):
    """Return float64 weights 0.25 * cos(pi * |target - input|) + 0.75 per sample.

    Ages are in years / 100, so every gap must lie in [0, 1]. Equal ages give weight 1 and a
    gap of 1 gives 0.5, so the identity term relaxes for large age changes.
    """
    age_gaps = np.abs(_as_float64(target_ages) - _as_float64(input_ages))
    if age_gaps.size and (age_gaps.min() < 0.0 or age_gaps.max() > 1.0):
        raise ValueError(
            f"age gaps must lie in [0, 1], got {age_gaps.tolist()}; pass ages divided by 100"
        )
    return 0.25 * np.cos(np.pi * age_gaps) + 0.75


def _as_float64(values):
    if isinstance(values, paddle.Tensor):
        values = values.numpy()
    return np.asarray(values, dtype=np.float64)


def freeze(layer):
    """Put `layer` in eval mode and stop gradients to its parameters."""
    layer.eval()
    for param in layer.parameters():
        param.stop_gradient = True
    return layer


class IDLoss(nn.Layer):
    """Identity loss of SAM on a frozen face embedding network.

    The backbone runs in eval mode even after a parent layer's .train() (Paddle sets the
    flag on every sublayer), because its BatchNorm statistics and dropout must not change.
    """

    def __init__(self, backbone):
        super().__init__()
        self.facenet = freeze(backbone)

    def forward(self, y_hat, y, x, weights=None, reference_feats=None):
        """Return (loss, logs) for outputs y_hat, targets y and inputs x, all [B, 3, 256, 256].

        `weights` [B] (see age_gap_weights) or None for the unweighted loss. The loss is a
        scalar float32 tensor with a gradient to y_hat only. `logs` contains floats: loss_id,
        id_improve (mean diff_target - diff_views) and per-sample lists diff_target,
        diff_input, diff_views and id_weights.
        """
        if self.facenet.training:
            self.facenet.eval()

        batch_size = y_hat.shape[0]
        y_hat_feats = extract_feats(self.facenet, y_hat)
        # reference_feats = (embeddings of y, embeddings of x), when the caller computed them once.
        y_feats, x_feats = reference_feats if reference_feats is not None else self.reference_feats(y, x)

        diff_target = paired_similarity(y_hat_feats, y_feats)  # [B]
        weight_values = np.ones(batch_size) if weights is None else _as_float64(weights)
        if weight_values.shape != (batch_size,):
            raise ValueError(f"weights must have shape [{batch_size}], got {list(weight_values.shape)}")

        weight_tensor = paddle.to_tensor(weight_values.astype(np.float32), place=y_hat.place)
        loss = (weight_tensor * (1.0 - diff_target)).sum() / batch_size

        diff_input = paired_similarity(y_hat_feats.detach(), x_feats)
        diff_views = paired_similarity(y_feats, x_feats)
        logs = similarity_logs(loss, diff_target, diff_input, diff_views, weight_values)
        return loss, logs

    def reference_feats(self, y, x):
        """Return the embeddings of y and x without gradient, in one backbone pass."""
        with paddle.no_grad():
            if y is x:
                y_feats = extract_feats(self.facenet, y)
                return y_feats, y_feats
            both_feats = extract_feats(self.facenet, paddle.concat([y, x], axis=0))
            return both_feats.chunk(2, axis=0)


def paired_similarity(feats_a, feats_b):
    """Return the per-sample dot products [B] of two l2-normalised embedding batches [B, E]."""
    return (feats_a * feats_b).sum(axis=1)


def similarity_logs(loss, diff_target, diff_input, diff_views, weight_values):
    """Copy the loss and similarities to the host as Python floats."""
    per_sample = paddle.stack([diff_target.detach(), diff_input, diff_views]).numpy().astype(np.float64)
    diff_target_values, diff_input_values, diff_views_values = per_sample
    return {
        "loss_id": float(loss.detach().numpy()),
        "id_improve": float(np.mean(diff_target_values - diff_views_values)),
        "diff_target": diff_target_values.tolist(),
        "diff_input": diff_input_values.tolist(),
        "diff_views": diff_views_values.tolist(),
        "id_weights": weight_values.tolist(),
    }


def id_embedding(backbone, aligned_faces):
    """Return l2-normalised embeddings [N, E] of aligned 112x112 faces [N, 3, 112, 112] in [-1, 1].

    Puts `backbone` in eval mode and runs it without gradient. The evaluation calls it with
    CurricularFace IR-101 on MTCNN-aligned crops.
    """
    if aligned_faces.ndim != 4 or list(aligned_faces.shape[1:]) != [3, EMBEDDING_INPUT_SIZE, EMBEDDING_INPUT_SIZE]:
        raise ValueError(
            f"id_embedding expects aligned faces [N, 3, {EMBEDDING_INPUT_SIZE}, {EMBEDDING_INPUT_SIZE}], "
            f"got {list(aligned_faces.shape)}; align the faces with MTCNN first"
        )
    backbone.eval()
    with paddle.no_grad():
        return backbone(aligned_faces)
