"""MTCNN nets have the official state_dict layout and load the official weight formats."""

import json
import os
import pickle

import numpy as np
import pytest

from pipeline.checkpoint.pretrained import WeightsMismatchError
from pipeline.checkpoint.torch_format import load_torch_file
from pipeline.models.mtcnn import MTCNN, ONet, PNet, RNet, load_official_weights, read_official_npy
from pipeline.models.mtcnn.nets import linear_weight_keys
from pipeline.models.mtcnn.weights import NET_NAMES, split_flat_state_dict

NET_CLASSES = {"pnet": PNet, "rnet": RNet, "onet": ONet}
ENTRY_COUNTS = {"pnet": 13, "rnet": 16, "onet": 21}


@pytest.fixture(scope="module")
def manifest(reference_dir):
    return json.loads((reference_dir / "manifests" / "mtcnn.json").read_text())


def official_shapes(net):
    """Return {key: shape} of `net` with nn.Linear weights in the official [out, in] layout."""
    transposed = linear_weight_keys(net)
    return {
        key: list(reversed(value.shape)) if key in transposed else list(value.shape)
        for key, value in net.state_dict().items()
    }


@pytest.mark.parametrize("name", NET_NAMES)
def test_keys_match_manifest_in_order(manifest, name):
    expected = [key for key, _, _ in manifest["nets"][name]["state_dict"]]
    assert list(NET_CLASSES[name]().state_dict()) == expected
    assert len(expected) == ENTRY_COUNTS[name]


@pytest.mark.parametrize("name", NET_NAMES)
def test_shapes_match_manifest(manifest, name):
    expected = {key: shape for key, shape, _ in manifest["nets"][name]["state_dict"]}
    assert official_shapes(NET_CLASSES[name]()) == expected


@pytest.mark.parametrize("name", NET_NAMES)
def test_npy_keys_match_manifest(manifest, name):
    npy_keys = [key for key, _, _ in manifest["nets"][name]["npy_keys"]]
    assert npy_keys == list(NET_CLASSES[name]().state_dict())


def test_only_rnet_onet_have_linear_layers():
    assert linear_weight_keys(PNet()) == set()
    assert linear_weight_keys(RNet()) == {"features.conv4.weight", "conv5_1.weight", "conv5_2.weight"}
    assert linear_weight_keys(ONet()) == {"features.conv5.weight", "conv6_1.weight", "conv6_2.weight", "conv6_3.weight"}


# -- weight loading -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def flat_state(golden):
    return load_torch_file(golden("i_mtcnn").weights_path)


@pytest.fixture
def npy_dir(tmp_path, flat_state):
    """Write the case weights as the official pnet.npy, rnet.npy and onet.npy (np.save of a dict)."""
    for name, state in split_flat_state_dict(flat_state).items():
        np.save(tmp_path / f"{name}.npy", state, allow_pickle=True)
    return tmp_path


def test_state_dict_loads_with_linear_transpose(flat_state):
    detector = MTCNN.from_state_dict(flat_state)
    loaded = detector.rnet.state_dict()
    np.testing.assert_array_equal(loaded["features.conv4.weight"].numpy(), flat_state["rnet.features.conv4.weight"].T)
    np.testing.assert_array_equal(loaded["features.conv1.weight"].numpy(), flat_state["rnet.features.conv1.weight"])
    np.testing.assert_array_equal(loaded["features.prelu4.weight"].numpy(), flat_state["rnet.features.prelu4.weight"])


def test_npy_files_load_same_weights(npy_dir, flat_state):
    from_npy = MTCNN.from_npy_dir(npy_dir)
    from_flat = MTCNN.from_state_dict(flat_state)
    for name in NET_NAMES:
        expected = getattr(from_flat, name).state_dict()
        for key, value in getattr(from_npy, name).state_dict().items():
            np.testing.assert_array_equal(value.numpy(), expected[key].numpy(), err_msg=f"{name}.{key}")


def test_npy_file_read_as_float32_dict(npy_dir, flat_state):
    weights = read_official_npy(npy_dir / "onet.npy")
    assert list(weights) == list(ONet().state_dict())
    assert all(value.dtype == np.float32 for value in weights.values())
    np.testing.assert_array_equal(weights["conv6_3.bias"], flat_state["onet.conv6_3.bias"])


class _RunsShellCommand:
    """A pickle payload that would call os.system when unpickled without restrictions."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_npy_with_code_rejected(tmp_path):
    marker = tmp_path / "executed"
    path = tmp_path / "pnet.npy"
    with path.open("wb") as handle:
        np.lib.format.write_array_header_1_0(handle, {"descr": "|O", "fortran_order": False, "shape": ()})
        pickle.dump(_RunsShellCommand(marker), handle, protocol=2)

    with pytest.raises(ValueError, match="system"):
        read_official_npy(path)
    assert not marker.exists()


def test_npy_with_plain_array_rejected(tmp_path):
    path = tmp_path / "pnet.npy"
    np.save(path, np.zeros((2, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="dict"):
        read_official_npy(path)


def test_npy_dir_missing_file_named(npy_dir):
    (npy_dir / "rnet.npy").unlink()
    with pytest.raises(FileNotFoundError, match="rnet.npy"):
        MTCNN.from_npy_dir(npy_dir)


def test_state_dict_unknown_prefix_rejected(flat_state):
    state = dict(flat_state)
    state["qnet.conv.weight"] = np.zeros(1, dtype=np.float32)
    with pytest.raises(KeyError, match="qnet.conv.weight"):
        MTCNN.from_state_dict(state)


def test_missing_key_named():
    state = {key: value.numpy() for key, value in PNet().state_dict().items()}
    del state["conv4_2.bias"]
    with pytest.raises(WeightsMismatchError, match="conv4_2.bias"):
        load_official_weights(PNet(), state)


def test_untransposed_linear_weight_rejected():
    state = {key: value.numpy() for key, value in RNet().state_dict().items()}  # Paddle [in, out]
    with pytest.raises(WeightsMismatchError, match="features.conv4.weight"):
        load_official_weights(RNet(), state)
