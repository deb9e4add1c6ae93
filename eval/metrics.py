"""Evaluation metrics of the pSp/SAM protocol and the networks behind them.

Per generated image and its reference (the input image, or the ground truth in folder mode):
  lpips          LPIPS (AlexNet) distance at 256x256, images in [-1, 1]
  mse            mean squared error over all pixels and channels at 256x256, images in [-1, 1]
  id_similarity  cosine of the CurricularFace IR-101 embeddings of the MTCNN-aligned 112x112
                 faces (crop to [-1, 1], embeddings l2-normalised, then a dot product), as
                 pixel2style2pixel's ID evaluation computes it; null when MTCNN finds no face
  predicted_age  the DEX classifier's expected age of the generated image, in years
  age_error      |predicted_age - target_age|, in years

A metric whose network has no weights file is skipped with a stated reason, or raises
MissingWeightsError naming the config key, as eval.on_missing_weights selects.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from itertools import accumulate

import numpy as np
import paddle
from PIL import Image

from pipeline.checkpoint.pretrained import load_weights, read_weights
from pipeline.config import Config
from pipeline.losses.aging import estimate_ages
from pipeline.losses.identity import id_embedding
from pipeline.models.dex_vgg import DexVGG
from pipeline.models.irse import UNITS_PER_STAGE, Backbone
from pipeline.models.lpips import LPIPS
from pipeline.models.mtcnn import MTCNN, ONet, PNet, RNet

log = logging.getLogger("sam")

# Metric names accepted by --metrics, in report order.
METRICS = ("lpips", "mse", "id", "age")
# Per-sample report fields each metric fills.
METRIC_FIELDS = {
    "lpips": ("lpips",),
    "mse": ("mse",),
    "id": ("id_similarity",),
    "age": ("predicted_age", "age_error"),
}
# weights.* keys each metric needs, with the network they fill.
REQUIRED_WEIGHTS = {
    "lpips": (("lpips", "LPIPS (AlexNet)"),),
    "mse": (),
    "id": (("curricularface", "CurricularFace IR-101"), ("mtcnn", "MTCNN")),
    "age": (("dex", "DEX age classifier"),),
}
IR101_DEPTH = 100


class MissingWeightsError(ValueError):
    """A requested metric needs a network whose weights.* key is null, with eval.on_missing_weights=error."""


# ---------------------------------------------------------------------------------------------
# Which metrics run.


@dataclass
class MetricPlan:
    """The metrics that run and, for each skipped one, why."""

    computed: list[str]
    skipped: dict[str, str] = field(default_factory=dict)

    def runs(self, metric: str) -> bool:
        return metric in self.computed

    def fields(self) -> list[str]:
        """Return the per-sample fields of the computed metrics, in report order."""
        return [name for metric in self.computed for name in METRIC_FIELDS[metric]]

    def weight_options(self) -> list[str]:
        """Return the weights.* keys (without the prefix) that the computed metrics read."""
        return [key for metric in self.computed for key, _ in REQUIRED_WEIGHTS[metric]]


def parse_metric_names(text: str, allowed: tuple[str, ...] = METRICS) -> list[str]:
    """Turn 'lpips,mse,id' into a list, raising ValueError on an unknown or empty name."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name not in allowed]
    if unknown or not names:
        raise ValueError(f"invalid --metrics {text!r}: expected a comma-separated subset of {','.join(allowed)}")
    return [metric for metric in allowed if metric in names]


def plan_metrics(cfg: Config, requested: list[str]) -> MetricPlan:
    """Decide which requested metrics run, applying eval.on_missing_weights to those without weights."""
    plan = MetricPlan(computed=[])
    for metric in requested:
        missing = [(key, network) for key, network in REQUIRED_WEIGHTS[metric] if not getattr(cfg.weights, key)]
        if not missing:
            plan.computed.append(metric)
            continue
        keys = " and ".join(f"weights.{key}" for key, _ in missing)
        verb = "is" if len(missing) == 1 else "are"
        networks = " and ".join(network for _, network in missing)
        if cfg.eval.on_missing_weights == "error":
            raise MissingWeightsError(
                f"metric {metric!r} needs {networks} weights but {keys} {verb} null; set {keys} to the converted file "
                f"(checkpoints/convert.py), leave the metric out with --metrics, or set eval.on_missing_weights=skip"
            )
        plan.skipped[metric] = (f"skipped because {keys} {verb} null "
                                f"(no {networks} weights; eval.on_missing_weights=skip)")
        log.warning("metric %s %s", metric, plan.skipped[metric])
    return plan


# ---------------------------------------------------------------------------------------------
# Networks.


@dataclass
class MetricNetworks:
    """The frozen networks of the computed metrics; None for metrics that do not run."""

    lpips: LPIPS | None = None
    faces: "FaceEmbedder | None" = None
    dex: paddle.nn.Layer | None = None


def build_lpips_metric(path: str) -> LPIPS:
    lpips = LPIPS("alex")
    load_weights(lpips, path, "lpips", config_option="weights.lpips")
    lpips.freeze()
    return lpips


def build_dex_metric(cfg: Config) -> DexVGG:
    dex = DexVGG(conv_widths=tuple(cfg.model.dex_conv_widths), fc_width=cfg.model.dex_fc_width)
    load_weights(dex, cfg.weights.dex, "dex", config_option="weights.dex")
    dex.eval()
    return dex


def ir101_sizes(path: str) -> tuple[tuple[int, ...], int]:
    """Read the stage widths and embedding size of an IR-101 weights file from its tensor shapes.

    The released CurricularFace file gives (64, 128, 256, 512) and 512; reading them from the file
    lets reduced-width test networks load through the same path. The strict load that follows
    still checks every key and shape.
    """
    stage_starts = [0, *accumulate(UNITS_PER_STAGE[IR101_DEPTH][:-1])]  # first unit of each stage
    conv_keys = [f"body.{unit}.res_layer.1.weight" for unit in stage_starts]
    embedding_key = "output_layer.4._mean"
    needed_keys = set(conv_keys) | {embedding_key}
    tensors, _ = read_weights(path, "curricularface", config_option="weights.curricularface",
                              keys=lambda key: key in needed_keys)
    absent = sorted(needed_keys - set(tensors))
    if absent:
        raise ValueError(
            f"weights.curricularface={path} lacks {absent}, so it is not an IR-101 backbone; "
            "convert CurricularFace_Backbone.pth with checkpoints/convert.py"
        )
    stage_widths = tuple(int(tensors[key].shape[0]) for key in conv_keys)
    return stage_widths, int(tensors[embedding_key].shape[0])


def build_curricularface(path: str) -> Backbone:
    stage_widths, embedding_size = ir101_sizes(path)
    backbone = Backbone(112, IR101_DEPTH, "ir", 0.4, affine=False, stage_widths=stage_widths,
                        embedding_size=embedding_size)
    load_weights(backbone, path, "curricularface", config_option="weights.curricularface")
    backbone.eval()
    return backbone


def build_mtcnn(path: str) -> MTCNN:
    nets = {"pnet": PNet(), "rnet": RNet(), "onet": ONet()}
    for name, net in nets.items():
        load_weights(net, path, "mtcnn", config_option="weights.mtcnn", prefix=f"{name}.")
    return MTCNN(nets["pnet"], nets["rnet"], nets["onet"])


def build_metric_networks(cfg: Config, plan: MetricPlan, lpips: LPIPS | None = None,
                          dex: paddle.nn.Layer | None = None) -> MetricNetworks:
    """Load the networks of the computed metrics; `lpips` and `dex` reuse networks built from the same files."""
    networks = MetricNetworks()
    if plan.runs("lpips"):
        networks.lpips = lpips if lpips is not None else build_lpips_metric(cfg.weights.lpips)
    if plan.runs("id"):
        networks.faces = FaceEmbedder(build_mtcnn(cfg.weights.mtcnn), build_curricularface(cfg.weights.curricularface))
    if plan.runs("age"):
        networks.dex = dex if dex is not None else build_dex_metric(cfg)
    return networks


# ---------------------------------------------------------------------------------------------
# Scores of one batch.


def lpips_distances(lpips: LPIPS, generated: paddle.Tensor, reference: paddle.Tensor) -> np.ndarray:
    """Return the LPIPS distance of each pair of [B, 3, 256, 256] images in [-1, 1], float64 [B].

    Each pair runs alone: float32 kernels round differently with the batch size, and the score of
    an image must not depend on which images share its batch (that differs with the rank count).
    """
    with paddle.no_grad():
        return np.concatenate([lpips(generated[i:i + 1], reference[i:i + 1]).numpy()
                               for i in range(generated.shape[0])]).astype(np.float64)


def mse_per_image(generated: paddle.Tensor, reference: paddle.Tensor) -> np.ndarray:
    """Return the mean squared error of each pair over pixels and channels, float64 [B]."""
    with paddle.no_grad():
        squared_error = ((generated - reference) ** 2).astype("float64")
        # The sum runs in float64: a float32 sum over 3 x 256 x 256 values on the CPU drifts by ~0.2%.
        return squared_error.mean(axis=[1, 2, 3]).numpy()


def predicted_ages_years(dex: paddle.nn.Layer, images: paddle.Tensor) -> np.ndarray:
    """Return DEX's expected age of each [B, 3, H, W] image in [-1, 1], in years, float64 [B]."""
    with paddle.no_grad():
        # One image at a time, for the reason lpips_distances gives.
        return np.concatenate([estimate_ages(dex, images[i:i + 1]).numpy()
                               for i in range(images.shape[0])]).astype(np.float64)


def crop_to_signed(crop: Image.Image) -> np.ndarray:
    """Turn a 112x112 RGB crop into float32 [3, 112, 112] in [-1, 1] (ToTensor + Normalize(0.5, 0.5))."""
    pixels = np.asarray(crop, dtype=np.float32) / 255.0
    return ((pixels - 0.5) / 0.5).transpose(2, 0, 1)


class FaceEmbedder:
    """MTCNN alignment followed by the IR-101 embedding, for the ID similarity."""

    def __init__(self, mtcnn: MTCNN, backbone: Backbone):
        self.mtcnn = mtcnn
        self.backbone = backbone

    def embed(self, images_u8: list[np.ndarray]) -> list[np.ndarray | None]:
        """Return the l2-normalised embedding of each [H, W, 3] uint8 image, or None where MTCNN finds no face."""
        crops = [self.mtcnn.align(Image.fromarray(pixels))[0] for pixels in images_u8]
        found = [i for i, crop in enumerate(crops) if crop is not None]
        embeddings: list[np.ndarray | None] = [None] * len(images_u8)
        if found:
            faces = paddle.to_tensor(np.stack([crop_to_signed(crops[i]) for i in found]))  # [N, 3, 112, 112]
            vectors = id_embedding(self.backbone, faces).numpy().astype(np.float64)  # [N, E]
            for row, i in enumerate(found):
                embeddings[i] = vectors[row]
        return embeddings


def id_similarity(generated: np.ndarray | None, reference: np.ndarray | None,
                  generated_name: str, reference_name: str) -> tuple[float | None, str | None]:
    """Return (dot product of two embeddings, None), or (None, the reason) when a face is missing."""
    missing = [name for name, vector in ((reference_name, reference), (generated_name, generated)) if vector is None]
    if missing:
        return None, "MTCNN found no face in the " + " and the ".join(missing)
    return float(np.dot(generated, reference)), None
