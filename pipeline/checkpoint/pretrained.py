"""Load converted weight files (written by checkpoints/convert.py) into Paddle layers, strictly.

Usage:
    loaded = load_weights(model.decoder, cfg.weights.stylegan, "stylegan", config_option="weights.stylegan")
    latent_avg = loaded.extras["latent_avg"]  # [512]; not module state

Every key of the layer must come from the file, and every file key below `prefix` (minus the
declared extras) must land in the layer with the same shape and a compatible dtype: float
values go into float parameters, integers into integer buffers such as num_batches_tracked.
Float values must be finite. Otherwise WeightsMismatchError names the missing and unexpected
keys, the shape and dtype mismatches, the non-finite entries and the config option. Every
check runs before the layer is touched, so a failed load leaves it unchanged.
"""

import dataclasses
import json
import os

import numpy as np
import paddle

from pipeline.checkpoint.convert import FORMAT_TAG, KINDS

_NUMPY_DTYPES = {
    paddle.float32: np.float32,
    paddle.float64: np.float64,
    paddle.float16: np.float16,
    paddle.int64: np.int64,
    paddle.int32: np.int32,
    paddle.bool: np.bool_,
}
_FLOAT_DTYPES = {paddle.float16, paddle.float32, paddle.float64, paddle.bfloat16}
_INTEGER_DTYPES = {paddle.int8, paddle.int16, paddle.int32, paddle.int64, paddle.uint8}
_MAX_LISTED_KEYS = 10


class WeightsMismatchError(ValueError):
    """A weight file does not fit the layer it is loaded into, or is not a converted file."""


@dataclasses.dataclass
class LoadedWeights:
    """Result of load_weights: the file's kind, metadata, extras and training options."""

    path: str
    kind: str
    metadata: dict
    extras: dict  # tensors of the file that are not module state, e.g. StyleGAN2's latent_avg [512]
    opts: dict = None  # official training options of pSp/SAM checkpoints


def _option_label(path, config_option):
    return f"{config_option}={path}" if config_option else str(path)


def _check_metadata(metadata, path, kinds, config_option):
    label = _option_label(path, config_option)
    if metadata.get("format") != FORMAT_TAG:
        raise WeightsMismatchError(
            f"{label} is not a converted weight file (format {metadata.get('format')!r}, expected {FORMAT_TAG!r}); "
            f"convert the official checkpoint first: python checkpoints/convert.py SRC {path}"
        )
    if metadata.get("kind") not in kinds:
        raise WeightsMismatchError(
            f"{label} contains {metadata.get('kind')!r} weights, but this option expects {' or '.join(kinds)}; "
            "point the option at the matching converted file"
        )


def _parse_json_entry(metadata, name, default, expected_type, label):
    """Return a JSON metadata entry, raising WeightsMismatchError when it is invalid or of the wrong type."""
    raw = metadata.get(name, default)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as error:
        raise WeightsMismatchError(
            f"{label}: metadata entry {name!r} is not valid JSON ({error}): {raw[:80]!r}; convert the checkpoint again"
        ) from error
    if not isinstance(value, expected_type):
        raise WeightsMismatchError(
            f"{label}: metadata entry {name!r} should be a JSON {expected_type.__name__}, found {raw[:80]!r}; "
            "convert the checkpoint again"
        )
    return value


def _extra_keys(metadata, label):
    """Return the metadata's extra_keys after checking each is an extra of the file's kind."""
    extra_keys = _parse_json_entry(metadata, "extra_keys", "[]", list, label)
    allowed = KINDS[metadata["kind"]].extra_keys
    invalid = [key for key in extra_keys if key not in allowed]
    if invalid:
        raise WeightsMismatchError(
            f"{label}: metadata entry 'extra_keys' lists {invalid[:_MAX_LISTED_KEYS]}, which are not extras of "
            f"{metadata['kind']} files (allowed: {list(allowed)}); convert the checkpoint again"
        )
    return set(extra_keys)


def read_weights(path, kind, config_option=None, keys=None):
    """Read a converted file: return (tensors {key: ndarray}, metadata).

    `keys`, a predicate on key names, limits what is read. The extras the metadata lists
    (such as latent_avg) are always read.
    """
    from safetensors import SafetensorError, safe_open

    kinds = (kind,) if isinstance(kind, str) else tuple(kind)
    unknown = [name for name in kinds if name not in KINDS]
    if unknown:
        raise ValueError(f"unknown weight kind(s) {unknown}; known kinds: {', '.join(KINDS)}")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{_option_label(path, config_option)}: file not found; convert the official checkpoint with "
            f"python checkpoints/convert.py SRC {path}"
        )
    try:
        with safe_open(path, framework="np") as file:
            metadata = file.metadata() or {}
            _check_metadata(metadata, path, kinds, config_option)
            extra_keys = _extra_keys(metadata, _option_label(path, config_option))
            wanted = [key for key in file.keys() if keys is None or keys(key) or key in extra_keys]
            tensors = {key: file.get_tensor(key) for key in wanted}
    except SafetensorError as error:
        raise WeightsMismatchError(f"{_option_label(path, config_option)} is not a readable safetensors file: {error}") from error
    return tensors, metadata


def _list_keys(keys):
    keys = sorted(keys)
    shown = ", ".join(keys[:_MAX_LISTED_KEYS])
    return shown + (f", ... ({len(keys) - _MAX_LISTED_KEYS} more)" if len(keys) > _MAX_LISTED_KEYS else "")


def _checked_value(key, value, target_dtype):
    """Return (value cast for a tensor of `target_dtype`, None), or (None, problem) when it does not fit."""
    if target_dtype in _FLOAT_DTYPES:
        if value.dtype.kind != "f":
            return None, f"{key}: file dtype {value.dtype}, layer {target_dtype} (expected float values)"
        with np.errstate(over="ignore"):  # an overflow becomes inf, which the check below reports
            cast = value.astype(_NUMPY_DTYPES.get(target_dtype, np.float32), copy=False)
        if not np.isfinite(cast).all():
            return None, f"{key}: contains NaN or infinite values (after the cast to {cast.dtype})"
        return cast, None
    if target_dtype in _INTEGER_DTYPES:
        if value.dtype.kind not in "iu":
            return None, f"{key}: file dtype {value.dtype}, layer {target_dtype} (expected integer values)"
        cast = value.astype(_NUMPY_DTYPES.get(target_dtype, value.dtype), copy=False)
        if not np.array_equal(cast, value):
            return None, f"{key}: integer values out of range for {target_dtype}"
        return cast, None
    if target_dtype == paddle.bool and value.dtype.kind != "b":
        return None, f"{key}: file dtype {value.dtype}, layer {target_dtype} (expected bool values)"
    return value, None


def _checked_extras(extras, label):
    """Check that every extra (such as latent_avg) contains only finite float values."""
    for key, value in extras.items():
        if value.dtype.kind != "f":
            raise WeightsMismatchError(f"{label}: extra {key} has dtype {value.dtype}, expected float values")
        if not np.isfinite(value).all():
            raise WeightsMismatchError(f"{label}: extra {key} contains NaN or infinite values")
    return extras


def _mismatch_message(layer, label, kind, missing, unexpected, shape_mismatches, value_problems=()):
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys (in the layer, not in the file): {_list_keys(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys (in the file, not in the layer): {_list_keys(unexpected)}")
    if shape_mismatches:
        shown = "; ".join(shape_mismatches[:_MAX_LISTED_KEYS])
        more = f"; ... ({len(shape_mismatches) - _MAX_LISTED_KEYS} more)" if len(shape_mismatches) > _MAX_LISTED_KEYS else ""
        parts.append(f"{len(shape_mismatches)} shape mismatches: {shown}{more}")
    if value_problems:
        shown = "; ".join(value_problems[:_MAX_LISTED_KEYS])
        more = f"; ... ({len(value_problems) - _MAX_LISTED_KEYS} more)" if len(value_problems) > _MAX_LISTED_KEYS else ""
        parts.append(f"{len(value_problems)} invalid values: {shown}{more}")
    return (
        f"{label} does not fit {type(layer).__name__}: " + ". ".join(parts) + ". "
        f"Check that the file was converted from the {kind} checkpoint and that the model sizes in the config match it."
    )


def load_weights(layer, path, kind, config_option=None, prefix=""):
    """Load a converted file into `layer` strictly and return a LoadedWeights with the extras.

    `kind` is the expected kind name (or a tuple of accepted names). `prefix` selects a
    sub-network of the file, e.g. "encoder." to load a pSp file's encoder into a
    GradualStyleEncoder. `config_option` names the config key that set `path`, for messages.
    """
    kinds = (kind,) if isinstance(kind, str) else tuple(kind)
    tensors, metadata = read_weights(path, kinds, config_option, keys=lambda key: key.startswith(prefix))
    label = _option_label(path, config_option)
    extra_keys = _extra_keys(metadata, label)
    opts = _parse_json_entry(metadata, "opts", "{}", dict, label) if "opts" in metadata else None
    extras = _checked_extras({key: tensors.pop(key) for key in list(tensors) if key in extra_keys}, label)
    state = {key[len(prefix) :]: value for key, value in tensors.items()}

    assign_state(layer, state, label, metadata.get("kind"))
    return LoadedWeights(os.fspath(path), metadata.get("kind"), metadata, extras, opts)


def assign_state(layer, state, label, kind):
    """Fill `layer` from `state` ({our key: array}) strictly; on any problem leave it unchanged.

    Raises WeightsMismatchError naming the missing and unexpected keys, the shape mismatches
    and the invalid values (wrong dtype kind, non-finite). `label` names the source in messages
    and `kind` the checkpoint it should come from.
    """
    own_state = layer.state_dict()
    missing = set(own_state) - set(state)
    unexpected = set(state) - set(own_state)
    shape_mismatches = [
        f"{key}: file {list(np.shape(state[key]))}, layer {list(own_state[key].shape)}"
        for key in sorted(set(state) & set(own_state))
        if list(np.shape(state[key])) != list(own_state[key].shape)
    ]
    if missing or unexpected or shape_mismatches:
        raise WeightsMismatchError(_mismatch_message(layer, label, kind, missing, unexpected, shape_mismatches))

    values, value_problems = {}, []
    for key, tensor in own_state.items():
        values[key], problem = _checked_value(key, np.asarray(state[key]), tensor.dtype)
        if problem:
            value_problems.append(problem)
    if value_problems:
        raise WeightsMismatchError(_mismatch_message(layer, label, kind, (), (), (), value_problems))

    # state_dict() returns the live parameters and buffers, so set_value fills the layer in place.
    for key, tensor in own_state.items():
        tensor.set_value(values[key])
