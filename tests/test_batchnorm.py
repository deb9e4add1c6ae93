"""BatchNorm1D/2D follow PyTorch's formulas: biased variance to normalise, unbiased to track."""

import numpy as np
import paddle
import pytest

from pipeline.models.norm import BatchNorm1D, BatchNorm2D, paddle_key

EPS = 1e-5
MOMENTUM = 0.1


def random_array(shape, seed, scale=1.0, offset=0.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale + offset).astype(np.float32)


def reference_train_step(x, running_mean, running_var, weight, bias, reduce_axes):
    """Return (output, new_running_mean, new_running_var) by PyTorch's formulas in float64."""
    x64 = x.astype(np.float64)
    channel_shape = [1, x.shape[1]] + [1] * (x.ndim - 2)
    batch_mean = x64.mean(axis=reduce_axes)
    batch_var_biased = x64.var(axis=reduce_axes)
    batch_var_unbiased = x64.var(axis=reduce_axes, ddof=1)

    normalized = (x64 - batch_mean.reshape(channel_shape)) / np.sqrt(batch_var_biased.reshape(channel_shape) + EPS)
    output = normalized * weight.reshape(channel_shape) + bias.reshape(channel_shape)
    new_mean = (1 - MOMENTUM) * running_mean + MOMENTUM * batch_mean
    new_var = (1 - MOMENTUM) * running_var + MOMENTUM * batch_var_unbiased
    return output, new_mean, new_var


def set_random_state(bn, seed):
    """Give the layer non-trivial affine parameters and running statistics."""
    channels = bn._mean.shape[0]
    rng = np.random.default_rng(seed)
    if bn.weight is not None:
        bn.weight.set_value(rng.uniform(0.5, 1.5, channels).astype(np.float32))
        bn.bias.set_value(rng.normal(0.0, 0.3, channels).astype(np.float32))
    bn._mean.set_value(rng.normal(0.0, 0.5, channels).astype(np.float32))
    bn._variance.set_value(rng.uniform(0.5, 2.0, channels).astype(np.float32))


def affine_arrays(bn):
    channels = bn._mean.shape[0]
    if bn.weight is None:
        return np.ones(channels), np.zeros(channels)
    return bn.weight.numpy().astype(np.float64), bn.bias.numpy().astype(np.float64)


CASES = [
    # (layer class, input shape, reduce axes)
    (BatchNorm2D, (4, 3, 5, 6), (0, 2, 3)),
    (BatchNorm1D, (6, 5), (0,)),
    (BatchNorm1D, (3, 4, 7), (0, 2)),
]


@pytest.mark.parametrize("layer_class,shape,reduce_axes", CASES)
@pytest.mark.parametrize("affine", [True, False])
def test_train_step_matches_torch_formulas(layer_class, shape, reduce_axes, affine):
    bn = layer_class(shape[1], affine=affine)
    set_random_state(bn, seed=1)
    weight, bias = affine_arrays(bn)
    old_mean, old_var = bn._mean.numpy().astype(np.float64), bn._variance.numpy().astype(np.float64)
    x = random_array(shape, seed=2, scale=2.0, offset=0.7)

    bn.train()
    out = bn(paddle.to_tensor(x)).numpy()

    ref_out, ref_mean, ref_var = reference_train_step(x, old_mean, old_var, weight, bias, reduce_axes)
    np.testing.assert_allclose(out, ref_out, atol=2e-5, rtol=1e-5)
    np.testing.assert_allclose(bn._mean.numpy(), ref_mean, atol=1e-6, rtol=1e-6)
    np.testing.assert_allclose(bn._variance.numpy(), ref_var, atol=1e-6, rtol=1e-6)


def test_running_stats_over_several_steps():
    bn = BatchNorm2D(3)
    set_random_state(bn, seed=3)
    weight, bias = affine_arrays(bn)
    mean, var = bn._mean.numpy().astype(np.float64), bn._variance.numpy().astype(np.float64)

    bn.train()
    for step in range(3):
        x = random_array((2, 3, 4, 4), seed=10 + step, offset=step)
        bn(paddle.to_tensor(x))
        _, mean, var = reference_train_step(x, mean, var, weight, bias, (0, 2, 3))

    np.testing.assert_allclose(bn._mean.numpy(), mean, atol=1e-6, rtol=1e-6)
    np.testing.assert_allclose(bn._variance.numpy(), var, atol=1e-6, rtol=1e-6)
    assert int(bn.num_batches_tracked) == 3


def test_eval_uses_running_stats_and_keeps_them():
    bn = BatchNorm2D(3)
    set_random_state(bn, seed=4)
    weight, bias = affine_arrays(bn)
    mean, var = bn._mean.numpy(), bn._variance.numpy()
    x = random_array((2, 3, 4, 4), seed=5)

    bn.eval()
    out = bn(paddle.to_tensor(x)).numpy()

    channel = (1, 3, 1, 1)
    expected = (x - mean.reshape(channel)) / np.sqrt(var.reshape(channel) + EPS) * weight.reshape(
        channel
    ) + bias.reshape(channel)
    np.testing.assert_allclose(out, expected, atol=1e-5, rtol=1e-5)
    np.testing.assert_array_equal(bn._mean.numpy(), mean)
    np.testing.assert_array_equal(bn._variance.numpy(), var)
    assert int(bn.num_batches_tracked) == 0


def test_num_batches_tracked_counts_train_forwards_only():
    bn = BatchNorm1D(4)
    assert bn.num_batches_tracked.dtype == paddle.int64
    assert bn.num_batches_tracked.shape == []

    x = paddle.to_tensor(random_array((5, 4), seed=6))
    bn.train()
    bn(x)
    with paddle.no_grad():
        bn(x)
    bn.eval()
    bn(x)

    assert int(bn.num_batches_tracked) == 2


def test_train_gradient_uses_batch_statistics():
    x_np = random_array((3, 2, 4, 4), seed=7, offset=1.0)
    upstream = paddle.to_tensor(random_array((3, 2, 4, 4), seed=8))
    bn = BatchNorm2D(2)
    set_random_state(bn, seed=9)
    bn.train()

    x = paddle.to_tensor(x_np, stop_gradient=False)
    (bn(x) * upstream).sum().backward()

    # The same normalisation written with differentiable paddle ops.
    x_ref = paddle.to_tensor(x_np, stop_gradient=False)
    mean = x_ref.mean(axis=[0, 2, 3], keepdim=True)
    var = ((x_ref - mean) ** 2).mean(axis=[0, 2, 3], keepdim=True)
    weight = bn.weight.detach().reshape([1, 2, 1, 1])
    bias = bn.bias.detach().reshape([1, 2, 1, 1])
    ((x_ref - mean) / paddle.sqrt(var + EPS) * weight + bias).multiply(upstream).sum().backward()

    np.testing.assert_allclose(x.grad.numpy(), x_ref.grad.numpy(), atol=1e-5, rtol=1e-4)
    assert bn.weight.grad is not None
    assert bn.bias.grad is not None


def test_state_dict_keys_match_torch_order():
    assert list(BatchNorm2D(3).state_dict()) == ["weight", "bias", "_mean", "_variance", "num_batches_tracked"]
    assert list(BatchNorm1D(3, affine=False).state_dict()) == ["_mean", "_variance", "num_batches_tracked"]


def test_state_dict_round_trip_keeps_counter():
    source = BatchNorm2D(3)
    source.train()
    source(paddle.to_tensor(random_array((2, 3, 2, 2), seed=11)))
    target = BatchNorm2D(3)

    target.set_state_dict(source.state_dict())

    assert int(target.num_batches_tracked) == 1
    np.testing.assert_array_equal(target._variance.numpy(), source._variance.numpy())


def test_single_value_per_channel_rejected_in_train_mode():
    bn = BatchNorm1D(4)
    bn.train()
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        bn(paddle.ones([1, 4]))


def test_invalid_momentum_rejected():
    with pytest.raises(ValueError, match="momentum"):
        BatchNorm2D(3, momentum=1.5)


@pytest.mark.parametrize(
    "official,expected",
    [
        ("body.0.res_layer.0.running_mean", "body.0.res_layer.0._mean"),
        ("output_layer.4.running_var", "output_layer.4._variance"),
        ("input_layer.1.num_batches_tracked", "input_layer.1.num_batches_tracked"),
        ("input_layer.0.weight", "input_layer.0.weight"),
        ("running_var", "_variance"),
    ],
)
def test_paddle_key_renames_running_stats(official, expected):
    assert paddle_key(official) == expected
