"""Validation during training: the evaluator on a fixed subset of the test set, on every rank.

The subset is the first train.val_images samples of data.test_shards in index order, each aged to
every age of eval.ages with the generator's fixed noise, so two runs of the same weights give the
same numbers. Ranks split the subset by position and all of them receive the summary.

Use from the trainer (every rank):
    validator = Validator(cfg, dist_info, sam, lpips=parts.lpips, dex=parts.aging.dex)  # once
    values = validator.run()        # {"lpips": ..., "mse": ..., "id_similarity": ..., ...}
    if is_improvement(cfg.train.best_metric, values[cfg.train.best_metric], best): ...
"""

from __future__ import annotations

import logging

import paddle

from eval.evaluator import Evaluator
from eval.metrics import METRICS, build_metric_networks, plan_metrics
from eval.samples import count_test_images
from eval.summary import summarize
from pipeline.config import Config, ConfigError
from pipeline.models.sam import SAM
from pipeline.train.distributed import DistInfo

log = logging.getLogger("sam")

# Validation metrics where a larger value is better; for every other one smaller is better.
HIGHER_IS_BETTER = frozenset({"id_similarity"})
# The metric (eval.metrics name) behind each train.best_metric value.
BEST_METRIC_SOURCES = {"lpips": "lpips", "mse": "mse", "id_similarity": "id"}


def is_improvement(metric: str, value: float, best: float | None) -> bool:
    """Return True when `value` of `metric` beats `best` (None: no best yet)."""
    if best is None:
        return True
    return value > best if metric in HIGHER_IS_BETTER else value < best


class Validator:
    """Score the trainer's SAM on the fixed validation subset; call run() on every rank together.

    Args:
        cfg: the run config (data.test_shards, train.val_images, eval.ages, eval.batch_size,
            eval.on_missing_weights and the weights.* files of the metric networks).
        dist_info: this rank and the world size.
        sam: the trainer's model (not the data-parallel wrapper); run() switches it to eval mode and
            back to SAM.set_train_mode() when it was training.
        lpips, dex: the trainer's LPIPS and DEX networks, reused when their weights.* file is set.

    Raises MissingWeightsError or ValueError at construction, naming the config key, so a bad
    validation set-up stops the run before the first step.
    """

    def __init__(self, cfg: Config, dist_info: DistInfo, sam: SAM, lpips: paddle.nn.Layer | None = None,
                 dex: paddle.nn.Layer | None = None):
        if not cfg.data.test_shards:
            raise ConfigError("validation needs data.test_shards; set it, or disable validation with "
                             "train.val_interval=0")
        if cfg.train.val_images < 1:
            raise ConfigError("train.val_images is 0; set it to at least 1, or disable validation with "
                             "train.val_interval=0")
        self.cfg = cfg
        self.dist_info = dist_info
        self.sam = sam
        self.plan = plan_metrics(cfg, list(METRICS))
        self._check_best_metric()
        self.num_images = min(cfg.train.val_images, count_test_images(cfg.data.test_shards, cfg.data.resolution))
        networks = build_metric_networks(cfg, self.plan, lpips=lpips, dex=dex)
        self.evaluator = Evaluator(sam, networks, self.plan, cfg.eval.ages, cfg.eval.batch_size,
                                   log_progress=False)
        log.info("validation: %d images of %s at ages %s, metrics %s", self.num_images, cfg.data.test_shards,
                 cfg.eval.ages, ", ".join(self.plan.computed))

    def _check_best_metric(self) -> None:
        metric = BEST_METRIC_SOURCES[self.cfg.train.best_metric]
        if metric in self.plan.skipped:
            raise ConfigError(
                f"train.best_metric={self.cfg.train.best_metric} cannot be computed: {self.plan.skipped[metric]}; "
                "set the weights file or choose another train.best_metric (mse needs no weights)"
            )

    def run(self) -> dict[str, float]:
        """Score the subset on all ranks and return the overall means on every rank.

        Keys: lpips, mse, id_similarity, predicted_age, predicted_age_error (mean |predicted - target|
        in years) for the metrics that run and have at least one value, plus id_alignment_failures
        (samples without a face, when the ID metric runs) and images.
        """
        was_training = self.sam.training
        self.sam.eval()
        try:
            result = self.evaluator.run(self.cfg.data.test_shards, self.cfg.data.resolution, self.dist_info,
                                        limit=self.num_images)
        finally:
            if was_training:
                self.sam.set_train_mode()
        overall = summarize(result.records, self.plan.fields(), None)["overall"]
        values = {name: stats["mean"] for name, stats in overall.items() if stats["mean"] is not None}
        if "age_error" in values:
            values["predicted_age_error"] = values.pop("age_error")
        if self.plan.runs("id"):
            values["id_alignment_failures"] = float(overall["id_similarity"]["missing"])
        values["images"] = float(result.num_images)
        return values
