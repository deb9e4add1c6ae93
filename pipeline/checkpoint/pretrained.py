"""Load converted weight files (written by checkpoints/convert.py) into Paddle layers, strictly.

Usage:
    loaded = load_weights(model.decoder, cfg.weights.stylegan, "stylegan", config_option="weights.stylegan")
    latent_avg = loaded.extras["latent_avg"]  # [512]; not module state

Every key of the layer must come from the file, and every file key below `prefix` (minus the
declared extras) must land in the layer with the same shape. Otherwise WeightsMismatchError
names the missing and unexpected keys, the shape mismatches and the config option.
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
            extra_keys = set(json.loads(metadata.get("extra_keys", "[]")))
            wanted = [key for key in file.keys() if keys is None or keys(key) or key in extra_keys]
            tensors = {key: file.get_tensor(key) for key in wanted}
    except SafetensorError as error:
        raise WeightsMismatchError(f"{_option_label(path, config_option)} is not a readable safetensors file: {error}") from error
    return tensors, metadata


def _list_keys(keys):
    keys = sorted(keys)
    shown = ", ".join(keys[:_MAX_LISTED_KEYS])
    return shown + (f", ... ({len(keys) - _MAX_LISTED_KEYS} more)" if len(keys) > _MAX_LISTED_KEYS else "")


def _mismatch_message(layer, label, kind, missing, unexpected, shape_mismatches):
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys (in the layer, not in the file): {_list_keys(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys (in the file, not in the layer): {_list_keys(unexpected)}")
    if shape_mismatches:
        shown = "; ".join(shape_mismatches[:_MAX_LISTED_KEYS])
        more = f"; ... ({len(shape_mismatches) - _MAX_LISTED_KEYS} more)" if len(shape_mismatches) > _MAX_LISTED_KEYS else ""
        parts.append(f"{len(shape_mismatches)} shape mismatches: {shown}{more}")
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
    extra_keys = set(json.loads(metadata.get("extra_keys", "[]")))
    extras = {key: tensors.pop(key) for key in list(tensors) if key in extra_keys}
    state = {key[len(prefix) :]: value for key, value in tensors.items()}

    own_state = layer.state_dict()
    missing = set(own_state) - set(state)
    unexpected = set(state) - set(own_state)
    shape_mismatches = [
        f"{key}: file {list(state[key].shape)}, layer {list(own_state[key].shape)}"
        for key in sorted(set(state) & set(own_state))
        if list(state[key].shape) != list(own_state[key].shape)
    ]
    if missing or unexpected or shape_mismatches:
        label = _option_label(path, config_option)
        raise WeightsMismatchError(_mismatch_message(layer, label, metadata.get("kind"), missing, unexpected, shape_mismatches))

    # state_dict() returns the live parameters and buffers, so set_value fills the layer in place.
    for key, tensor in own_state.items():
        tensor.set_value(state[key].astype(_NUMPY_DTYPES.get(tensor.dtype, state[key].dtype), copy=False))
    opts = json.loads(metadata["opts"]) if "opts" in metadata else None
    return LoadedWeights(os.fspath(path), metadata.get("kind"), metadata, extras, opts)
