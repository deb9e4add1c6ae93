"""The SAM training loop: data-parallel age-encoder training with AMP, accumulation and resume."""

from __future__ import annotations

import logging
import math
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import paddle

from pipeline.config import Config, config_to_dict
from pipeline.data.stream import ShardStream, first_images, read_data_error, read_shard_index, shard_set_digest
from pipeline.losses.objective import SamObjective
from pipeline.models.sam import add_age_channel
from pipeline.train import checkpoint as ckpt
from pipeline.train.amp import AmpContext
from pipeline.train.components import Components, build_components, build_optimizer
from pipeline.train.distributed import (DistInfo, all_reduce_sum, barrier, grad_sync, unwrap_optimizer, wrap_model,
                                        wrap_optimizer)
from pipeline.train.run_log import RunLogger, image_grid, peak_memory_gib

log = logging.getLogger("sam")


class TrainingError(RuntimeError):
    """A failure that stops every rank of a run, named in the message."""


@dataclass
class TrainerState:
    """Everything besides weights and optimizer state that a resume needs."""

    step: int = 0
    images_seen: int = 0
    batches_seen: int = 0  # per rank, since the data stream started at epoch data_first_epoch
    data_first_epoch: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    data_errors: int = 0
    lineage: str = ""  # id of this line of steps; a fresh start gets a new one, a resume keeps it


@dataclass
class StepStats:
    """Sums over the steps since the last status line."""

    steps: int = 0
    sums: dict = field(default_factory=dict)
    data_wait_sec: float = 0.0
    start_time: float = field(default_factory=time.perf_counter)

    def add(self, terms: dict) -> None:
        for name, value in terms.items():
            self.sums[name] = self.sums.get(name, 0.0) + value


def _seeded_rng(*parts: int) -> np.random.Generator:
    return np.random.default_rng([p & 0xFFFFFFFF for p in parts])


def draw_target_ages(input_age: paddle.Tensor, rng: np.random.Generator, keep_prob: float):
    """Return (target_age [B], keep_input_age) as SAM draws them.

    With probability keep_prob the batch keeps each input's own estimated age. Otherwise each
    image gets a whole age drawn uniformly from 0..100 (inclusive), divided by 100.
    """
    keep_input_age = bool(rng.random() <= keep_prob)
    if keep_input_age:
        return input_age, True
    ages = rng.integers(0, 101, size=input_age.shape[0]).astype("float32") / 100.0
    return paddle.to_tensor(ages), False


def data_order(cfg: Config) -> dict:
    """Return the settings that fix which sample each batch holds; a resume keeps its position only if equal."""
    return {
        "data.train_shards": shard_set_digest(cfg.data.train_shards),  # content, not path
        "data.num_workers": cfg.data.num_workers,
        "data.shuffle_buffer": cfg.data.shuffle_buffer,
        "train.seed": cfg.train.seed,
    }


class Trainer:
    def __init__(self, cfg: Config, dist_info: DistInfo, resume: str = "auto"):
        self.cfg = cfg
        self.dist = dist_info
        self.output_dir = Path(cfg.output_dir)
        self.state = TrainerState()
        self.amp = AmpContext(cfg.amp)

        # Build the networks, the objective and the optimizer.
        paddle.seed(cfg.train.seed)
        self.parts: Components = build_components(cfg)
        self.sam = self.parts.sam
        self.encoder = wrap_model(self.sam.encoder, dist_info)
        self.optimizer = wrap_optimizer(build_optimizer(cfg, self.sam), dist_info)
        self.objective = SamObjective(cfg.loss, self.parts.id_loss, self.parts.lpips, self.parts.aging)

        # Resume from the newest intact checkpoint, or the one named. Newer checkpoints of an
        # abandoned run are set aside, so pruning never deletes what this run writes.
        self.resumed_from = ckpt.resolve_resume(resume, self.output_dir)
        if self.resumed_from is not None:
            self._load(self.resumed_from)
        if not self.state.lineage:
            self.state.lineage = f"{cfg.train.seed}-{int(time.time())}-{uuid.uuid4().hex[:8]}"
        barrier(dist_info)
        if dist_info.is_main:
            ckpt.set_aside_newer_checkpoints(self.output_dir, self.state.step, self.state.lineage)
        barrier(dist_info)

        self.stream = ShardStream(
            cfg.data.train_shards, resolution=cfg.data.resolution, rank=dist_info.rank,
            world_size=dist_info.world_size, seed=cfg.train.seed, batch_size=cfg.train.batch_size,
            num_workers=cfg.data.num_workers, shuffle_buffer=cfg.data.shuffle_buffer, flip_prob=cfg.data.flip_prob,
            first_epoch=self.state.data_first_epoch, skip_batches=self.state.batches_seen,
            on_error=cfg.data.on_error, error_dir=self.output_dir / "data_errors",
        )
        self.loader = paddle.io.DataLoader(
            self.stream, batch_size=cfg.train.batch_size, num_workers=cfg.data.num_workers, drop_last=True
        )
        self.logger = RunLogger(self.output_dir, dist_info.rank, cfg.train.max_steps, start_step=self.state.step,
                                lineage=self.state.lineage)
        self.validator = None
        if cfg.train.val_interval > 0:
            from eval.validation import Validator

            self.validator = Validator(cfg, dist_info, self.sam, lpips=self.parts.lpips, dex=self.parts.aging.dex)
        self.worker_errors: dict[int, int] = {}

    # ------------------------------------------------------------------------------------------
    # Checkpoints.

    def _model_state(self) -> dict:
        state = {f"encoder.{k}": v for k, v in self.sam.encoder.state_dict().items()}
        if self.sam.pretrained_encoder is not None:
            # The frozen pSp encoder's BatchNorm statistics drift in train mode, so they are saved too.
            state.update({f"pretrained_encoder.{k}": v for k, v in self.sam.pretrained_encoder.state_dict().items()
                          if k.endswith(("_mean", "_variance", "num_batches_tracked"))})
        return state

    def _trainer_state(self) -> dict:
        return {
            **self.state.__dict__,
            "world_size": self.dist.world_size,
            "batch_size": self.cfg.train.batch_size,
            "data_order": data_order(self.cfg),
            # Every random draw of a step (target ages, generator noise) is seeded from
            # (train.seed, rank, step), so the step number restores the random state exactly.
            "random_state": {"scheme": "reseeded every step from (train.seed, rank, step)",
                             "seed": self.cfg.train.seed},
        }

    def save(self, as_best: bool = False) -> None:
        """Write a checkpoint of the current step from rank 0; `as_best` also publishes it as best/."""
        if not self.dist.is_main:
            return
        path = ckpt.save_checkpoint(
            self.output_dir, self.state.step,
            model_state=self._model_state(),
            optimizer_state=unwrap_optimizer(self.optimizer).state_dict(),
            scaler_state=self.amp.state_dict(),
            trainer_state=self._trainer_state(),
            config=config_to_dict(self.cfg),
            keep=self.cfg.train.keep_checkpoints,
        )
        log.info("saved checkpoint %s", path)
        if as_best:
            best = ckpt.publish_best(self.output_dir, path)
            log.info("copied it to %s (%s %.4f)", best, self.cfg.train.best_metric, self.state.best_metric)

    def _load(self, folder: Path) -> None:
        data = ckpt.load_checkpoint(folder)
        saved = data["trainer_state"]
        if saved["world_size"] != self.dist.world_size or saved["batch_size"] != self.cfg.train.batch_size:
            raise ckpt.CheckpointError(
                f"checkpoint {folder} was written by {saved['world_size']} ranks with train.batch_size "
                f"{saved['batch_size']}, but this run has {self.dist.world_size} ranks and batch size "
                f"{self.cfg.train.batch_size}; the data position cannot carry over. Keep both equal or "
                "start a new output_dir"
            )
        self.parts.load_model_state(data["model"], source=str(folder))
        optimizer = unwrap_optimizer(self.optimizer)
        optimizer.set_state_dict(data["optimizer"])
        if optimizer.get_lr() != self.cfg.train.learning_rate:
            log.info("learning rate changes from %g (checkpoint) to %g (train.learning_rate)",
                     optimizer.get_lr(), self.cfg.train.learning_rate)
            optimizer.set_lr(self.cfg.train.learning_rate)
        self.amp.load_state_dict(data["scaler"])
        for key, default in TrainerState().__dict__.items():
            setattr(self.state, key, saved.get(key, default))
        self._continue_data_order(saved.get("data_order"))
        log.info("resumed from %s at step %d (%d images seen)", folder, self.state.step, self.state.images_seen)

    def _continue_data_order(self, saved_order: dict | None) -> None:
        """Keep the exact data position, or restart at the next epoch if the data order changed."""
        current = data_order(self.cfg)
        if saved_order == current:
            return
        changed = sorted(k for k in current if (saved_order or {}).get(k) != current[k])
        samples_per_epoch = sum(s.num_samples for s in read_shard_index(self.cfg.data.train_shards)) // self.dist.world_size
        epochs_done = self.state.data_first_epoch + self.state.batches_seen * self.cfg.train.batch_size // samples_per_epoch
        log.warning("the data order changed since the checkpoint (%s), so the exact position is lost; the stream "
                    "restarts at the start of epoch %d", ", ".join(changed), epochs_done + 1)
        self.state.data_first_epoch = epochs_done + 1
        self.state.batches_seen = 0

    # ------------------------------------------------------------------------------------------
    # One optimizer step.

    def _next_batch(self, batches) -> paddle.Tensor:
        """Fetch the next batch; if any rank's data failed, every rank raises together."""
        failure = None
        try:
            src_img, errors = next(batches)
        except Exception as exc:  # a worker's ShardReadError arrives wrapped by the DataLoader
            failure = exc
        # One small collective per micro-step keeps the ranks in step when one of them fails.
        failed_ranks = all_reduce_sum([1.0 if failure else 0.0], self.dist)[0]
        if failed_ranks:
            if failure is not None:
                # With loader workers, Paddle reports only that a worker failed; the worker wrote the reason.
                reason = read_data_error(self.output_dir / "data_errors", self.dist.rank) or str(failure)
                raise TrainingError(f"rank {self.dist.rank} failed to read training data: {reason}") from failure
            raise TrainingError(
                f"rank {self.dist.rank} stops because {int(failed_ranks)} other rank(s) failed to read training "
                "data; their log names the shard"
            )
        worker = self.state.batches_seen % max(self.cfg.data.num_workers, 1)
        self.worker_errors[worker] = int(errors.max())
        self.state.batches_seen += 1
        return src_img

    def _micro_step(self, src_img: paddle.Tensor, rng: np.random.Generator, sync: bool) -> dict:
        """Run the real and the cycle pass on one micro-batch and accumulate their gradients."""
        cfg = self.cfg
        scale = 1.0 / cfg.train.accumulate_steps

        # Estimate the input ages and draw the target ages.
        with paddle.no_grad():
            input_age = self.parts.aging.estimate_ages(src_img) / 100.0
        target_age, keep_input_age = draw_target_ages(input_age, rng, cfg.data.keep_input_age_prob)
        with self.amp.autocast():
            reference = self.objective.reference(src_img)  # shared by both passes

        # Real pass: age the input to the target age.
        with grad_sync(self.encoder, sync=False), self.amp.autocast():
            aged_img, w_plus = self.sam(add_age_channel(src_img, target_age), encoder=self.encoder)
            loss_real, terms = self.objective(
                src_img=src_img, out_img=aged_img, w_plus=w_plus, latent_avg=self.sam.latent_avg,
                target_age=target_age, input_age=input_age, keep_input_age=keep_input_age, pass_name="real",
                reference=reference)
        with grad_sync(self.encoder, sync=False):
            self.amp.scale(loss_real * scale).backward()

        # Cycle pass: take the detached output back to the input age.
        cycle_input = add_age_channel(aged_img.detach(), input_age)
        with grad_sync(self.encoder, sync=sync), self.amp.autocast():
            cycle_img, w_cycle = self.sam(cycle_input, encoder=self.encoder)
            loss_cycle, cycle_terms = self.objective(
                src_img=src_img, out_img=cycle_img, w_plus=w_cycle, latent_avg=self.sam.latent_avg,
                target_age=input_age, input_age=input_age, keep_input_age=keep_input_age, pass_name="cycle",
                reference=reference)
        with grad_sync(self.encoder, sync=sync):
            self.amp.scale(loss_cycle * scale).backward()

        terms.update(cycle_terms)
        terms["loss"] = (loss_real + loss_cycle).detach()
        return terms

    def train_step(self, batches) -> tuple[dict, float]:
        """Run one optimizer step over train.accumulate_steps micro-batches; return (terms, data wait s)."""
        cfg = self.cfg
        step_terms: dict = {}
        data_wait_sec = 0.0
        for micro in range(cfg.train.accumulate_steps):
            wait_start = time.perf_counter()
            src_img = self._next_batch(batches)
            data_wait_sec += time.perf_counter() - wait_start

            # Accumulate gradients; only the last micro-step's cycle backward all-reduces them.
            rng = _seeded_rng(cfg.train.seed, self.dist.rank, self.state.step, micro)
            paddle.seed(int(rng.integers(0, 2**62)))  # generator noise of this micro-step
            terms = self._micro_step(src_img, rng, sync=micro == cfg.train.accumulate_steps - 1)
            for name, value in terms.items():
                step_terms[name] = step_terms.get(name, 0.0) + value / cfg.train.accumulate_steps

        # Update the age encoder.
        self.amp.step(self.optimizer)
        self.optimizer.clear_grad()
        return step_terms, data_wait_sec

    # ------------------------------------------------------------------------------------------
    # The loop.

    def _check_finite(self, loss_value: float) -> None:
        finite = math.isfinite(loss_value)
        bad_ranks = all_reduce_sum([0.0 if finite else 1.0], self.dist)[0]
        if bad_ranks and not self.amp.skips_nonfinite_steps:
            raise TrainingError(
                f"loss is not finite at step {self.state.step} on {int(bad_ranks)} rank(s) (rank {self.dist.rank}: "
                f"{loss_value}); nothing is patched over. Resume from the last checkpoint with a lower "
                "train.learning_rate, or enable amp with float16 loss scaling"
            )

    def _log_status(self, stats: StepStats, lr: float) -> None:
        cfg = self.cfg
        # Host sync: the summed terms are copied to the CPU once per interval.
        local = {name: float(value) / stats.steps for name, value in stats.sums.items()}
        names = sorted(local)
        summed = all_reduce_sum([local[n] for n in names] + [float(sum(self.worker_errors.values()))], self.dist)
        mean = {n: v / self.dist.world_size for n, v in zip(names, summed[:-1])}
        self.state.data_errors = int(summed[-1])
        elapsed = time.perf_counter() - stats.start_time
        images = stats.steps * cfg.train.batch_size * cfg.train.accumulate_steps * self.dist.world_size
        sec_per_step = elapsed / stats.steps
        record = {
            "loss": mean.pop("loss"),
            **{f"loss_{n}": v for n, v in mean.items()},
            "lr": lr,
            "images_per_sec": images / elapsed,
            "data_wait_share": stats.data_wait_sec / elapsed,
            "eta_sec": sec_per_step * (cfg.train.max_steps - self.state.step),
            "peak_mem_gib": peak_memory_gib(),
            "images_seen": self.state.images_seen,
            "data_errors": self.state.data_errors,
            **self.amp.log_values(),
        }
        self.logger.status(self.state.step, record)

    def _validate(self) -> bool:
        """Score the fixed validation subset on every rank; return whether it is the best so far."""
        from eval.validation import is_improvement

        metric = self.cfg.train.best_metric
        values = self.validator.run()
        self.logger.scalars(self.state.step, "val", values)
        if metric not in values:
            log.warning("validation produced no %s (train.best_metric); the best checkpoint is not updated", metric)
            return False
        improved = is_improvement(metric, values[metric], self.state.best_metric)
        if improved:
            self.state.best_metric, self.state.best_step = values[metric], self.state.step
        log.info("validation at step %d: %s%s", self.state.step,
                 " ".join(f"{k} {v:.4f}" for k, v in values.items()), " (best so far)" if improved else "")
        return improved

    def _log_images(self, src_img: paddle.Tensor) -> None:
        """Render a few inputs at the configured ages into one VisualDL grid (rank 0 only)."""
        if not self.dist.is_main:
            return
        self.sam.eval()
        rows = []
        with paddle.no_grad():
            inputs = src_img[: min(4, src_img.shape[0])]
            outputs = [self.sam(add_age_channel(inputs, paddle.full([inputs.shape[0]], age / 100.0)),
                                randomize_noise=False)[0]
                       for age in self.cfg.train.image_ages]
        for i in range(inputs.shape[0]):
            rows.append([inputs[i].numpy()] + [out[i].numpy() for out in outputs])
        self.sam.set_train_mode()
        self.logger.image(self.state.step, "train/inputs_then_ages_" + "_".join(map(str, self.cfg.train.image_ages)),
                          image_grid(rows))

    def run(self) -> None:
        cfg = self.cfg
        if self.state.step >= cfg.train.max_steps:
            log.info("nothing to do: step %d already reached train.max_steps %d", self.state.step, cfg.train.max_steps)
            self.logger.close()
            return
        log.info("training from step %d to %d on %d rank(s), %d images per step",
                 self.state.step, cfg.train.max_steps, self.dist.world_size,
                 cfg.train.batch_size * cfg.train.accumulate_steps * self.dist.world_size)
        self.sam.set_train_mode()
        batches = iter(self.loader)
        stats = StepStats()
        grid_images = None
        while self.state.step < cfg.train.max_steps:
            terms, wait_sec = self.train_step(batches)
            self.state.step += 1
            self.state.images_seen += cfg.train.batch_size * cfg.train.accumulate_steps * self.dist.world_size

            # Stop every rank at a non-finite loss. Host sync: one scalar per step.
            self._check_finite(float(terms["loss"]))
            stats.steps += 1
            stats.data_wait_sec += wait_sec
            stats.add(terms)

            if self.state.step % cfg.train.log_interval == 0 or self.state.step == cfg.train.max_steps:
                self._log_status(stats, unwrap_optimizer(self.optimizer).get_lr())
                stats = StepStats()
            if self.state.step % cfg.train.image_interval == 0:
                if grid_images is None:
                    grid_images = first_images(cfg.data.train_shards, 4, cfg.data.resolution)
                if len(grid_images):
                    self._log_images(paddle.to_tensor(grid_images))
            improved = False
            if self.validator is not None and self.state.step % cfg.train.val_interval == 0:
                improved = self._validate()
            if (self.state.step % cfg.train.save_interval == 0 or self.state.step == cfg.train.max_steps
                    or improved):
                self.save(as_best=improved)
        self.logger.close()
        log.info("finished at step %d", self.state.step)
