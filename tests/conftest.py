"""Shared fixtures: where the reference data and the real faces live."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# The reference data and face samples sit in a `shared` folder beside the clone.
# SAM_SHARED_DIR points elsewhere when needed.
SHARED_DIR = Path(os.environ.get("SAM_SHARED_DIR", REPO_ROOT.parent / "shared"))
REFERENCE_DIR = SHARED_DIR / "reference"
FACES_DIR = SHARED_DIR / "data" / "faces"


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"reference data not found at {path}; set SAM_SHARED_DIR to the shared folder")
    return path


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    return _require(REFERENCE_DIR)


@pytest.fixture(scope="session")
def faces_dir() -> Path:
    return _require(FACES_DIR)


class GoldenCase:
    """One parity case: its folder, its case.json and its io.npz arrays."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.meta = json.loads((folder / "case.json").read_text())
        self.io = dict(np.load(folder / "io.npz"))

    @property
    def weights_path(self) -> Path:
        return self.folder / "weights.pt"


@pytest.fixture(scope="session")
def golden():
    """Return a loader: golden("b_stylegan2_generator_small") -> GoldenCase."""
    cache = {}

    def load(name: str) -> GoldenCase:
        if name not in cache:
            cache[name] = GoldenCase(_require(REFERENCE_DIR / "golden" / name))
        return cache[name]

    return load
