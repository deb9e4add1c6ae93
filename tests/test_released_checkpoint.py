"""A converted released-format SAM checkpoint starts training and runs inference."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from pipeline.checkpoint.convert import convert_files
from tests.helpers import REPO_ROOT, build_shards, run_env, train_command

# The reduced SAM of the reference case: the tiny config's encoders with an 8-layer mapping network.
CASE_MODEL = ["model.n_mlp=8", "model.generator_channels={4: 32, 8: 32, 16: 32, 32: 32}"]


@pytest.fixture(scope="module")
def converted_sam(golden, tmp_path_factory):
    case = golden("d_sam_forward_small")
    path = tmp_path_factory.mktemp("weights") / "sam_small.safetensors"
    convert_files([case.weights_path], path)
    return path


def test_training_starts_from_converted_sam(converted_sam, faces_dir, tmp_path):
    shards = build_shards(faces_dir / "ffhq", tmp_path / "shards", samples_per_shard=5)
    out = tmp_path / "run"
    overrides = [f"data.train_shards={shards}", f"output_dir={out}", f"weights.sam={converted_sam}",
                 "train.max_steps=1", "train.save_interval=1", "train.log_interval=1", "data.num_workers=0",
                 *CASE_MODEL]
    result = subprocess.run(train_command(1, out, overrides), cwd=REPO_ROOT, env=run_env(),
                            capture_output=True, text=True, timeout=600)
    logs = result.stdout + result.stderr
    assert result.returncode == 0, logs
    assert "loaded sam weights from" in logs
    assert "no weights for the StyleGAN2 generator" not in logs
    assert [json.loads(line)["step"] for line in (out / "stats.jsonl").read_text().splitlines()] == [1]


def test_inference_runs_on_converted_sam(converted_sam, faces_dir, tmp_path):
    image = sorted((faces_dir / "celeba_hq").iterdir())[0]
    outputs = []
    for attempt in ("a", "b"):
        out = tmp_path / attempt
        command = [sys.executable, str(REPO_ROOT / "launch" / "infer.py"), "-c", str(REPO_ROOT / "configs" / "tiny.yaml"),
                   "--checkpoint", str(converted_sam), "--input", str(image), "--output", str(out), "--ages", "0,50,100"]
        for item in CASE_MODEL:
            command += ["-o", item]
        result = subprocess.run(command, cwd=REPO_ROOT, env=run_env(), capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stdout + result.stderr
        outputs.append(np.asarray(Image.open(out / f"{image.stem}_strip.png")))
    assert outputs[0].shape == (256, 256 * 4, 3)
    np.testing.assert_array_equal(outputs[0], outputs[1])


def test_mismatched_model_config_names_the_keys(converted_sam, tmp_path):
    command = [sys.executable, str(REPO_ROOT / "launch" / "infer.py"), "-c", str(REPO_ROOT / "configs" / "tiny.yaml"),
               "--checkpoint", str(converted_sam), "--input", str(REPO_ROOT / "demo" / "faces" / "ffhq" / "00000.png"),
               "--output", str(tmp_path / "out")]
    result = subprocess.run(command, cwd=REPO_ROOT, env=run_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "--checkpoint" in result.stderr
    assert "decoder.style" in result.stderr
