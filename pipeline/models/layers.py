"""StyleGAN2 building blocks shared by the generator and the pSp style blocks.

Weights keep the official PyTorch layouts ([out, in] for EqualLinear), so converted
checkpoints load without transposes.
"""

import math

import paddle
import paddle.nn as nn
import paddle.nn.functional as F


def fused_leaky_relu(x, bias, negative_slope=0.2, scale=math.sqrt(2)):
    """Add a per-channel bias on dim 1, apply leaky ReLU, then multiply by `scale`."""
    shape = [1, bias.shape[0]] + [1] * (x.ndim - 2)
    return F.leaky_relu(x + bias.reshape(shape), negative_slope) * scale


class FusedLeakyReLU(nn.Layer):
    def __init__(self, channels, negative_slope=0.2, scale=math.sqrt(2)):
        super().__init__()
        self.bias = self.create_parameter([channels], default_initializer=nn.initializer.Constant(0.0))
        self.negative_slope = negative_slope
        self.scale = scale

    def forward(self, x):
        return fused_leaky_relu(x, self.bias, self.negative_slope, self.scale)


class EqualLinear(nn.Layer):
    """Linear layer with the equalized learning rate of StyleGAN2.

    y = x (W * lr_mul / sqrt(in_dim))^T + b * lr_mul, optionally followed by the fused
    leaky ReLU. `weight` is stored as [out_dim, in_dim], as in the official code.
    """

    def __init__(self, in_dim, out_dim, bias=True, bias_init=0.0, lr_mul=1.0, activation=None):
        super().__init__()
        if activation not in (None, "fused_lrelu"):
            raise ValueError(f"EqualLinear activation must be None or 'fused_lrelu', got {activation!r}")
        self.weight = self.create_parameter(
            [out_dim, in_dim], default_initializer=nn.initializer.Normal(0.0, 1.0 / lr_mul)
        )
        if bias:
            self.bias = self.create_parameter([out_dim], default_initializer=nn.initializer.Constant(bias_init))
        else:
            self.bias = None
        self.activation = activation
        self.scale = (1 / math.sqrt(in_dim)) * lr_mul
        self.lr_mul = lr_mul

    def forward(self, x):
        weight = (self.weight * self.scale).t()
        if self.activation == "fused_lrelu":
            out = paddle.matmul(x, weight)
            return fused_leaky_relu(out, self.bias * self.lr_mul)
        bias = self.bias * self.lr_mul if self.bias is not None else None
        return F.linear(x, weight, bias)
