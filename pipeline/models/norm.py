"""BatchNorm layers with PyTorch's training semantics.

Paddle 3.3.1 updates the running variance with the biased batch variance and counts no
batches. PyTorch uses the unbiased batch variance and keeps an int64 `num_batches_tracked`
buffer. The official SAM checkpoints carry these statistics, and SAM trains with the frozen
pSp encoder in train mode, so the running statistics must evolve exactly as in PyTorch.

State dict keys per layer: `weight`, `bias` (only when affine), `_mean`, `_variance`,
`num_batches_tracked`. The official names are `running_mean` and `running_var`;
`paddle_key` maps an official key to the Paddle one.
"""

import math

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

OFFICIAL_TO_PADDLE_SUFFIX = {
    "running_mean": "_mean",
    "running_var": "_variance",
}


def paddle_key(official_key):
    """Return the Paddle state dict key for an official PyTorch key (BatchNorm stats renamed)."""
    prefix, _, leaf = official_key.rpartition(".")
    if leaf not in OFFICIAL_TO_PADDLE_SUFFIX:
        return official_key
    paddle_leaf = OFFICIAL_TO_PADDLE_SUFFIX[leaf]
    return f"{prefix}.{paddle_leaf}" if prefix else paddle_leaf


class _TorchBatchNormMixin:
    """Shared constructor and forward of BatchNorm1D and BatchNorm2D.

    `momentum` follows PyTorch: running = (1 - momentum) * running + momentum * batch_stat.
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True):
        if not 0.0 < momentum <= 1.0:
            raise ValueError(
                f"BatchNorm momentum must be in (0, 1] in PyTorch terms (0.1 is the default), got {momentum}"
            )
        param_attr = None if affine else False
        super().__init__(
            num_features,
            momentum=1.0 - momentum,
            epsilon=eps,
            weight_attr=param_attr,
            bias_attr=param_attr,
        )
        self.momentum = momentum
        self.affine = affine
        self.register_buffer("num_batches_tracked", paddle.zeros([], dtype="int64"))

    def forward(self, x):
        self._check_input_dim(x)
        if not self.training:
            return F.batch_norm(
                x,
                self._mean,
                self._variance,
                weight=self.weight,
                bias=self.bias,
                training=False,
                epsilon=self._epsilon,
                data_format=self._data_format,
            )
        return self._forward_train(x)

    def _forward_train(self, x):
        """Normalise with batch statistics and update the running statistics as PyTorch does."""
        batch_mean, batch_var_unbiased = self._batch_statistics(x)

        # Paddle's kernel normalises with the biased batch variance, as PyTorch does. It also
        # writes its own (biased) running-stat update, so it gets scratch copies to write into.
        scratch_mean = self._mean.detach().clone()
        scratch_var = self._variance.detach().clone()
        out = F.batch_norm(
            x,
            scratch_mean,
            scratch_var,
            weight=self.weight,
            bias=self.bias,
            training=True,
            momentum=self._momentum,
            epsilon=self._epsilon,
            data_format=self._data_format,
        )

        with paddle.no_grad():
            keep = 1.0 - self.momentum
            paddle.assign(keep * self._mean + self.momentum * batch_mean, output=self._mean)
            paddle.assign(keep * self._variance + self.momentum * batch_var_unbiased, output=self._variance)
            paddle.assign(self.num_batches_tracked + 1, output=self.num_batches_tracked)
        return out

    def _batch_statistics(self, x):
        """Return the per-channel batch mean and unbiased variance of x (no gradient)."""
        reduce_axes = [0] + list(range(2, x.ndim))
        values_per_channel = math.prod(x.shape) // x.shape[1]
        if values_per_channel < 2:
            raise ValueError(
                f"{type(self).__name__} in train mode needs more than 1 value per channel, got input shape "
                f"{list(x.shape)}; use a batch of at least 2 or call .eval()"
            )
        with paddle.no_grad():
            stats_input = x.astype("float32") if x.dtype != paddle.float32 else x
            batch_mean = stats_input.mean(axis=reduce_axes, keepdim=True)
            centered = stats_input - batch_mean
            squared_deviation_sum = (centered * centered).sum(axis=reduce_axes)
            batch_var_unbiased = squared_deviation_sum / (values_per_channel - 1)
        return batch_mean.flatten(), batch_var_unbiased


class BatchNorm1D(_TorchBatchNormMixin, nn.BatchNorm1D):
    """BatchNorm over [N, C] or [N, C, L] with PyTorch's defaults and running-stat update."""


class BatchNorm2D(_TorchBatchNormMixin, nn.BatchNorm2D):
    """BatchNorm over [N, C, H, W] with PyTorch's defaults and running-stat update."""
