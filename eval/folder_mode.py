"""Score a folder of generated images against a folder of ground truth, paired by file name.

As pixel2style2pixel's metric scripts do: LPIPS and MSE on both images resized to 256x256
(bilinear) in [-1, 1], and the ID similarity of the MTCNN-aligned faces of the images as read.
Files are paired by their path relative to each folder; names found on one side only are listed
in the report. Target and predicted ages do not apply, so their fields are absent.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from eval.evaluator import batches, to_tensor_batch
from eval.gather import run_on_every_rank
from eval.metrics import (MetricNetworks, MetricPlan, build_metric_networks, id_similarity, lpips_distances,
                          mse_per_image, plan_metrics)
from eval.report import REPORT_FORMAT, Grid, alignment_failures, describe_file, write_report
from eval.samples import rank_indices
from eval.summary import summarize
from pipeline.config import Config, config_to_dict
from pipeline.inference import IMAGE_SUFFIXES
from pipeline.train.distributed import DistInfo

log = logging.getLogger("sam")

FOLDER_METRICS = ("lpips", "mse", "id")
PIXEL_METRIC_SIZE_PX = 256
FOLDER_NOTES = [
    "Folder mode: target ages and predicted ages do not apply, so those fields are absent.",
    "LPIPS and MSE compare both images resized to 256x256 (bilinear) in [-1, 1].",
    "id_similarity aligns the images as read with MTCNN; it is null where MTCNN found no face, and such"
    " pairs are listed under the alignment failures and left out of the means.",
]


@dataclass(frozen=True)
class FilePair:
    index: int
    name: str  # path relative to both folders
    generated: Path
    ground_truth: Path


@dataclass
class Pairing:
    generated_dir: Path
    ground_truth_dir: Path
    pairs: list[FilePair]
    only_in_generated: list[str]
    only_in_ground_truth: list[str]


def image_names(folder: Path) -> dict[str, Path]:
    """Return {path relative to `folder`: path} for every image file under `folder`."""
    if not folder.is_dir():
        raise FileNotFoundError(f"folder {folder} not found")
    return {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*"))
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES}


def pair_files(generated_dir: str | Path, ground_truth_dir: str | Path) -> Pairing:
    """Pair the image files of two folders by relative path; list the names found on one side only."""
    generated = image_names(Path(generated_dir))
    ground_truth = image_names(Path(ground_truth_dir))
    common = sorted(set(generated) & set(ground_truth))
    if not common:
        raise ValueError(
            f"no image file name appears in both --generated {generated_dir} ({len(generated)} images) and "
            f"--ground-truth {ground_truth_dir} ({len(ground_truth)} images); pairs are matched by file name"
        )
    return Pairing(
        generated_dir=Path(generated_dir),
        ground_truth_dir=Path(ground_truth_dir),
        pairs=[FilePair(i, name, generated[name], ground_truth[name]) for i, name in enumerate(common)],
        only_in_generated=sorted(set(generated) - set(ground_truth)),
        only_in_ground_truth=sorted(set(ground_truth) - set(generated)),
    )


def read_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"), dtype=np.uint8)


def resize_for_pixel_metrics(pixels: np.ndarray) -> np.ndarray:
    if pixels.shape[:2] == (PIXEL_METRIC_SIZE_PX, PIXEL_METRIC_SIZE_PX):
        return pixels
    resized = Image.fromarray(pixels).resize((PIXEL_METRIC_SIZE_PX, PIXEL_METRIC_SIZE_PX), Image.BILINEAR)
    return np.asarray(resized, dtype=np.uint8)


def score_pairs(pairs: list[FilePair], networks: MetricNetworks, plan: MetricPlan) -> list[dict]:
    """Return one record per pair with the computed metrics (null for the others)."""
    generated = [read_rgb(pair.generated) for pair in pairs]
    ground_truth = [read_rgb(pair.ground_truth) for pair in pairs]
    generated_256 = to_tensor_batch([resize_for_pixel_metrics(p) for p in generated])
    ground_truth_256 = to_tensor_batch([resize_for_pixel_metrics(p) for p in ground_truth])
    scores: dict[str, list] = {name: [None] * len(pairs) for name in ("lpips", "mse", "id_similarity", "id_failure")}
    if plan.runs("lpips"):
        scores["lpips"] = lpips_distances(networks.lpips, generated_256, ground_truth_256).tolist()
    if plan.runs("mse"):
        scores["mse"] = mse_per_image(generated_256, ground_truth_256).tolist()
    if plan.runs("id"):
        similarities = [id_similarity(gen, ref, "generated image", "ground-truth image")
                        for gen, ref in zip(networks.faces.embed(generated), networks.faces.embed(ground_truth))]
        scores["id_similarity"] = [value for value, _ in similarities]
        scores["id_failure"] = [reason for _, reason in similarities]
    return [{"index": pair.index, "key": pair.name, **{name: values[row] for name, values in scores.items()}}
            for row, pair in enumerate(pairs)]


def grid_rows(pairs: list[FilePair]) -> list[tuple[str, list[np.ndarray]]]:
    return [(pair.name, [resize_for_pixel_metrics(read_rgb(pair.generated)),
                         resize_for_pixel_metrics(read_rgb(pair.ground_truth))]) for pair in pairs]


def build_folder_report(cfg: Config, config_dict: dict, pairing: Pairing, plan: MetricPlan, records: list[dict],
                        world_size: int, elapsed_sec: float) -> dict:
    fields = plan.fields()
    return {
        "format": REPORT_FORMAT,
        "mode": "folders",
        "generated_dir": str(pairing.generated_dir),
        "ground_truth_dir": str(pairing.ground_truth_dir),
        "num_pairs": len(pairing.pairs),
        "target_ages": None,
        "world_size": world_size,
        "elapsed_sec": round(elapsed_sec, 2),
        "metrics": {"computed": plan.computed, "skipped": plan.skipped},
        "fields": fields,
        "notes": FOLDER_NOTES,
        "unmatched": {"only_in_generated": pairing.only_in_generated,
                      "only_in_ground_truth": pairing.only_in_ground_truth},
        "summary": summarize(records, fields, None),
        "alignment_failures": alignment_failures(records) if plan.runs("id") else None,
        "samples": records,
        "weights": [describe_file(f"weights.{option}", getattr(cfg.weights, option))
                    for option in plan.weight_options()],
        "config": config_dict,
    }


def evaluate_folders(cfg: Config, generated_dir: str, ground_truth_dir: str, metrics: list[str], info: DistInfo,
                     output_dir: str | None = None) -> tuple[Path | None, Pairing]:
    """Score the paired files across all ranks; rank 0 writes the report. Return (report folder or None, pairing)."""
    start = time.perf_counter()
    pairing = pair_files(generated_dir, ground_truth_dir)
    config_dict = config_to_dict(cfg)
    plan = plan_metrics(cfg, metrics)
    networks = build_metric_networks(cfg, plan)
    own = [pairing.pairs[i] for i in rank_indices(len(pairing.pairs), info.rank, info.world_size)]

    def compute():
        records = []
        for batch in batches(own, cfg.eval.batch_size):
            records.extend(score_pairs(batch, networks, plan))
            log.info("scored %d/%d pairs of this rank", len(records), len(own))
        return records

    # Score every rank's share, then write the report from rank 0.
    gathered = run_on_every_rank(compute, info)
    if not info.is_main:
        return None, pairing
    records = sorted((r for rank_records in gathered for r in rank_records), key=lambda r: r["index"])
    report = build_folder_report(cfg, config_dict, pairing, plan, records, info.world_size,
                                 time.perf_counter() - start)
    folder = Path(output_dir) if output_dir else Path(cfg.output_dir) / "eval" / Path(generated_dir).resolve().name
    grid = Grid("Generated beside ground truth", ["generated", "ground truth"],
                grid_rows(pairing.pairs[: cfg.eval.num_grid_images]))
    write_report(folder, report, grid)
    log.info("wrote %s", folder / "report.html")
    return folder, pairing
