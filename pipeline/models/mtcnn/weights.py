"""Readers for the official MTCNN weights.

The official weights ship as `pnet.npy`, `rnet.npy` and `onet.npy`: each is a `.npy` file
holding a 0-d object array whose item is a dict {state_dict key: float32 array}, so reading
it needs pickle. `read_official_npy` goes through `load_pickled_npy`, whose restricted
unpickler admits only NumPy array reconstruction and plain containers, so a crafted file
cannot run code.
"""

from pathlib import Path

import numpy as np

from pipeline.checkpoint.torch_format import load_pickled_npy

NET_NAMES = ("pnet", "rnet", "onet")


def read_official_npy(path):
    """Read one official MTCNN weight file (pnet.npy, rnet.npy or onet.npy).

    Returns {state_dict key: float32 array} in the official PyTorch layout. Raises
    ValueError when the file does not hold a dict of float arrays, CheckpointFormatError
    (a ValueError) when it is corrupt or contains structured or object arrays, and
    UnsafeCheckpointError (a ValueError) when its pickle names anything but NumPy arrays
    and containers.
    """
    weights = load_pickled_npy(path)
    if not isinstance(weights, dict):
        raise ValueError(
            f"{path}: expected a pickled dict of arrays, found {type(weights).__name__}; "
            "pass the official pnet.npy, rnet.npy or onet.npy"
        )
    for key, value in weights.items():
        if not isinstance(key, str) or not isinstance(value, np.ndarray):
            raise ValueError(
                f"{path}: entry {key!r} is {type(value).__name__}; expected str keys and ndarray values"
            )
        if value.dtype.kind != "f":
            raise ValueError(f"{path}: entry {key!r} has dtype {value.dtype}; the MTCNN weights are float arrays")
    return {key: value.astype(np.float32, copy=False) for key, value in weights.items()}


def read_official_npy_dir(directory):
    """Read pnet.npy, rnet.npy and onet.npy from `directory`; return {net name: state dict}."""
    directory = Path(directory)
    missing = [f"{name}.npy" for name in NET_NAMES if not (directory / f"{name}.npy").is_file()]
    if missing:
        raise FileNotFoundError(
            f"MTCNN weight files {missing} not found in {directory}; the directory must contain "
            "pnet.npy, rnet.npy and onet.npy"
        )
    return {name: read_official_npy(directory / f"{name}.npy") for name in NET_NAMES}


def split_flat_state_dict(flat_state):
    """Split a flat {'pnet.…', 'rnet.…', 'onet.…'} state dict into one dict per net.

    Raises KeyError naming any key without one of the three prefixes, or a net with no keys.
    """
    per_net = {name: {} for name in NET_NAMES}
    unknown = []
    for key, value in flat_state.items():
        prefix, _, rest = key.partition(".")
        if prefix in per_net and rest:
            per_net[prefix][rest] = np.asarray(value)
        else:
            unknown.append(key)
    if unknown:
        raise KeyError(
            f"MTCNN state dict keys without a pnet./rnet./onet. prefix: {unknown[:5]}; pass only the "
            "three nets' weights, each key prefixed with its net name"
        )
    empty = [name for name, state in per_net.items() if not state]
    if empty:
        raise KeyError(f"MTCNN state dict has no keys for {empty}; expected prefixes pnet., rnet., onet.")
    return per_net
