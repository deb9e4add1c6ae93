"""Parity of the Ranger optimizer with the official implementation over 12 steps, two learning rates."""

import numpy as np
import paddle
import pytest

from pipeline.checkpoint.torch_format import load_torch_file
from pipeline.optim.ranger import STATE_FIELDS, Ranger, rectification

pytestmark = pytest.mark.parity

CASE = "h_ranger"
ATOL, RTOL = 1e-6, 1e-5
PARAM_NAMES = ("w1d", "w2d", "w4d", "w5d", "w_scalar")
RUNS = {"lr1e-4": 1e-4, "lr1e-2": 1e-2}
NUM_STEPS = 12


class Weights(paddle.nn.Layer):
    """The case's five parameters, registered under their case names."""

    def __init__(self, initial):
        super().__init__()
        for name in PARAM_NAMES:
            value = np.asarray(initial[name], dtype=np.float32)
            param = self.create_parameter(
                list(value.shape), dtype="float32", default_initializer=paddle.nn.initializer.Assign(value)
            )
            self.add_parameter(name, param)


def _assign_gradients(weights, grads_by_name, step):
    """Give every parameter the case's gradient for `step`, as a fresh tensor."""
    weights.clear_gradients(set_to_zero=False)
    loss = 0
    for name, param in weights.named_parameters():
        loss = loss + (param * paddle.to_tensor(grads_by_name[name][step])).sum()
    loss.backward()


def _run(case, lr):
    weights = Weights(load_torch_file(case.weights_path))
    optimizer = Ranger(learning_rate=lr, parameters=weights.named_parameters())
    grads_by_name = {name: case.io[f"grads.{name}"] for name in PARAM_NAMES}

    params_after_step = {name: [] for name in PARAM_NAMES}
    for step in range(NUM_STEPS):
        _assign_gradients(weights, grads_by_name, step)
        optimizer.step()
        for name, param in weights.named_parameters():
            params_after_step[name].append(param.numpy().copy())

    final_state = {name: optimizer.state_of(name) for name in PARAM_NAMES}
    return {name: np.stack(values) for name, values in params_after_step.items()}, final_state


@pytest.fixture(scope="module")
def runs(golden):
    case = golden(CASE)
    return case, {run: _run(case, lr) for run, lr in RUNS.items()}


@pytest.mark.parametrize("run", RUNS)
@pytest.mark.parametrize("name", PARAM_NAMES)
def test_params_after_step(runs, run, name):
    case, results = runs
    params_after_step, _ = results[run]
    np.testing.assert_allclose(
        params_after_step[name], case.io[f"{run}.params_after_step.{name}"], atol=ATOL, rtol=RTOL
    )


@pytest.mark.parametrize("run", RUNS)
@pytest.mark.parametrize("name", PARAM_NAMES)
@pytest.mark.parametrize("field", STATE_FIELDS)
def test_final_state(runs, run, name, field):
    case, results = runs
    _, final_state = results[run]
    assert final_state[name]["step"] == NUM_STEPS
    np.testing.assert_allclose(
        final_state[name][field].numpy(), case.io[f"{run}.final_state.{name}.{field}"], atol=ATOL, rtol=RTOL
    )


@pytest.mark.parametrize("run", RUNS)
@pytest.mark.parametrize("index, quantity", [(0, "N_sma"), (1, "step_size")])
def test_rectification_terms(golden, run, index, quantity):
    case = golden(CASE)
    values = [rectification(step, 0.95, 0.999, 5)[index] for step in range(1, NUM_STEPS + 1)]
    np.testing.assert_allclose(np.array(values), case.io[f"{run}.{quantity}"], atol=ATOL, rtol=RTOL)
