"""Evaluate a SAM checkpoint on data.test_shards and write its report to <output_dir>/eval/<name>/."""

from __future__ import annotations

import logging
from pathlib import Path

from eval.evaluator import EvalResult, Evaluator
from eval.metrics import METRICS, MetricPlan, build_metric_networks, plan_metrics
from eval.report import REPORT_FORMAT, Grid, alignment_failures, checkpoint_files, describe_file, write_report
from eval.summary import summarize
from pipeline.config import Config, ConfigError, config_to_dict
from pipeline.data.stream import read_shard_index
from pipeline.inference import load_sam, resolve_checkpoint
from pipeline.train.distributed import DistInfo

log = logging.getLogger("sam")

CHECKPOINT_NOTES = [
    "Each output is compared with its own input at 256x256 in [-1, 1]; the generator noise is fixed.",
    "Outputs are scored as saved images: clipped, scaled to uint8 and truncated as SAM writes them.",
    "age_error is |predicted_age - target_age| in years; predicted_age is the DEX expected age.",
    "id_similarity is null where MTCNN found no face in the input or the output; such samples are listed"
    " under the alignment failures and left out of the means.",
]


def checkpoint_name(checkpoint: str | Path) -> str:
    """Return the report folder name: the checkpoint folder's name (step_<N>) or the file's stem."""
    path = Path(checkpoint)
    return path.stem if path.is_file() else path.name


def sam_weight_options(cfg: Config, checkpoint: str | Path) -> list[str]:
    """Return the weights.* keys SAM is built from besides the checkpoint (none for a converted SAM file)."""
    if Path(checkpoint).is_file():
        return []
    if cfg.weights.sam:
        return ["sam"]
    options = ["stylegan", "irse50"]
    if cfg.model.start_from_encoded_w_plus:
        options.append("psp_encoder")
    return options


def weight_files(cfg: Config, checkpoint: str | Path, plan: MetricPlan) -> list[dict]:
    """Describe every weight file the evaluation reads, with its sha256 (checkpoint files included)."""
    files = checkpoint_files(checkpoint)
    for option in sam_weight_options(cfg, checkpoint) + plan.weight_options():
        path = getattr(cfg.weights, option)
        if path:
            files.append(describe_file(f"weights.{option}", path))
        else:
            files.append({"option": f"weights.{option}", "path": "none: random weights", "sha256": ""})
    return files


def build_checkpoint_report(cfg: Config, config_dict: dict, checkpoint: str | Path, plan: MetricPlan,
                            result: EvalResult, weights: list[dict]) -> dict:
    """Assemble report.json; `weights` describes the weight files as they were when loaded."""
    fields = plan.fields()
    return {
        "format": REPORT_FORMAT,
        "mode": "checkpoint",
        "checkpoint": str(checkpoint),
        "checkpoint_name": checkpoint_name(checkpoint),
        "test_shards": str(cfg.data.test_shards),
        "num_images": result.num_images,
        "target_ages": list(cfg.eval.ages),
        "world_size": result.world_size,
        "elapsed_sec": round(result.elapsed_sec, 2),
        "metrics": {"computed": plan.computed, "skipped": plan.skipped},
        "fields": fields,
        "notes": CHECKPOINT_NOTES,
        "summary": summarize(result.records, fields, cfg.eval.ages),
        "alignment_failures": alignment_failures(result.records) if plan.runs("id") else None,
        "samples": result.records,
        "weights": weights,
        "config": config_dict,
    }


def checkpoint_grid(result: EvalResult, ages: list[int]) -> Grid:
    return Grid("Inputs across target ages", ["input"] + [f"age {age}" for age in ages],
                [(row.key, row.images) for row in result.grid])


def evaluate_checkpoint(cfg: Config, checkpoint: str, info: DistInfo,
                        metrics: tuple[str, ...] | list[str] = METRICS) -> Path | None:
    """Score `checkpoint` on data.test_shards across all ranks; rank 0 writes the report and returns its folder."""
    if not cfg.data.test_shards:
        raise ConfigError("data.test_shards is not set; point it at test shards built by shards/build.py")
    read_shard_index(cfg.data.test_shards, cfg.data.resolution, option="data.test_shards")  # before any network
    checkpoint = resolve_checkpoint(cfg, checkpoint)
    config_dict = config_to_dict(cfg)
    plan = plan_metrics(cfg, list(metrics))

    # Hash the weight files, then build the model and the metric networks from them. The files are
    # hashed first because a training run may prune the checkpoint while the evaluation runs.
    weights = weight_files(cfg, checkpoint, plan)
    sam = load_sam(cfg, checkpoint)
    networks = build_metric_networks(cfg, plan)
    evaluator = Evaluator(sam, networks, plan, cfg.eval.ages, cfg.eval.batch_size)

    # Score the test set on every rank, then write the report from rank 0.
    result = evaluator.run(cfg.data.test_shards, cfg.data.resolution, info, grid_count=cfg.eval.num_grid_images)
    log.info("scored %d images at %d ages on %d rank(s) in %.1f s", result.num_images, len(cfg.eval.ages),
             info.world_size, result.elapsed_sec)
    if not info.is_main:
        return None
    report = build_checkpoint_report(cfg, config_dict, checkpoint, plan, result, weights)
    folder = write_report(Path(cfg.output_dir) / "eval" / checkpoint_name(checkpoint), report,
                          checkpoint_grid(result, cfg.eval.ages))
    log.info("wrote %s", folder / "report.html")
    return folder
