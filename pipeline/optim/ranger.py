"""Ranger optimizer (RAdam + Lookahead + gradient centralisation), the variant SAM trains with.

The update follows the Ranger version 20.4.11 that SAM and pixel2style2pixel ship
(`training/ranger.py`), step for step:

1. Gradient centralisation: for a gradient with more than one dimension (more than three with
   `gc_conv_only`), subtract its mean over all dimensions but the first. This changes the
   parameter's gradient in place, as the official code does for float32 parameters.
2. Moments: m = b1 * m + (1 - b1) * g and v = b2 * v + (1 - b2) * g^2.
3. RAdam rectification: with N_max = 2 / (1 - b2) - 1 and N_s = N_max - 2 s b2^s / (1 - b2^s),
   the step is lr * step_size * m / (sqrt(v) + eps) when N_s > n_sma_threshold (step_size from
   `rectification`), else lr * m / (1 - b1^s).
4. Lookahead: every k-th step the slow copy moves alpha of the way to the parameter, and the
   parameter is reset to it.

State is keyed by structured parameter names (such as "encoder.body.0.weight") that the caller
passes, so a checkpoint still loads when the model is rebuilt with different auto-generated
Paddle parameter names.
"""

import math

import numpy as np
import paddle
from paddle.optimizer import Optimizer
from paddle.optimizer.lr import LRScheduler

STATE_FIELDS = ("exp_avg", "exp_avg_sq", "slow_buffer")
HYPERPARAMETER_NAMES = (
    "alpha",
    "k",
    "n_sma_threshold",
    "betas",
    "eps",
    "weight_decay",
    "use_gc",
    "gc_conv_only",
)
# At most this many names are listed in a mismatch error.
_MAX_NAMES_IN_ERROR = 20


def rectification(step, beta1, beta2, n_sma_threshold=5):
    """Return (N_sma, step_size) of RAdam at `step` (counted from 1), as Python floats.

    step_size multiplies lr * m / (sqrt(v) + eps) when N_sma > n_sma_threshold, and lr * m
    otherwise.
    """
    beta2_t = beta2**step
    n_sma_max = 2.0 / (1.0 - beta2) - 1.0
    n_sma = n_sma_max - 2.0 * step * beta2_t / (1.0 - beta2_t)
    if n_sma > n_sma_threshold:
        variance_ratio = (
            (1.0 - beta2_t)
            * (n_sma - 4.0)
            / (n_sma_max - 4.0)
            * (n_sma - 2.0)
            / n_sma
            * n_sma_max
            / (n_sma_max - 2.0)
        )
        step_size = math.sqrt(variance_ratio) / (1.0 - beta1**step)
    else:
        step_size = 1.0 / (1.0 - beta1**step)
    return n_sma, step_size


class RangerStateError(KeyError):
    """A Ranger state dict does not fit the optimizer's parameters."""

    def __str__(self):
        # KeyError would print the message with quotes; a plain sentence reads better.
        return str(self.args[0])


def _format_names(names):
    names = sorted(names)
    listed = ", ".join(names[:_MAX_NAMES_IN_ERROR])
    if len(names) > _MAX_NAMES_IN_ERROR:
        listed += f", ... ({len(names) - _MAX_NAMES_IN_ERROR} more)"
    return f"[{listed}]"


def _split_named_parameters(parameters, param_names):
    """Return (parameter list, {paddle name: structured name}) from the constructor arguments."""
    if parameters is None:
        raise ValueError("Ranger needs `parameters`: pass model.named_parameters() or a parameter list")
    if isinstance(parameters, paddle.Tensor):
        raise TypeError("Ranger `parameters` must be an iterable of parameters, not a single tensor")
    entries = list(parameters)
    if not entries:
        raise ValueError("Ranger received an empty parameter list; pass model.named_parameters()")
    if any(isinstance(entry, dict) for entry in entries):
        raise TypeError("Ranger does not support parameter groups; pass one flat list of parameters")

    params, structured = [], {}
    for entry in entries:
        if isinstance(entry, (tuple, list)):
            name, param = entry
            structured[param.name] = name
        else:
            param = entry
        params.append(param)
    for key, name in (param_names or {}).items():
        structured[key] = name

    unnamed = [param.name for param in params if param.name not in structured]
    if unnamed:
        raise ValueError(
            f"Ranger has no structured name for parameters {_format_names(unnamed)}; pass "
            "model.named_parameters() or param_names={param.name: 'layer.sub.weight'} so that "
            "checkpoints do not depend on Paddle's auto-generated names"
        )
    names = [structured[param.name] for param in params]
    duplicates = {name for name in names if names.count(name) > 1}
    if duplicates:
        raise ValueError(f"Ranger parameter names {_format_names(duplicates)} are used more than once")
    return params, {param.name: structured[param.name] for param in params}


class Ranger(Optimizer):
    """Ranger for dygraph Paddle, keyed by structured parameter names.

    Args:
        learning_rate: float or `paddle.optimizer.lr.LRScheduler` (official default 1e-3; SAM uses 1e-4).
        parameters: `model.named_parameters()`, or a list of parameters together with `param_names`.
        param_names: {param.name: structured name} for parameters passed without a name.
        alpha, k: Lookahead interpolation factor and sync period in steps.
        n_sma_threshold: RAdam switches to the adaptive step once N_sma exceeds it
            (`N_sma_threshhold` in the official code).
        betas, eps, weight_decay: Adam coefficients; weight decay is decoupled, p -= wd * lr * p.
        use_gc, gc_conv_only: gradient centralisation on tensors with dim > 1 (dim > 3 if conv only).
    """

    def __init__(
        self,
        learning_rate=1e-3,
        parameters=None,
        param_names=None,
        alpha=0.5,
        k=6,
        n_sma_threshold=5,
        betas=(0.95, 0.999),
        eps=1e-5,
        weight_decay=0.0,
        use_gc=True,
        gc_conv_only=False,
        name=None,
    ):
        _check_hyperparameters(learning_rate, alpha, k, betas, eps, weight_decay)
        params, self._structured_names = _split_named_parameters(parameters, param_names)
        if isinstance(learning_rate, int):
            learning_rate = float(learning_rate)
        super().__init__(learning_rate=learning_rate, parameters=params, weight_decay=None, grad_clip=None, name=name)

        self.alpha = float(alpha)
        self.k = int(k)
        self.n_sma_threshold = float(n_sma_threshold)
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps = float(eps)
        self.weight_decay = float(weight_decay)
        self.use_gc = bool(use_gc)
        self.gc_conv_only = bool(gc_conv_only)
        # Per structured name: {"step": int, "exp_avg", "exp_avg_sq", "slow_buffer"}.
        self._ranger_state = {}

    @property
    def param_names(self):
        """Structured names of the parameters, in parameter order."""
        return [self._structured_names[param.name] for param in self._parameter_list]

    def state_of(self, name):
        """Return the state dict of the parameter with structured name `name` (empty before its first step)."""
        return self._ranger_state.get(name, {})

    # ------------------------------------------------------------------------------------------
    # Update

    @paddle.no_grad()
    def step(self):
        """Apply one Ranger update to every parameter that has a gradient."""
        params_grads = []
        for param in self._parameter_list:
            if param.stop_gradient or param.grad is None:
                continue
            params_grads.append((param, param.grad))
        self._apply_updates(params_grads)

    @paddle.no_grad()
    def minimize(self, loss, startup_program=None, parameters=None, no_grad_set=None):
        """Update the parameters from their current gradients (call loss.backward() first).

        Returns ([], [(param, grad), ...]) like `paddle.optimizer.Optimizer.minimize` in dygraph.
        """
        if not paddle.in_dynamic_mode():
            raise RuntimeError("Ranger runs in dygraph mode only; call paddle.disable_static()")
        selected = _select_parameters(self._parameter_list, parameters, no_grad_set)
        params_grads = [(param, param.grad) for param in selected if param.grad is not None]
        self._apply_updates(params_grads)
        return [], params_grads

    def _apply_updates(self, params_grads):
        if self._found_inf():
            return  # GradScaler found inf/nan gradients: skip this step, as Paddle's optimizers do.
        lr = self.get_lr()
        for param, grad in params_grads:
            self._update_parameter(param, grad, lr)

    def _found_inf(self):
        found_inf = self._get_auxiliary_var("found_inf")
        return found_inf is not None and bool(found_inf)

    def _update_parameter(self, param, grad, lr):
        name = self._structured_names[param.name]
        state = self._ranger_state.get(name)
        if state is None:
            state = self._initial_state(param)
            self._ranger_state[name] = state

        # NOTE: the float16/bfloat16 parameter path (math in float32, cast back) is not reached by
        # the CPU tests, which train float32 parameters only.
        grad_fp32 = grad if grad.dtype == paddle.float32 else grad.astype("float32")
        if self.use_gc and grad_fp32.ndim > self._gc_min_dims():
            # In place, so the parameter's gradient is centralised too (as in the official code).
            grad_fp32.subtract_(grad_fp32.mean(axis=list(range(1, grad_fp32.ndim)), keepdim=True))

        state["step"] += 1
        beta1, beta2 = self.betas
        state["exp_avg_sq"] = state["exp_avg_sq"] * beta2 + grad_fp32 * (1.0 - beta2) * grad_fp32
        state["exp_avg"] = state["exp_avg"] * beta1 + grad_fp32 * (1.0 - beta1)

        param_fp32 = param.astype("float32") if param.dtype != paddle.float32 else param
        param_fp32 = self._radam_update(param_fp32, state, lr)
        paddle.assign(param_fp32.astype(param.dtype), output=param)

        if state["step"] % self.k == 0:
            slow = state["slow_buffer"]
            slow = slow + (param - slow) * self.alpha
            state["slow_buffer"] = slow
            paddle.assign(slow, output=param)

    def _gc_min_dims(self):
        return 3 if self.gc_conv_only else 1

    def _initial_state(self, param):
        return {
            "step": 0,
            "exp_avg": paddle.zeros(param.shape, dtype="float32"),
            "exp_avg_sq": paddle.zeros(param.shape, dtype="float32"),
            "slow_buffer": param.detach().clone(),
        }

    def _radam_update(self, param_fp32, state, lr):
        """Return the parameter after weight decay and the rectified Adam step."""
        beta1, beta2 = self.betas
        n_sma, step_size = rectification(state["step"], beta1, beta2, self.n_sma_threshold)
        if self.weight_decay != 0:
            param_fp32 = param_fp32 + param_fp32 * (-self.weight_decay * lr)
        if n_sma > self.n_sma_threshold:
            denom = state["exp_avg_sq"].sqrt() + self.eps
            return param_fp32 + state["exp_avg"] * (-step_size * lr) / denom
        return param_fp32 + state["exp_avg"] * (-step_size * lr)

    # ------------------------------------------------------------------------------------------
    # Checkpoints

    def state_dict(self):
        """Return the optimizer state keyed by structured parameter names.

        Layout: {"param_names": [...], "state": {name: {"step", "exp_avg", "exp_avg_sq",
        "slow_buffer"}}, "hyperparameters": {"lr", "alpha", ...}} plus "LR_Scheduler" when an
        LRScheduler drives the learning rate. The step updates replace the state tensors rather
        than write into them, so a returned dict is not changed by later steps.
        """
        hyperparameters = {name: getattr(self, name) for name in HYPERPARAMETER_NAMES}
        hyperparameters["betas"] = list(self.betas)
        hyperparameters["lr"] = float(self.get_lr())
        state_dict = {
            "param_names": self.param_names,
            "state": {name: dict(state) for name, state in self._ranger_state.items()},
            "hyperparameters": hyperparameters,
        }
        if isinstance(self._learning_rate, LRScheduler):
            state_dict["LR_Scheduler"] = self._learning_rate.state_dict()
        return state_dict

    def set_state_dict(self, state_dict):
        """Restore a `state_dict()` output; arrays may be Paddle tensors or NumPy arrays.

        The saved hyperparameters and learning rate replace the constructor's, as a resume
        expects; call set_lr() afterwards to override the learning rate. Raises RangerStateError
        naming the missing and unexpected parameter names, and ValueError on a shape mismatch.
        """
        _check_state_layout(state_dict)
        self._check_names(state_dict["param_names"], state_dict["state"])

        params_by_name = {self._structured_names[param.name]: param for param in self._parameter_list}
        restored = {}
        for name, saved in state_dict["state"].items():
            restored[name] = _restore_entry(name, saved, params_by_name[name])

        self._restore_hyperparameters(state_dict["hyperparameters"])
        if isinstance(self._learning_rate, LRScheduler):
            if "LR_Scheduler" in state_dict:
                self._learning_rate.set_state_dict(state_dict["LR_Scheduler"])
        else:
            self.set_lr(float(state_dict["hyperparameters"]["lr"]))
        self._ranger_state = restored

    def _check_names(self, saved_names, saved_state):
        own = set(self.param_names)
        missing = own - set(saved_names)
        unexpected = set(saved_names) - own
        if missing or unexpected:
            raise RangerStateError(
                f"Ranger state does not match the optimizer's parameters: missing names "
                f"{_format_names(missing)}, unexpected names {_format_names(unexpected)}. Build the "
                "optimizer from the same model layout with the same structured names as the checkpoint"
            )
        stray = set(saved_state) - own
        if stray:
            raise RangerStateError(f"Ranger state has entries for unknown parameters {_format_names(stray)}")

    def _restore_hyperparameters(self, saved):
        missing = [name for name in HYPERPARAMETER_NAMES + ("lr",) if name not in saved]
        if missing:
            raise RangerStateError(f"Ranger state lacks hyperparameters {missing}; it is not a Ranger state_dict()")
        _check_hyperparameters(
            float(saved["lr"]), saved["alpha"], saved["k"], saved["betas"], saved["eps"], saved["weight_decay"]
        )
        self.alpha = float(saved["alpha"])
        self.k = int(saved["k"])
        self.n_sma_threshold = float(saved["n_sma_threshold"])
        self.betas = (float(saved["betas"][0]), float(saved["betas"][1]))
        self.eps = float(saved["eps"])
        self.weight_decay = float(saved["weight_decay"])
        self.use_gc = bool(saved["use_gc"])
        self.gc_conv_only = bool(saved["gc_conv_only"])


def _check_hyperparameters(learning_rate, alpha, k, betas, eps, weight_decay):
    if not isinstance(learning_rate, LRScheduler) and not learning_rate > 0:
        raise ValueError(f"Ranger learning_rate={learning_rate} is invalid; it must be > 0")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"Ranger alpha={alpha} is invalid; it must be in [0, 1]")
    if int(k) != k or k < 1:
        raise ValueError(f"Ranger k={k} is invalid; it must be an integer >= 1")
    if len(betas) != 2 or not all(0.0 <= beta < 1.0 for beta in betas):
        raise ValueError(f"Ranger betas={tuple(betas)} are invalid; pass two values in [0, 1)")
    if not eps > 0:
        raise ValueError(f"Ranger eps={eps} is invalid; it must be > 0")
    if weight_decay < 0:
        raise ValueError(f"Ranger weight_decay={weight_decay} is invalid; it must be >= 0")


def _check_state_layout(state_dict):
    missing = [key for key in ("param_names", "state", "hyperparameters") if key not in state_dict]
    if missing:
        raise RangerStateError(
            f"Ranger state lacks the entries {missing}; pass the output of Ranger.state_dict()"
        )


def _restore_entry(name, saved, param):
    """Return one parameter's state as Paddle tensors, checked against the parameter's shape."""
    missing = [field for field in ("step",) + STATE_FIELDS if field not in saved]
    if missing:
        raise RangerStateError(f"Ranger state for {name!r} lacks {missing}")
    entry = {"step": int(np.asarray(saved["step"]))}
    for field in STATE_FIELDS:
        value = saved[field]
        if not isinstance(value, paddle.Tensor):
            value = paddle.to_tensor(np.asarray(value))
        if list(value.shape) != list(param.shape):
            raise ValueError(
                f"Ranger state {name!r}.{field} has shape {list(value.shape)} but the parameter "
                f"has shape {list(param.shape)}"
            )
        dtype = param.dtype if field == "slow_buffer" else paddle.float32
        entry[field] = value.astype(dtype).clone()
    return entry


def _select_parameters(own_params, parameters, no_grad_set):
    """Return the parameters `minimize` updates, honouring its `parameters` and `no_grad_set`."""

    def as_names(items):
        return {item if isinstance(item, str) else item.name for item in items}

    selected = own_params
    if parameters:
        requested = as_names(parameters)
        selected = [param for param in selected if param.name in requested]
    if no_grad_set:
        excluded = as_names(no_grad_set)
        selected = [param for param in selected if param.name not in excluded]
    return [param for param in selected if not param.stop_gradient]
