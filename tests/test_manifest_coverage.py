"""Prove the converter maps every entry of every official checkpoint layout onto our paper-size modules.

For each model manifest (the official [key, shape, dtype] list at paper size) a fake checkpoint
is built whose entry i contains the constant i + 1. It goes through the converter and is loaded
strictly into our paper-size module. Reading the constants back shows where every entry landed:
each manifest entry must fill exactly one of our parameters or buffers, under the expected name,
with the manifest shape (transposed for paddle.nn.Linear weights), and none of ours is left over.

The SAM and pSp fakes (2.3 GB and 1.2 GB of float32) go through the converter in memory, which
skips only the file reader. The file readers are covered with real files for the other models
and in test_torch_format.py.
"""

import collections
import json

import numpy as np
import paddle
import pytest

from pipeline.checkpoint.convert import Source, convert_files, convert_sources, write_safetensors
from pipeline.checkpoint.pretrained import load_weights
from pipeline.config import ModelConfig
from pipeline.models.dex_vgg import DexVGG
from pipeline.models.irse import ir101, ir_se50
from pipeline.models.lpips import LPIPS
from pipeline.models.mtcnn import ONet, PNet, RNet
from pipeline.models.sam import SAM
from tests.test_torch_format import write_torch_file

README_OPTIONS = {"input_nc": 4, "output_size": 1024, "start_from_encoded_w_plus": True}


# ----------------------------------------------------------------------------------------------
# Helpers.


def load_manifest(reference_dir, name):
    return json.loads((reference_dir / "manifests" / f"{name}.json").read_text())


def tagged_state(entries, first_tag=1):
    """Return {key: array} where entry i is filled with the constant first_tag + i."""
    state = collections.OrderedDict()
    for index, (key, shape, dtype) in enumerate(entries):
        state[key] = np.full(shape, first_tag + index, dtype=dtype)
    return state


def build_without_init(factory):
    """Build a paper-size layer without drawing its random initial values.

    Under paddle.LazyGuard a parameter gets memory only when set, so every value read back
    later comes from the converted file, and SAM skips drawing 567 million random values.
    """
    with paddle.LazyGuard():
        return factory()


def in_memory_source(name, tensors, top_level):
    return Source(path=f"<fake {name}>", file_format="torch_zip", sha256="0" * 64, tensors=tensors, top_level=top_level)


def official_name(our_key):
    """Return the official key of one of our keys (BatchNorm running statistics renamed back)."""
    prefix, _, leaf = our_key.rpartition(".")
    leaf = {"_mean": "running_mean", "_variance": "running_var"}.get(leaf, leaf)
    return f"{prefix}.{leaf}" if prefix else leaf


def linear_weight_keys(layer):
    return {f"{name}.weight" for name, sub in layer.named_sublayers() if isinstance(sub, paddle.nn.Linear)}


def read_tag(tensor, key):
    values = tensor.numpy().ravel()
    assert values.size > 0, f"{key} is empty"
    assert values.min() == values.max(), f"{key} holds several source entries"
    return int(values[0])


def assert_exact_coverage(layer, entries, to_official=official_name, first_tag=1, our_prefix=""):
    """Check each manifest entry filled exactly one layer entry, with the right name and shape."""
    transposed = linear_weight_keys(layer)
    tag_owner = {}
    for key, tensor in layer.state_dict().items():
        tag = read_tag(tensor, key)
        index = tag - first_tag
        assert 0 <= index < len(entries), f"{key} holds tag {tag}, which no manifest entry has"
        assert index not in tag_owner, f"manifest entry {entries[index][0]} filled both {tag_owner[index]} and {key}"
        tag_owner[index] = key

        manifest_key, manifest_shape, _ = entries[index]
        assert to_official(our_prefix + key) == manifest_key, f"{key} was filled from {manifest_key}"
        expected_shape = manifest_shape[::-1] if key in transposed else manifest_shape
        assert list(tensor.shape) == expected_shape, f"{key}: shape {list(tensor.shape)}, manifest {manifest_shape}"

    unused = [entries[index][0] for index in range(len(entries)) if index not in tag_owner]
    assert not unused, f"manifest entries that reached no parameter or buffer: {unused[:10]}"


@pytest.fixture(scope="module")
def paper_sam():
    """Return a getter for one paper-size SAM (age encoder, pSp encoder, 1024 px generator)."""
    cache = {}

    def get():
        if "sam" not in cache:
            cache["sam"] = build_without_init(lambda: SAM(ModelConfig()))
        return cache["sam"]

    return get


# ----------------------------------------------------------------------------------------------
# pSp family: SAM, pSp encoder, StyleGAN2 generator.


def test_sam_manifest_covered(reference_dir, tmp_path, paper_sam):
    manifest = load_manifest(reference_dir, "sam_ffhq_aging")
    entries = manifest["state_dict"]
    latent_tag = len(entries) + 1
    top_level = {
        "_container": "state_dict",
        "opts": README_OPTIONS,
        "latent_avg": np.full((18, 512), latent_tag, dtype=np.float32),
    }
    conversion = convert_sources([in_memory_source("sam_ffhq_aging.pt", tagged_state(entries), top_level)])
    assert len(conversion.tensors) == manifest["num_entries"] + 1
    assert conversion.num_float_elements == manifest["num_float_elements"] + 18 * 512
    destination = tmp_path / "sam.safetensors"
    write_safetensors(conversion, destination)
    del conversion

    sam = paper_sam()
    loaded = load_weights(sam, destination, "sam", config_option="weights.sam")

    sam_entries = entries + [["latent_avg", [18, 512], "float32"]]
    assert_exact_coverage(sam, sam_entries)
    assert loaded.opts == README_OPTIONS


def test_psp_manifest_covered(reference_dir, tmp_path, paper_sam):
    manifest = load_manifest(reference_dir, "psp_ffhq_encode")
    entries = manifest["state_dict"]
    top_level = {"_container": "state_dict", "opts": {"input_nc": 3}, "latent_avg": np.zeros((18, 512), np.float32)}
    conversion = convert_sources([in_memory_source("psp_ffhq_encode.pt", tagged_state(entries), top_level)])
    assert conversion.num_float_elements == manifest["num_float_elements"] + 18 * 512
    destination = tmp_path / "psp.safetensors"
    write_safetensors(conversion, destination)
    del conversion

    sam = paper_sam()
    loaded = load_weights(sam.pretrained_encoder, destination, "psp_encoder", prefix="encoder.")
    load_weights(sam.decoder, destination, "psp_encoder", prefix="decoder.")

    encoder_entries = [entry for entry in entries if entry[0].startswith("encoder.")]
    decoder_entries = [entry for entry in entries if entry[0].startswith("decoder.")]
    assert len(encoder_entries) + len(decoder_entries) == manifest["num_entries"]
    assert_exact_coverage(sam.pretrained_encoder, encoder_entries, first_tag=1, our_prefix="encoder.")
    assert_exact_coverage(sam.decoder, decoder_entries, first_tag=1 + len(encoder_entries), our_prefix="decoder.")
    assert list(loaded.extras["latent_avg"].shape) == [18, 512]


def test_stylegan_manifest_covered(reference_dir, tmp_path, paper_sam):
    manifest = load_manifest(reference_dir, "stylegan2_ffhq_config_f_g_ema")
    entries = manifest["state_dict"]
    source = tmp_path / "stylegan2-ffhq-config-f.pt"
    write_torch_file(source, {"g_ema": tagged_state(entries), "latent_avg": np.zeros(512, dtype=np.float32)})

    conversion = convert_files([source], tmp_path / "stylegan.safetensors")
    generator = paper_sam().decoder
    loaded = load_weights(generator, tmp_path / "stylegan.safetensors", "stylegan", config_option="weights.stylegan")

    assert conversion.num_float_elements == manifest["num_float_elements"] + 512
    assert_exact_coverage(generator, entries)
    assert list(loaded.extras["latent_avg"].shape) == [512]


# ----------------------------------------------------------------------------------------------
# Identity, age and perceptual networks.


def test_irse50_manifest_covered(reference_dir, tmp_path):
    manifest = load_manifest(reference_dir, "model_ir_se50")
    entries = manifest["state_dict"]
    source = tmp_path / "model_ir_se50.pth"
    write_torch_file(source, tagged_state(entries), legacy=True)

    conversion = convert_files([source], tmp_path / "irse50.safetensors")
    backbone = build_without_init(ir_se50)
    load_weights(backbone, tmp_path / "irse50.safetensors", "irse50", config_option="weights.irse50")

    assert conversion.kind.name == "irse50"
    assert conversion.num_float_elements == manifest["num_float_elements"]
    assert_exact_coverage(backbone, entries)


def test_curricularface_manifest_covered(reference_dir, tmp_path):
    manifest = load_manifest(reference_dir, "curricularface_ir101")
    entries = manifest["state_dict"]
    source = tmp_path / "CurricularFace_Backbone.pth"
    write_torch_file(source, tagged_state(entries))

    conversion = convert_files([source], tmp_path / "curricularface.safetensors")
    backbone = build_without_init(ir101)
    load_weights(backbone, tmp_path / "curricularface.safetensors", "curricularface")

    assert conversion.kind.name == "curricularface"
    assert conversion.num_float_elements == manifest["num_float_elements"]
    assert_exact_coverage(backbone, entries)


def test_dex_manifest_covered(reference_dir, tmp_path):
    manifest = load_manifest(reference_dir, "dex_age_classifier")
    entries = manifest["state_dict"]
    source = tmp_path / "dex_age_classifier.pth"
    write_torch_file(source, {"state_dict": tagged_state(entries)})

    conversion = convert_files([source], tmp_path / "dex.safetensors")
    dex = build_without_init(DexVGG)
    load_weights(dex, tmp_path / "dex.safetensors", "dex", config_option="weights.dex")

    assert conversion.num_float_elements == manifest["num_float_elements"]
    assert linear_weight_keys(dex) == {"fc6.weight", "fc7.weight", "fc8_101.weight"}
    assert_exact_coverage(dex, entries)


def test_lpips_manifest_covered(reference_dir, tmp_path):
    manifest = load_manifest(reference_dir, "lpips_alex")
    entries = manifest["state_dict"]
    source = tmp_path / "lpips.pth"
    write_torch_file(source, tagged_state(entries))

    conversion = convert_files([source], tmp_path / "lpips.safetensors")
    lpips = LPIPS()
    load_weights(lpips, tmp_path / "lpips.safetensors", "lpips")

    assert conversion.num_float_elements == manifest["num_float_elements"]
    assert_exact_coverage(lpips, entries)


def _upstream_lpips_name(our_key):
    """Return the key of one of our LPIPS entries in the two upstream files (None for constants)."""
    if our_key.startswith("net.layers."):
        return "features." + our_key[len("net.layers.") :]
    if our_key.startswith("lin."):
        _, index, rest = our_key.split(".", 2)
        return f"lin{index}.model.{rest}"
    return None


def test_lpips_upstream_layouts_covered(reference_dir, tmp_path):
    layouts = load_manifest(reference_dir, "lpips_alex")["checkpoint_structure"]
    alexnet_entries = layouts["alexnet_weights"]["file_state_dict"]
    lin_entries = layouts["lin_weights"]["file_keys"]
    alexnet_path, lin_path = tmp_path / "alexnet-owt-7be5be79.pth", tmp_path / "alex.pth"
    write_torch_file(alexnet_path, tagged_state(alexnet_entries))
    write_torch_file(lin_path, tagged_state(lin_entries, first_tag=1 + len(alexnet_entries)))

    conversion = convert_files([alexnet_path, lin_path], tmp_path / "lpips.safetensors")
    lpips = LPIPS()
    load_weights(lpips, tmp_path / "lpips.safetensors", "lpips")

    upstream_entries = alexnet_entries + lin_entries
    used = [entry for entry in upstream_entries if not entry[0].startswith("classifier.")]
    filled = {}
    for key, tensor in lpips.state_dict().items():
        if key in ("net.mean", "net.std"):
            continue  # constants of the official code, not in either file
        index = read_tag(tensor, key) - 1
        upstream_key, upstream_shape, _ = upstream_entries[index]
        assert _upstream_lpips_name(key) == upstream_key, f"{key} was filled from {upstream_key}"
        assert list(tensor.shape) == upstream_shape, key
        filled[upstream_key] = key
    assert sorted(filled) == sorted(entry[0] for entry in used)
    assert sorted(entry.split(" ")[0] for entry in conversion.ignored) == sorted(
        entry[0] for entry in upstream_entries if entry[0].startswith("classifier.")
    )


# ----------------------------------------------------------------------------------------------
# MTCNN.


@pytest.mark.parametrize("from_npy", [True, False], ids=["npy_files", "flat_state_dict"])
def test_mtcnn_manifest_covered(reference_dir, tmp_path, from_npy):
    nets = load_manifest(reference_dir, "mtcnn")["nets"]
    first_tags, next_tag = {}, 1
    for name, net in nets.items():
        first_tags[name] = next_tag
        next_tag += len(net["npy_keys"])

    if from_npy:
        sources = []
        for name, net in nets.items():
            assert [key for key, _, _ in net["npy_keys"]] == [key for key, _, _ in net["state_dict"]]
            path = tmp_path / net["npy_file"]
            np.save(path, dict(tagged_state(net["npy_keys"], first_tags[name])), allow_pickle=True)
            sources.append(path)
    else:
        flat = {}
        for name, net in nets.items():
            for key, value in tagged_state(net["state_dict"], first_tags[name]).items():
                flat[f"{name}.{key}"] = value
        sources = [tmp_path / "mtcnn.pt"]
        write_torch_file(sources[0], flat)

    convert_files(sources, tmp_path / "mtcnn.safetensors")

    for name, layer in (("pnet", PNet()), ("rnet", RNet()), ("onet", ONet())):
        load_weights(layer, tmp_path / "mtcnn.safetensors", "mtcnn", config_option="weights.mtcnn", prefix=f"{name}.")
        assert_exact_coverage(layer, nets[name]["state_dict"], first_tag=first_tags[name])
