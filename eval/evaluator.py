"""Score SAM on a test set at fixed target ages, split across ranks, gathered on every rank.

Each output is saved-image exact: it is turned into uint8 the way SAM writes its outputs (clip,
scale, truncate) before it is scored, so the scores equal those of folder mode on the images
launch/infer.py writes. The reference of every score is the input image itself.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import paddle

from eval.gather import run_on_every_rank
from eval.metrics import MetricNetworks, MetricPlan, id_similarity, lpips_distances, mse_per_image, predicted_ages_years
from eval.samples import EvalImage, count_test_images, rank_indices, read_test_images, to_signed_chw
from pipeline.inference import age_images
from pipeline.models.sam import SAM
from pipeline.train.distributed import DistInfo
from pipeline.train.run_log import to_uint8_image

log = logging.getLogger("sam")

# Fields of every per-sample record; metrics that do not run leave theirs null.
RECORD_FIELDS = ("lpips", "mse", "id_similarity", "id_failure", "predicted_age", "age_error")


@dataclass
class GridRow:
    """One input and its outputs at every target age, as [H, W, 3] uint8 images, for report.html."""

    index: int
    key: str
    images: list[np.ndarray]


@dataclass
class EvalResult:
    """Per-sample records of the whole test set (sorted by position, then target age) and the grid."""

    records: list[dict]
    grid: list[GridRow]
    num_images: int
    elapsed_sec: float
    world_size: int


def batches(images: Iterable[EvalImage], batch_size: int) -> Iterator[list[EvalImage]]:
    batch: list[EvalImage] = []
    for image in images:
        batch.append(image)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def outputs_as_saved(aged_img: paddle.Tensor) -> list[np.ndarray]:
    """Return each output [B, 3, 256, 256] as the [256, 256, 3] uint8 image SAM would save."""
    return [to_uint8_image(img) for img in aged_img.numpy()]


def to_tensor_batch(images_u8: list[np.ndarray]) -> paddle.Tensor:
    return paddle.to_tensor(np.stack([to_signed_chw(pixels) for pixels in images_u8]))  # [B, 3, H, W]


class Evaluator:
    """Age test images to each target age and score every output against its input.

    Args:
        sam: the model, put in eval mode by the caller.
        networks, plan: the metric networks and which metrics run (eval.metrics).
        ages: target ages in years.
        batch_size: images per forward pass.
        log_progress: log a line after every batch.
    """

    def __init__(self, sam: SAM, networks: MetricNetworks, plan: MetricPlan, ages: list[int], batch_size: int,
                 log_progress: bool = True):
        self.sam = sam
        self.log_progress = log_progress
        self.networks = networks
        self.plan = plan
        self.ages = list(ages)
        self.batch_size = batch_size

    def score_batch(self, batch: list[EvalImage], grid_count: int) -> tuple[list[dict], list[GridRow]]:
        """Return the records of a batch at every age, and grid rows for images at positions < grid_count."""
        inputs_u8 = [image.pixels for image in batch]
        src_img = to_tensor_batch(inputs_u8)
        input_faces = self.networks.faces.embed(inputs_u8) if self.plan.runs("id") else None
        records: list[dict] = []
        grid = {image.index: GridRow(image.index, image.key, [image.pixels])
                for image in batch if image.index < grid_count}

        for age in self.ages:
            # Render the outputs, then score them as the uint8 images SAM would save.
            outputs_u8 = outputs_as_saved(age_images(self.sam, src_img, age))
            out_img = to_tensor_batch(outputs_u8)
            scores = self._score_outputs(out_img, src_img, outputs_u8, input_faces, age)
            for row, image in enumerate(batch):
                records.append({"index": image.index, "key": image.key, "target_age": age,
                                **{name: values[row] for name, values in scores.items()}})
                if image.index in grid:
                    grid[image.index].images.append(outputs_u8[row])
        return records, list(grid.values())

    def _score_outputs(self, out_img, src_img, outputs_u8, input_faces, age) -> dict[str, list]:
        """Return {field: one value per image}; fields of metrics that do not run are all None."""
        batch_size = out_img.shape[0]
        scores: dict[str, list] = {name: [None] * batch_size for name in RECORD_FIELDS}
        if self.plan.runs("lpips"):
            scores["lpips"] = lpips_distances(self.networks.lpips, out_img, src_img).tolist()
        if self.plan.runs("mse"):
            scores["mse"] = mse_per_image(out_img, src_img).tolist()
        if self.plan.runs("id"):
            output_faces = self.networks.faces.embed(outputs_u8)
            pairs = [id_similarity(out, inp, "output", "input") for out, inp in zip(output_faces, input_faces)]
            scores["id_similarity"] = [value for value, _ in pairs]
            scores["id_failure"] = [reason for _, reason in pairs]
        if self.plan.runs("age"):
            predicted = predicted_ages_years(self.networks.dex, out_img)
            scores["predicted_age"] = predicted.tolist()
            scores["age_error"] = np.abs(predicted - age).tolist()
        return scores

    def score_images(self, images: Iterable[EvalImage], grid_count: int,
                     total: int) -> tuple[list[dict], list[GridRow]]:
        """Score a rank's share of the test set; the progress lines count this rank's images only."""
        records: list[dict] = []
        grid: list[GridRow] = []
        done = 0
        for batch in batches(images, self.batch_size):
            batch_records, batch_grid = self.score_batch(batch, grid_count)
            records.extend(batch_records)
            grid.extend(batch_grid)
            done += len(batch)
            if self.log_progress:
                log.info("scored %d/%d images of this rank at %d ages", done, total, len(self.ages))
        return records, grid

    def run(self, shard_dir: str | Path, resolution: int, info: DistInfo, limit: int | None = None,
            grid_count: int = 0) -> EvalResult:
        """Score the first `limit` test images (all when None) across all ranks; every rank gets the result."""
        start = time.perf_counter()
        total = count_test_images(shard_dir, resolution)
        if limit is not None:
            total = min(total, limit)
        own = rank_indices(total, info.rank, info.world_size)

        def compute():
            images = read_test_images(shard_dir, resolution, own)
            return self.score_images(images, grid_count, len(own))

        gathered = run_on_every_rank(compute, info)
        records = sorted((r for rank_records, _ in gathered for r in rank_records),
                         key=lambda r: (r["index"], r["target_age"]))
        grid = sorted((row for _, rows in gathered for row in rows), key=lambda row: row.index)
        return EvalResult(records=records, grid=grid, num_images=total, elapsed_sec=time.perf_counter() - start,
                          world_size=info.world_size)
