"""Paper-size DEX and LPIPS state_dict layouts against the manifests of the official modules."""

import json

import numpy as np
import pytest
from paddle import nn

from pipeline.checkpoint.pretrained import WeightsMismatchError
from pipeline.models.dex_vgg import DexVGG, load_official_dex_weights
from pipeline.models.lpips import LPIPS, lpips_state_from_official


def _manifest(reference_dir, name):
    return json.loads((reference_dir / "manifests" / name).read_text())


def _official_layout(model):
    """Return [key, shape, dtype] rows with nn.Linear weights turned back to [out, in]."""
    linear_weights = {f"{name}.weight" for name, layer in model.named_sublayers() if isinstance(layer, nn.Linear)}
    rows = []
    for key, tensor in model.state_dict().items():
        shape = list(tensor.shape)
        if key in linear_weights:
            shape = shape[::-1]
        rows.append([key, shape, str(tensor.dtype).replace("paddle.", "")])
    return rows


def _float_elements(rows):
    return sum(int(np.prod(shape)) for _, shape, dtype in rows if dtype.startswith("float"))


@pytest.fixture(scope="module")
def paper_dex():
    return DexVGG()


@pytest.fixture(scope="module")
def paper_lpips():
    return LPIPS(net="alex")


@pytest.mark.parametrize(
    "model_fixture, manifest_name",
    [("paper_dex", "dex_age_classifier.json"), ("paper_lpips", "lpips_alex.json")],
)
class TestManifest:
    def test_keys_and_shapes(self, request, reference_dir, model_fixture, manifest_name):
        rows = _official_layout(request.getfixturevalue(model_fixture))
        manifest = _manifest(reference_dir, manifest_name)
        assert rows == manifest["state_dict"]

    def test_entry_count(self, request, reference_dir, model_fixture, manifest_name):
        rows = _official_layout(request.getfixturevalue(model_fixture))
        assert len(rows) == _manifest(reference_dir, manifest_name)["num_entries"]

    def test_float_element_count(self, request, reference_dir, model_fixture, manifest_name):
        rows = _official_layout(request.getfixturevalue(model_fixture))
        assert _float_elements(rows) == _manifest(reference_dir, manifest_name)["num_float_elements"]


def test_lpips_buffers_persistable(paper_lpips):
    buffer_names = {name for name, _ in paper_lpips.named_buffers()}
    assert {"net.mean", "net.std"} <= buffer_names
    assert {"net.mean", "net.std"} <= set(paper_lpips.state_dict())


def test_lpips_upstream_file_keys_convert(reference_dir, paper_lpips):
    """The torchvision AlexNet and PerceptualSimilarity key layouts map onto our keys."""
    files = _manifest(reference_dir, "lpips_alex.json")["checkpoint_structure"]
    alexnet_state = {key: np.zeros(shape, np.float32) for key, shape, _ in files["alexnet_weights"]["file_state_dict"]}
    lin_state = {key: np.zeros(shape, np.float32) for key, shape, _ in files["lin_weights"]["file_keys"]}

    state = lpips_state_from_official(alexnet_state, lin_state)
    own_state = paper_lpips.state_dict()
    assert sorted(state) == sorted(own_state)
    for key, tensor in own_state.items():
        assert list(state[key].shape) == list(tensor.shape), key


def _hyphenated_official_state(dex):
    """Return `dex`'s weights in the official layout, spelled 'fc8-101' as the file may be."""
    state = {}
    for key, tensor in dex.state_dict().items():
        value = tensor.numpy()
        if key.startswith("fc") and key.endswith(".weight"):
            value = value.T
        state[key.replace("fc8_101", "fc8-101")] = value
    return {"state_dict": state}


def test_dex_loader_renames_hyphens_and_transposes():
    source = DexVGG(conv_widths=(4, 8, 16, 32, 32), fc_width=64)
    target = DexVGG(conv_widths=(4, 8, 16, 32, 32), fc_width=64)

    load_official_dex_weights(target, _hyphenated_official_state(source))

    for key, tensor in source.state_dict().items():
        np.testing.assert_array_equal(target.state_dict()[key].numpy(), tensor.numpy(), err_msg=key)


def test_dex_loader_rejects_missing_key():
    dex = DexVGG(conv_widths=(4, 8, 16, 32, 32), fc_width=64)
    official = _hyphenated_official_state(dex)
    del official["state_dict"]["conv3_2.bias"]

    with pytest.raises(WeightsMismatchError, match=r"1 missing keys .*conv3_2\.bias"):
        load_official_dex_weights(dex, official)


def test_dex_loader_rejects_wrong_width():
    official = _hyphenated_official_state(DexVGG(conv_widths=(4, 8, 16, 32, 32), fc_width=64))
    with pytest.raises(WeightsMismatchError, match=r"fc6\.weight: file \[1568, 64\]"):
        load_official_dex_weights(DexVGG(conv_widths=(4, 8, 16, 32, 32), fc_width=32), official)
