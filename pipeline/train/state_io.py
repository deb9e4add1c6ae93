"""Save nested state dicts as safetensors (the arrays) plus JSON (everything else), without pickle."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import paddle
from safetensors.numpy import load_file, save_file

TENSOR_REF = "__tensor__"


def _to_numpy(value: Any) -> np.ndarray | None:
    # np.require keeps 0-d arrays 0-d, unlike np.ascontiguousarray.
    if isinstance(value, paddle.Tensor):
        return np.require(value.numpy(), requirements="C")
    if isinstance(value, np.ndarray):
        return np.require(value, requirements="C")
    return None


def _split(tree: Any, prefix: str, arrays: dict) -> Any:
    """Move every array of `tree` into `arrays` and return the JSON-able rest with references."""
    array = _to_numpy(tree)
    if array is not None:
        arrays[prefix] = array
        # The shape is kept beside the reference because safetensors stores 0-d arrays as [1].
        return {TENSOR_REF: prefix, "shape": list(array.shape)}
    if isinstance(tree, dict):
        for key in tree:
            if not isinstance(key, str):
                raise TypeError(f"state key {key!r} under {prefix or 'the root'} is not a string")
        return {key: _split(value, f"{prefix}/{key}" if prefix else key, arrays) for key, value in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [_split(value, f"{prefix}/{i}", arrays) for i, value in enumerate(tree)]
    if isinstance(tree, (np.floating, np.integer, np.bool_)):
        return tree.item()
    if tree is None or isinstance(tree, (bool, int, float, str)):
        return tree
    raise TypeError(f"cannot store {type(tree).__name__} at {prefix or 'the root'} in a checkpoint")


def _join(tree: Any, arrays: dict) -> Any:
    if isinstance(tree, dict):
        if TENSOR_REF in tree:
            return arrays[tree[TENSOR_REF]].reshape(tree["shape"])
        return {key: _join(value, arrays) for key, value in tree.items()}
    if isinstance(tree, list):
        return [_join(value, arrays) for value in tree]
    return tree


def save_tree(path_stem: Path, tree: Any) -> None:
    """Write `<stem>.safetensors` and `<stem>.json`; arrays come back as numpy arrays."""
    arrays: dict = {}
    rest = _split(tree, "", arrays)
    save_file(arrays, str(path_stem) + ".safetensors")
    with open(str(path_stem) + ".json", "w") as f:
        json.dump(rest, f)
        f.flush()
        os.fsync(f.fileno())


def load_tree(path_stem: Path) -> Any:
    """Read a tree written by save_tree."""
    arrays = load_file(str(path_stem) + ".safetensors")
    rest = json.loads(Path(str(path_stem) + ".json").read_text())
    return _join(rest, arrays)
