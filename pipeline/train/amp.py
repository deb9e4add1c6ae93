"""Automatic mixed precision: autocast, float16 loss scaling, and the CPU fallback."""

from __future__ import annotations

import contextlib
import logging

import paddle

from pipeline.config import AmpConfig

log = logging.getLogger("sam")


def amp_supported() -> bool:
    """Return whether Paddle's AMP takes effect on the current device (CUDA, XPU or a custom device)."""
    return paddle.device.get_device() != "cpu"


class AmpContext:
    """One place for every AMP call of the training step.

    The trainer always goes through autocast(), scale() and step(); with AMP off, or on a CPU,
    they run in float32 and pass the loss and the optimizer step straight through.
    """

    def __init__(self, cfg: AmpConfig):
        self.cfg = cfg
        self.active = cfg.enabled and amp_supported()
        if cfg.enabled and not self.active:
            log.warning("amp.enabled is true but Paddle's AMP needs a GPU here; training runs in float32 on the CPU")
        # Loss scaling guards float16 gradients against underflow; bfloat16 has float32's range.
        # NOTE: float16 loss scaling is reachable only on a GPU; CI runs the disabled branch.
        self.use_scaler = self.active and cfg.dtype == "float16"
        self.scaler = paddle.amp.GradScaler(enable=self.use_scaler, init_loss_scaling=cfg.init_loss_scaling)
        self.skipped_steps = 0  # optimizer steps skipped because float16 gradients overflowed

    @property
    def skips_nonfinite_steps(self) -> bool:
        """Whether the loss scaler skips steps whose gradients overflow (float16 AMP)."""
        return self.use_scaler

    def autocast(self):
        if not self.active:
            return contextlib.nullcontext()
        return paddle.amp.auto_cast(enable=True, dtype=self.cfg.dtype, level=self.cfg.level)

    def scale(self, loss: paddle.Tensor) -> paddle.Tensor:
        return self.scaler.scale(loss) if self.use_scaler else loss

    def step(self, optimizer) -> None:
        """Unscale, skip on overflow (float16 only), step and update the loss scale."""
        if not self.use_scaler:
            optimizer.step()
            return
        self.scaler.step(optimizer)
        if self.scaler._cache_found_inf:
            self.skipped_steps += 1
            self._lower_scale_after_overflow()
        else:
            self.scaler.update()

    def _lower_scale_after_overflow(self) -> None:
        """Apply GradScaler's overflow rule without calling update().

        NOTE: Paddle 3.3.1's update() formats float() of the [1]-shaped scale tensor after an
        overflow, which raises TypeError under NumPy 2.x; this mirrors its bookkeeping instead.
        Reachable only with float16 AMP on a GPU.
        """
        scaler = self.scaler
        if not scaler._use_dynamic_loss_scaling:
            return
        scaler._incr_count = 0
        scaler._decr_count += 1
        if scaler._decr_count == scaler._decr_every_n_nan_or_inf:
            scaler._scale = scaler._scale * scaler._decr_ratio
            scaler._decr_count = 0

    def state_dict(self) -> dict | None:
        if not self.use_scaler:
            return None
        return {key: (value.tolist() if hasattr(value, "tolist") else value)
                for key, value in self.scaler.state_dict().items()}

    def load_state_dict(self, state: dict | None) -> None:
        if state is None:
            if self.use_scaler:
                log.warning("the checkpoint contains no loss-scaler state; float16 loss scaling restarts at %g",
                            self.cfg.init_loss_scaling)
            return
        if not self.use_scaler:
            log.warning("the checkpoint contains a loss-scaler state, but this run does not scale the loss, so it is ignored")
            return
        self.scaler.load_state_dict(state)

    def log_values(self) -> dict:
        if not self.use_scaler:
            return {}
        return {"loss_scale": float(self.scaler._scale.numpy().item()), "amp_skipped_steps": self.skipped_steps}
