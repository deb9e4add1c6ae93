"""Tests for the checkpoint converter, its CLI and the strict weight loader, on the real
reference checkpoints and on hand-written variants of them (other layouts and wrappers)."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import paddle
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

from checkpoints.convert import main as convert_main
from pipeline.checkpoint.convert import FORMAT_TAG, ConversionError, convert_files
from pipeline.checkpoint.pretrained import WeightsMismatchError, load_weights
from pipeline.checkpoint.torch_format import load_torch_file
from pipeline.config import ModelConfig
from pipeline.models.dex_vgg import DexVGG
from pipeline.models.encoders import GradualStyleEncoder
from pipeline.models.irse import Backbone
from pipeline.models.lpips import LPIPS, LPIPS_SCALE, LPIPS_SHIFT
from pipeline.models.mtcnn import ONet, PNet, RNet
from pipeline.models.sam import SAM
from pipeline.models.stylegan2 import Generator
from tests.test_torch_format import write_torch_file

REPO_ROOT = Path(__file__).resolve().parents[1]
SMALL_SAM_CONFIG = dict(
    output_size=32, style_dim=64, n_mlp=8, generator_channels={4: 32, 8: 32, 16: 32, 32: 32}, encoder_widths=[8, 16, 32, 64]
)


def small_generator():
    return Generator(32, 64, 2, channel_multiplier=2, channels={4: 32, 8: 32, 16: 32, 32: 16})


def small_sam():
    return SAM(ModelConfig(**SMALL_SAM_CONFIG))


def small_dex():
    return DexVGG(conv_widths=(4, 8, 16, 32, 32), fc_width=64)


def small_irse50():
    return Backbone(112, 50, "ir_se", 0.6, True, stage_widths=(4, 8, 16, 32), embedding_size=32)


def official_key(our_key):
    """Invert the BatchNorm rename: our `_mean`/`_variance` are torch's running statistics."""
    prefix, _, leaf = our_key.rpartition(".")
    leaf = {"_mean": "running_mean", "_variance": "running_var"}.get(leaf, leaf)
    return f"{prefix}.{leaf}" if prefix else leaf


def linear_weight_keys(layer):
    """Return the state_dict keys of every paddle.nn.Linear weight, found by walking the layer."""
    return {f"{name}.weight" for name, sub in layer.named_sublayers() if isinstance(sub, paddle.nn.Linear)}


def assert_layer_matches_official(layer, official_state, prefix=""):
    """Check every layer entry equals its official tensor (transposed for paddle.nn.Linear weights)."""
    transposed = linear_weight_keys(layer)
    for key, tensor in layer.state_dict().items():
        expected = np.asarray(official_state[prefix + official_key(key)])
        if key in transposed:
            expected = expected.T
        np.testing.assert_array_equal(tensor.numpy(), expected, err_msg=key)


def convert(tmp_path, sources, name="out.safetensors", kind=None):
    destination = tmp_path / name
    convert_files([str(source) for source in sources], destination, forced_kind=kind)
    return destination


def read_metadata(path):
    with safe_open(str(path), framework="np") as file:
        return file.metadata()


# ----------------------------------------------------------------------------------------------
# Reference checkpoints: convert, load strictly, compare every value.


def test_stylegan_reference_converts(golden, tmp_path):
    case = golden("b_stylegan2_generator_small")
    generator = small_generator()

    loaded = load_weights(generator, convert(tmp_path, [case.weights_path]), "stylegan")

    assert loaded.kind == "stylegan"
    assert_layer_matches_official(generator, load_torch_file(case.weights_path))


def test_sam_reference_converts(golden, tmp_path):
    case = golden("d_sam_forward_small")
    checkpoint = load_torch_file(case.weights_path)
    sam = small_sam()

    loaded = load_weights(sam, convert(tmp_path, [case.weights_path]), "sam", config_option="weights.sam")

    official = dict(checkpoint["state_dict"], latent_avg=checkpoint["latent_avg"])
    assert_layer_matches_official(sam, official)
    # JSON turns the int keys of dict options into strings.
    assert loaded.opts == json.loads(json.dumps(checkpoint["opts"]))
    assert loaded.extras == {}


def test_sam_reference_metadata(golden, tmp_path):
    case = golden("d_sam_forward_small")

    metadata = read_metadata(convert(tmp_path, [case.weights_path]))

    assert metadata["format"] == FORMAT_TAG
    assert metadata["kind"] == "sam"
    assert metadata["source_sha256"] == hashlib.sha256(case.weights_path.read_bytes()).hexdigest()
    assert json.loads(metadata["opts"])["start_from_encoded_w_plus"] is True


def test_dex_reference_transposes_fc(golden, tmp_path):
    case = golden("e_dex_aging_loss")
    dex = small_dex()

    load_weights(dex, convert(tmp_path, [case.weights_path]), "dex")

    assert linear_weight_keys(dex) == {"fc6.weight", "fc7.weight", "fc8_101.weight"}
    assert_layer_matches_official(dex, load_torch_file(case.weights_path)["state_dict"])


def test_irse50_legacy_reference_converts(golden, tmp_path):
    case = golden("f_id_loss_irse50")
    backbone = small_irse50()

    load_weights(backbone, convert(tmp_path, [case.weights_path]), "irse50")

    assert linear_weight_keys(backbone) == {"output_layer.3.weight"}
    assert_layer_matches_official(backbone, load_torch_file(case.weights_path))
    assert backbone.state_dict()["input_layer.1.num_batches_tracked"].shape == []


def test_lpips_reference_converts(golden, tmp_path):
    case = golden("g_lpips_alex")
    lpips = LPIPS()

    load_weights(lpips, convert(tmp_path, [case.weights_path]), "lpips")

    assert_layer_matches_official(lpips, load_torch_file(case.weights_path))


def test_mtcnn_reference_converts(golden, tmp_path):
    case = golden("i_mtcnn")
    destination = convert(tmp_path, [case.weights_path])
    official = load_torch_file(case.weights_path)

    for name, net in (("pnet", PNet()), ("rnet", RNet()), ("onet", ONet())):
        load_weights(net, destination, "mtcnn", prefix=f"{name}.")
        assert_layer_matches_official(net, official, prefix=f"{name}.")


# ----------------------------------------------------------------------------------------------
# Other upstream file layouts.


def test_mtcnn_from_npy_files(golden, tmp_path):
    flat = load_torch_file(golden("i_mtcnn").weights_path)
    weights_dir = tmp_path / "weights"
    weights_dir.mkdir()
    for name in ("pnet", "rnet", "onet"):
        per_net = {key[len(name) + 1 :]: value for key, value in flat.items() if key.startswith(name + ".")}
        np.save(weights_dir / f"{name}.npy", per_net, allow_pickle=True)

    from_dir = convert(tmp_path, [weights_dir], "from_dir.safetensors")
    from_files = convert(tmp_path, sorted(weights_dir.iterdir()), "from_files.safetensors")

    onet = ONet()
    load_weights(onet, from_dir, "mtcnn", prefix="onet.")
    assert_layer_matches_official(onet, flat, prefix="onet.")
    assert read_metadata(from_files)["kind"] == "mtcnn"


def test_mtcnn_missing_net_rejected(golden, tmp_path):
    flat = load_torch_file(golden("i_mtcnn").weights_path)
    pnet_path = tmp_path / "pnet.npy"
    np.save(pnet_path, {key[5:]: value for key, value in flat.items() if key.startswith("pnet.")}, allow_pickle=True)
    rnet_path = tmp_path / "rnet.npy"
    np.save(rnet_path, {key[5:]: value for key, value in flat.items() if key.startswith("rnet.")}, allow_pickle=True)

    with pytest.raises(ConversionError, match=r"onet\.npy"):
        convert(tmp_path, [pnet_path, rnet_path])


def _split_lpips_upstream(lpips_state, tmp_path):
    """Write the two upstream LPIPS files (torchvision AlexNet, PerceptualSimilarity heads)."""
    rng = np.random.default_rng(0)
    alexnet = {key.replace("net.layers.", "features."): value for key, value in lpips_state.items() if key.startswith("net.layers.")}
    alexnet["classifier.1.weight"] = rng.standard_normal((8, 4)).astype(np.float32)
    alexnet["classifier.1.bias"] = np.zeros(8, dtype=np.float32)
    heads = {f"lin{key.split('.')[1]}.model.1.weight": value for key, value in lpips_state.items() if key.startswith("lin.")}
    alexnet_path, heads_path = tmp_path / "alexnet-owt-7be5be79.pth", tmp_path / "alex.pth"
    write_torch_file(alexnet_path, alexnet)
    write_torch_file(heads_path, heads, legacy=True)
    return alexnet_path, heads_path


def test_lpips_from_two_upstream_files(golden, tmp_path):
    official = load_torch_file(golden("g_lpips_alex").weights_path)
    alexnet_path, heads_path = _split_lpips_upstream(official, tmp_path)
    lpips = LPIPS()

    load_weights(lpips, convert(tmp_path, [alexnet_path, heads_path]), "lpips")

    assert_layer_matches_official(lpips, official)
    np.testing.assert_allclose(lpips.state_dict()["net.mean"].numpy().ravel(), LPIPS_SHIFT, rtol=1e-6)
    np.testing.assert_allclose(lpips.state_dict()["net.std"].numpy().ravel(), LPIPS_SCALE, rtol=1e-6)


def test_lpips_single_upstream_file_rejected(golden, tmp_path):
    official = load_torch_file(golden("g_lpips_alex").weights_path)
    alexnet_path, _ = _split_lpips_upstream(official, tmp_path)

    with pytest.raises(ConversionError, match="also needs: LPIPS v0.1 linear heads"):
        convert(tmp_path, [alexnet_path])


def test_dex_hyphen_keys_renamed(golden, tmp_path):
    state = load_torch_file(golden("e_dex_aging_loss").weights_path)["state_dict"]
    hyphenated = {key.replace("fc8_101", "fc8-101").replace("conv1_1", "conv1-1"): value for key, value in state.items()}
    source = tmp_path / "dex_age_classifier.pth"
    write_torch_file(source, {"state_dict": hyphenated})
    dex = small_dex()

    load_weights(dex, convert(tmp_path, [source]), "dex")

    assert_layer_matches_official(dex, state)


def test_stylegan_file_with_g_ema_and_latent_avg(golden, tmp_path):
    g_ema = load_torch_file(golden("b_stylegan2_generator_small").weights_path)
    latent_avg = np.arange(64, dtype=np.float32)
    source = tmp_path / "stylegan2-ffhq-config-f.pt"
    write_torch_file(source, {"g_ema": g_ema, "latent_avg": latent_avg, "d": {"convs.0.0.weight": np.zeros(3, np.float32)}})
    generator = small_generator()

    conversion = convert_files([source], tmp_path / "g.safetensors")
    loaded = load_weights(generator, tmp_path / "g.safetensors", "stylegan")

    np.testing.assert_array_equal(loaded.extras["latent_avg"], latent_avg)
    assert_layer_matches_official(generator, g_ema)
    assert any(entry.startswith("d ") for entry in conversion.ignored)


def test_psp_file_loads_encoder_by_prefix(golden, tmp_path):
    sam_state = load_torch_file(golden("d_sam_forward_small").weights_path)["state_dict"]
    psp_state = {}
    for key, value in sam_state.items():
        if key.startswith("pretrained_encoder."):
            psp_state["encoder." + key[len("pretrained_encoder.") :]] = value
        elif key.startswith("decoder."):
            psp_state[key] = value
    latent_avg = np.ones((8, 64), dtype=np.float32)
    source = tmp_path / "psp_ffhq_encode.pt"
    write_torch_file(source, {"state_dict": psp_state, "opts": {"input_nc": 3}, "latent_avg": latent_avg})
    encoder = GradualStyleEncoder(input_nc=3, n_styles=8, stage_widths=(8, 16, 32, 64), style_dim=64)

    loaded = load_weights(encoder, convert(tmp_path, [source]), "psp_encoder", prefix="encoder.")

    assert loaded.kind == "psp_encoder"
    assert loaded.opts == {"input_nc": 3}
    np.testing.assert_array_equal(loaded.extras["latent_avg"], latent_avg)
    assert_layer_matches_official(encoder, psp_state, prefix="encoder.")


def test_paddle_file_in_our_naming(golden, tmp_path):
    source_layer = small_irse50()
    load_weights(source_layer, convert(tmp_path, [golden("f_id_loss_irse50").weights_path], "ref.safetensors"), "irse50")
    pdparams = tmp_path / "model_ir_se50.pdparams"
    paddle.save(source_layer.state_dict(), str(pdparams))
    target = small_irse50()

    conversion = convert_files([pdparams], tmp_path / "from_paddle.safetensors")
    load_weights(target, tmp_path / "from_paddle.safetensors", "irse50")

    assert conversion.sources[0].layout == "paddle"
    assert conversion.transposed_keys == []
    for key, tensor in source_layer.state_dict().items():
        np.testing.assert_array_equal(target.state_dict()[key].numpy(), tensor.numpy(), err_msg=key)


def test_paddle_port_layout(golden, tmp_path):
    """A paddle-SAM port file: sub-network dicts, no num_batches_tracked, EqualLinear as [in, out]."""
    checkpoint = load_torch_file(golden("d_sam_forward_small").weights_path)
    nested = {"encoder": {}, "decoder": {}, "pretrained_encoder": {}}
    for key, value in checkpoint["state_dict"].items():
        network, _, rest = key.partition(".")
        if rest.endswith("num_batches_tracked"):
            continue
        rest = rest.replace("running_mean", "_mean").replace("running_var", "_variance")
        is_equal_linear = rest.endswith(("modulation.weight", "linear.weight")) or (rest.startswith("style.") and rest.endswith(".weight"))
        nested[network][rest] = value.T if is_equal_linear else value
    source = tmp_path / "sam_ffhq_aging.pdparams"
    paddle.save({"state_dict": nested, "latent_avg": checkpoint["latent_avg"]}, str(source))
    sam = small_sam()

    conversion = convert_files([source], tmp_path / "port.safetensors")
    load_weights(sam, tmp_path / "port.safetensors", "sam")

    assert conversion.sources[0].layout == "paddle_port"
    assert len(conversion.filled_keys) == sum(key.endswith("num_batches_tracked") for key in checkpoint["state_dict"])
    official = dict(checkpoint["state_dict"], latent_avg=checkpoint["latent_avg"])
    for key, tensor in sam.state_dict().items():
        if key.endswith("num_batches_tracked"):
            assert int(tensor.numpy()) == 0, key
        else:
            np.testing.assert_array_equal(tensor.numpy(), official[official_key(key)], err_msg=key)


# ----------------------------------------------------------------------------------------------
# Failures: unmappable keys, unknown kinds, unsafe files, partial outputs.


def test_unmappable_keys_named(golden, tmp_path):
    state = dict(load_torch_file(golden("e_dex_aging_loss").weights_path)["state_dict"])
    state["fc9.weight"] = np.zeros((2, 2), dtype=np.float32)
    source = tmp_path / "dex_extra.pth"
    write_torch_file(source, {"state_dict": state})
    destination = tmp_path / "dex.safetensors"

    with pytest.raises(ConversionError) as error:
        convert_files([source], destination)

    assert "fc9.weight" in str(error.value)
    assert str(source) in str(error.value)
    assert not destination.exists()
    assert not list(tmp_path.glob("*.partial"))


def test_cli_converts_and_prints_summary(golden, tmp_path):
    destination = tmp_path / "sam.safetensors"
    result = subprocess.run(
        [sys.executable, "checkpoints/convert.py", str(golden("d_sam_forward_small").weights_path), str(destination)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert result.returncode == 0, result.stderr
    assert "kind: sam" in result.stdout
    assert "entries: 1044" in result.stdout
    assert "parameters: 3,984,987 float elements" in result.stdout
    assert "latent_avg: [8, 64]" in result.stdout
    assert "opts: 36 options" in result.stdout
    assert destination.is_file()


def test_cli_unknown_kind_exits_nonzero(golden, tmp_path, capsys):
    destination = tmp_path / "a.safetensors"

    status = convert_main([str(golden("a_upfirdn2d_fused_act").weights_path), str(destination)])

    assert status == 1
    message = capsys.readouterr().err
    assert "cannot tell which checkpoint" in message
    assert "up.kernel" in message
    assert not destination.exists()


def test_cli_unmappable_keys_exit_nonzero(golden, tmp_path, capsys):
    state = dict(load_torch_file(golden("f_id_loss_irse50").weights_path))
    state["head.fc.weight"] = np.zeros((2, 2), dtype=np.float32)
    source = tmp_path / "model_ir_se50.pth"
    write_torch_file(source, state, legacy=True)

    status = convert_main([str(source), str(tmp_path / "irse.safetensors")])

    assert status == 1
    message = capsys.readouterr().err
    assert str(source) in message
    assert "head.fc.weight" in message


def test_cli_unsafe_file_rejected(tmp_path, capsys):
    from tests.test_torch_format import _payload

    marker = tmp_path / "marker_created_by_payload"
    source = tmp_path / "evil.pt"
    write_torch_file(source, _payload(marker))

    status = convert_main([str(source), str(tmp_path / "evil.safetensors")])

    assert status == 1
    assert "rejected" in capsys.readouterr().err
    assert not marker.exists()


def test_forced_kind_overrides_detection(golden, tmp_path):
    destination = convert(tmp_path, [golden("f_id_loss_irse50").weights_path], kind="curricularface")

    assert read_metadata(destination)["kind"] == "curricularface"


def test_forced_kind_must_match_sources(golden, tmp_path):
    official = load_torch_file(golden("g_lpips_alex").weights_path)
    alexnet_path, heads_path = _split_lpips_upstream(official, tmp_path)

    with pytest.raises(ConversionError, match="--kind mtcnn does not match the sources, which together form lpips"):
        convert(tmp_path, [alexnet_path, heads_path], kind="mtcnn")


# ----------------------------------------------------------------------------------------------
# load_weights errors.


def test_load_wrong_kind_names_option(golden, tmp_path):
    destination = convert(tmp_path, [golden("e_dex_aging_loss").weights_path])

    with pytest.raises(WeightsMismatchError, match=r"weights\.irse50=.*contains 'dex' weights.*expects irse50"):
        load_weights(small_irse50(), destination, "irse50", config_option="weights.irse50")


def test_load_shape_mismatch_named(golden, tmp_path):
    destination = convert(tmp_path, [golden("e_dex_aging_loss").weights_path])
    wider = DexVGG(conv_widths=(8, 8, 16, 32, 32), fc_width=64)

    with pytest.raises(WeightsMismatchError) as error:
        load_weights(wider, destination, "dex", config_option="weights.dex")

    message = str(error.value)
    assert "weights.dex=" in message
    assert "conv1_1.weight: file [4, 3, 3, 3], layer [8, 3, 3, 3]" in message


def test_load_missing_and_unexpected_named(golden, tmp_path):
    destination = convert(tmp_path, [golden("b_stylegan2_generator_small").weights_path])
    deeper_mapping = Generator(32, 64, 3, channel_multiplier=2, channels={4: 32, 8: 32, 16: 32, 32: 16})

    with pytest.raises(WeightsMismatchError) as error:
        load_weights(deeper_mapping, destination, "stylegan", config_option="weights.stylegan")

    assert "missing keys" in str(error.value)
    assert "style.3.weight" in str(error.value)


def test_load_unexpected_keys_named(golden, tmp_path):
    destination = convert(tmp_path, [golden("i_mtcnn").weights_path])

    with pytest.raises(WeightsMismatchError) as error:
        load_weights(ONet(), destination, "mtcnn", prefix="rnet.")

    assert "unexpected keys" in str(error.value)
    assert "conv5_1.weight" in str(error.value)


def test_load_unconverted_file_rejected(tmp_path):
    path = tmp_path / "plain.safetensors"
    save_file({"w": np.zeros(2, np.float32)}, str(path))

    with pytest.raises(WeightsMismatchError, match="not a converted weight file"):
        load_weights(PNet(), path, "mtcnn", config_option="weights.mtcnn")


def test_load_missing_file_names_option(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"weights\.dex=.*missing\.safetensors: file not found"):
        load_weights(small_dex(), tmp_path / "missing.safetensors", "dex", config_option="weights.dex")
