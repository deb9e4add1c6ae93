"""Evaluation end to end: rank split, checkpoint reports, folder mode, missing weights, validation.

Everything runs real components: shards built from real CelebA-HQ and FFHQ faces, a tiny
checkpoint trained by launch/train.py, real MTCNN weights, and 2-rank jobs started with
paddle.distributed.launch. LPIPS, DEX and IR-101 run on random weights saved in the converted
format, because no pretrained weights are available here.

Run directly, this file is the worker of the 2-rank validation test:
    python -m paddle.distributed.launch --nproc_per_node 2 tests/test_eval_reports.py OUT_DIR CONFIG_JSON
"""

import collections
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import paddle  # noqa: E402

from eval.checkpoint_mode import evaluate_checkpoint  # noqa: E402
from eval.folder_mode import evaluate_folders  # noqa: E402
from eval.metrics import MissingWeightsError, plan_metrics  # noqa: E402
from eval.samples import rank_indices, read_test_images  # noqa: E402
from eval.validation import Validator, is_improvement  # noqa: E402
from pipeline.checkpoint.convert import FORMAT_TAG, convert_files  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.inference import load_sam  # noqa: E402
from pipeline.train.distributed import DistInfo  # noqa: E402

TINY_CONFIG = REPO_ROOT / "configs" / "tiny.yaml"
NUM_TEST_IMAGES = 5  # odd, so two ranks get 3 and 2 images
TEST_IMAGES_PER_SHARD = 2  # the test set spans three shards
AGES = [0, 50, 100]  # configs/tiny.yaml eval.ages
VAL_IMAGES = 3
# The evaluator scores LPIPS and DEX one image at a time, so a sample's scores do not depend on
# which images share its batch, and results with 1 and 2 ranks must be identical.
FLOAT_RTOL = 0.0
FLOAT_FIELDS = ("lpips", "mse", "id_similarity", "predicted_age", "age_error")
LAUNCH_TIMEOUT_SEC = 300


# ---------------------------------------------------------------------------------------------
# Fixtures: shards, weight files and a tiny checkpoint, built once for the module.


def save_converted(layer, path, kind):
    """Write a layer's state in the converted-file format the weight loaders read."""
    from safetensors.numpy import save_file

    state = {key: value.numpy() for key, value in layer.state_dict().items()}
    save_file(state, str(path), metadata={"format": FORMAT_TAG, "kind": kind, "extra_keys": "[]"})
    return path


def build_shards(image_dir, output_dir, samples_per_shard):
    from shards.build import main as build_main

    status = build_main(["--input", str(image_dir), "--output", str(output_dir),
                         "--samples-per-shard", str(samples_per_shard)])
    assert status == 0, f"shards/build.py failed for {image_dir}"
    return output_dir


def build_weight_files(folder, mtcnn_source):
    """Save random LPIPS, tiny DEX and narrow IR-101 weights; convert the real MTCNN weights."""
    from pipeline.models.dex_vgg import DexVGG
    from pipeline.models.irse import Backbone
    from pipeline.models.lpips import LPIPS

    tiny = load_config(str(TINY_CONFIG))
    paddle.seed(1)
    files = {
        "lpips": save_converted(LPIPS(), folder / "lpips.safetensors", "lpips"),
        "dex": save_converted(DexVGG(conv_widths=tuple(tiny.model.dex_conv_widths), fc_width=tiny.model.dex_fc_width),
                              folder / "dex.safetensors", "dex"),
        "curricularface": save_converted(
            Backbone(112, 100, "ir", 0.4, affine=False, stage_widths=(8, 16, 32, 64), embedding_size=32),
            folder / "ir101.safetensors", "curricularface"),
    }
    files["mtcnn"] = folder / "mtcnn.safetensors"
    convert_files([str(mtcnn_source)], files["mtcnn"])
    return files


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, faces_dir, golden):
    root = tmp_path_factory.mktemp("eval")
    test_faces = root / "celeba_faces"
    test_faces.mkdir()
    for path in sorted((faces_dir / "celeba_hq").glob("*.jpg"))[:NUM_TEST_IMAGES]:
        (test_faces / path.name).write_bytes(path.read_bytes())
    weights = build_weight_files(root, golden("i_mtcnn").weights_path)
    overrides = [f"weights.{key}={path}" for key, path in weights.items()]
    overrides += [f"data.train_shards={build_shards(faces_dir / 'ffhq', root / 'ffhq_shards', 1000)}",
                  f"data.test_shards={build_shards(test_faces, root / 'test_shards', TEST_IMAGES_PER_SHARD)}",
                  f"output_dir={root / 'run'}"]

    # Train one step so the checkpoint is a real training checkpoint of the tiny config.
    command = [sys.executable, "launch/train.py", "-c", str(TINY_CONFIG), "-o", "train.max_steps=1",
               "-o", "train.save_interval=1"] + [arg for text in overrides for arg in ("-o", text)]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_SEC)
    assert result.returncode == 0, f"training failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    return {
        "root": root,
        "weights": weights,
        "overrides": overrides,
        "checkpoint": root / "run" / "checkpoints" / "step_1",
        "test_keys": sorted(p.stem for p in test_faces.iterdir()),
    }


def tiny_config(workspace, *extra):
    return load_config(str(TINY_CONFIG), workspace["overrides"] + list(extra))


def run_launch(args, log_dir, nproc=2):
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    command = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", str(nproc),
               "--log_dir", str(log_dir)] + [str(a) for a in args]
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                            timeout=LAUNCH_TIMEOUT_SEC)
    logs = "\n".join(p.read_text() for p in sorted(Path(log_dir).glob("workerlog.*")))
    assert result.returncode == 0, f"launch failed:\n{result.stderr[-3000:]}\n{logs[-3000:]}"
    return logs


@pytest.fixture(scope="module")
def one_rank(workspace):
    """Evaluate the tiny checkpoint in this process as a single rank; return (report folder, report)."""
    cfg = tiny_config(workspace, f"output_dir={workspace['root'] / 'one_rank'}")
    folder = evaluate_checkpoint(cfg, str(workspace["checkpoint"]), DistInfo(rank=0, world_size=1))
    return folder, json.loads((folder / "report.json").read_text())


@pytest.fixture(scope="module")
def two_ranks(workspace):
    """Evaluate the tiny checkpoint with launch/evaluate.py on 2 ranks; return the report."""
    output_dir = workspace["root"] / "two_ranks"
    overrides = workspace["overrides"] + [f"output_dir={output_dir}"]
    run_launch(["launch/evaluate.py", "-c", TINY_CONFIG, "--checkpoint", workspace["checkpoint"]]
               + [arg for text in overrides for arg in ("-o", text)], workspace["root"] / "logs_eval")
    return json.loads((output_dir / "eval" / "step_1" / "report.json").read_text())


# ---------------------------------------------------------------------------------------------
# Rank split.


def test_rank_split_covers_every_position():
    for total in range(10):
        for world_size in range(1, 5):
            shares = [rank_indices(total, rank, world_size) for rank in range(world_size)]
            merged = sorted(i for share in shares for i in share)
            assert merged == list(range(total)), (total, world_size)
            assert max(map(len, shares)) - min(map(len, shares)) <= 1, (total, world_size)


def test_read_test_images_across_shards(workspace):
    cfg = tiny_config(workspace)
    per_rank = [list(read_test_images(cfg.data.test_shards, 256, rank_indices(NUM_TEST_IMAGES, rank, 2)))
                for rank in range(2)]
    assert [image.index for image in per_rank[0]] == [0, 2, 4]
    assert [image.index for image in per_rank[1]] == [1, 3]
    merged = sorted(per_rank[0] + per_rank[1], key=lambda image: image.index)
    assert [image.key for image in merged] == workspace["test_keys"]
    assert all(image.pixels.shape == (256, 256, 3) and image.pixels.dtype == np.uint8 for image in merged)


# ---------------------------------------------------------------------------------------------
# Checkpoint reports.


@pytest.mark.multiproc
def test_one_and_two_ranks_identical(one_rank, two_ranks):
    one_rank_samples, two_rank_samples = one_rank[1]["samples"], two_ranks["samples"]
    assert one_rank[1]["world_size"] == 1
    assert two_ranks["world_size"] == 2
    assert len(one_rank_samples) == len(two_rank_samples) == NUM_TEST_IMAGES * len(AGES)
    for a, b in zip(one_rank_samples, two_rank_samples):
        exact = {k: v for k, v in a.items() if k not in FLOAT_FIELDS}
        assert exact == {k: v for k, v in b.items() if k not in FLOAT_FIELDS}
        for name in FLOAT_FIELDS:
            if a[name] is None:
                assert b[name] is None, (a["key"], a["target_age"], name)
            else:
                np.testing.assert_allclose(b[name], a[name], rtol=FLOAT_RTOL, err_msg=f"{a['key']} {name}")


@pytest.mark.multiproc
def test_every_image_once_per_age(one_rank, two_ranks, workspace):
    for report in (one_rank[1], two_ranks):
        counts = collections.Counter((s["key"], s["target_age"]) for s in report["samples"])
        assert counts == collections.Counter((key, age) for key in workspace["test_keys"] for age in AGES)
        assert report["num_images"] == NUM_TEST_IMAGES


@pytest.mark.multiproc
def test_failure_on_one_rank_stops_both(workspace, tmp_path):
    """index.json promises a sample the last shard lacks; only rank 1 reads it, and both ranks stop."""
    broken = tmp_path / "broken_shards"
    broken.mkdir()
    source = Path(tiny_config(workspace).data.test_shards)
    for path in source.glob("*.tar"):
        (broken / path.name).write_bytes(path.read_bytes())
    index = json.loads((source / "index.json").read_text())
    index["shards"][-1]["samples"] += 1  # position NUM_TEST_IMAGES goes to rank 1
    (broken / "index.json").write_text(json.dumps(index))

    overrides = workspace["overrides"] + [f"data.test_shards={broken}", f"output_dir={tmp_path / 'run'}"]
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    command = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2", "--log_dir",
               str(tmp_path / "logs"), "launch/evaluate.py", "-c", str(TINY_CONFIG), "--checkpoint",
               str(workspace["checkpoint"]), "--metrics", "mse"] + [a for o in overrides for a in ("-o", o)]
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                            timeout=LAUNCH_TIMEOUT_SEC)
    assert result.returncode != 0
    rank0_log = (tmp_path / "logs" / "workerlog.0").read_text()
    assert "evaluation failed on another rank: rank 1: ShardReadError" in rank0_log
    assert not (tmp_path / "run" / "eval").exists()


def test_report_summary_matches_samples(one_rank):
    _, report = one_rank
    assert report["metrics"] == {"computed": ["lpips", "mse", "id", "age"], "skipped": {}}
    for name in ("lpips", "mse", "predicted_age", "age_error"):
        values = [s[name] for s in report["samples"]]
        assert report["summary"]["overall"][name]["mean"] == pytest.approx(np.mean(values), rel=1e-12)
        assert report["summary"]["overall"][name]["std"] == pytest.approx(np.std(values), rel=1e-12)
        for age in AGES:
            per_age = [s[name] for s in report["samples"] if s["target_age"] == age]
            assert report["summary"]["per_target_age"][str(age)][name]["mean"] == pytest.approx(np.mean(per_age))
    for sample in report["samples"]:
        assert sample["age_error"] == pytest.approx(abs(sample["predicted_age"] - sample["target_age"]))
        assert 0.0 <= sample["predicted_age"] <= 100.0


def test_report_counts_failed_alignments(one_rank):
    """Real MTCNN finds every real input face; the tiny model's outputs are no faces, so each is listed."""
    folder, report = one_rank
    missing = [s for s in report["samples"] if s["id_similarity"] is None]
    assert report["alignment_failures"]["count"] == len(missing)
    assert report["summary"]["overall"]["id_similarity"]["missing"] == len(missing)
    listed = {(f["key"], f["target_age"]) for f in report["alignment_failures"]["samples"]}
    assert listed == {(s["key"], s["target_age"]) for s in missing}
    for sample in missing:
        assert sample["id_failure"] == "MTCNN found no face in the output", sample
    for sample in report["samples"]:
        if sample["id_similarity"] is not None:
            assert -1.0 <= sample["id_similarity"] <= 1.0 + 1e-6
    md = (folder / "report.md").read_text()
    assert f"ID similarity: {len(missing)} sample(s) without a face found by MTCNN" in md


def test_report_lists_weight_hashes(one_rank, workspace):
    _, report = one_rank
    by_path = {entry["path"]: entry for entry in report["weights"] if entry["sha256"]}
    # Of a checkpoint folder, only the files that hold the evaluated model are listed.
    checkpoint_files = [workspace["checkpoint"] / name for name in ("model.safetensors", "model.json", "config.yaml")]
    weight_files = list(workspace["weights"].values())
    assert set(by_path) == {str(p) for p in checkpoint_files + weight_files}
    random_options = {e["option"] for e in report["weights"] if e["path"] == "none: random weights"}
    assert "weights.stylegan" in random_options
    for path in checkpoint_files + weight_files:
        assert by_path[str(path)]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert by_path[str(workspace["weights"]["mtcnn"])]["option"] == "weights.mtcnn"
    assert report["config"]["eval"]["ages"] == AGES
    assert report["checkpoint"] == str(workspace["checkpoint"])


def test_report_files_written_whole(one_rank):
    folder, _ = one_rank
    assert sorted(p.name for p in folder.iterdir()) == ["report.html", "report.json", "report.md"]
    md = (folder / "report.md").read_text()
    assert "| metric | mean | std | samples | missing |" in md
    assert "| target age | lpips | mse | id_similarity | predicted_age | age_error |" in md
    html = (folder / "report.html").read_text()
    grid_images = min(4, NUM_TEST_IMAGES)  # eval.num_grid_images defaults to 4
    assert html.count("src='data:image/png;base64,") == grid_images * (1 + len(AGES))
    assert "<th>age 100</th>" in html


# ---------------------------------------------------------------------------------------------
# Folder mode.


def make_folder_pairs(root, faces_dir):
    """Build generated/ (brightened 256 px faces, a gray image, one extra file) and ground_truth/."""
    generated, ground_truth = root / "generated", root / "ground_truth"
    generated.mkdir()
    ground_truth.mkdir()
    faces = sorted((faces_dir / "celeba_hq").glob("*.jpg"))
    for path in faces[:2]:
        with Image.open(path) as img:
            img.convert("RGB").save(ground_truth / f"{path.stem}.png")
            small = np.asarray(img.convert("RGB").resize((256, 256), Image.BILINEAR), dtype=np.int16)
        Image.fromarray(np.clip(small + 12, 0, 255).astype(np.uint8)).save(generated / f"{path.stem}.png")
    gray = Image.fromarray(np.full((256, 256, 3), 128, dtype=np.uint8))
    gray.save(generated / "gray.png")
    gray.save(ground_truth / "gray.png")
    Image.open(faces[2]).convert("RGB").resize((256, 256)).save(generated / "unmatched.png")
    return generated, ground_truth


def folder_mse(generated_path, ground_truth_path):
    def signed_256(path):
        with Image.open(path) as img:
            img = img.convert("RGB")
            if img.size != (256, 256):
                img = img.resize((256, 256), Image.BILINEAR)
            return np.asarray(img, dtype=np.float32) / 127.5 - 1.0

    return float(np.mean((signed_256(generated_path) - signed_256(ground_truth_path)) ** 2))


def test_folder_mode_pairs_and_unmatched(workspace, faces_dir, tmp_path):
    generated, ground_truth = make_folder_pairs(tmp_path, faces_dir)
    weights = workspace["weights"]
    command = [sys.executable, "launch/evaluate.py", "--generated", generated, "--ground-truth", ground_truth,
               "--metrics", "lpips,mse,id", "--output", tmp_path / "report",
               "-o", f"weights.lpips={weights['lpips']}", "-o", f"weights.curricularface={weights['curricularface']}",
               "-o", f"weights.mtcnn={weights['mtcnn']}"]
    result = subprocess.run([str(c) for c in command], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=LAUNCH_TIMEOUT_SEC)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "only in --generated (no ground truth): unmatched.png" in result.stdout

    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["unmatched"] == {"only_in_generated": ["unmatched.png"], "only_in_ground_truth": []}
    samples = {s["key"]: s for s in report["samples"]}
    assert sorted(samples) == sorted(p.name for p in ground_truth.iterdir())
    assert report["target_ages"] is None
    assert all("predicted_age" not in s and "target_age" not in s for s in report["samples"])
    for name, sample in samples.items():
        assert sample["mse"] == pytest.approx(folder_mse(generated / name, ground_truth / name), rel=1e-5)
        assert sample["lpips"] >= 0.0

    # Real MTCNN aligns both real faces (1024 px ground truth, brightened 256 px copy); the gray pair fails.
    faces = [s for name, s in samples.items() if name != "gray.png"]
    assert all(s["id_similarity"] is not None and s["id_similarity"] > 0.8 for s in faces), faces
    assert samples["gray.png"]["id_similarity"] is None
    assert samples["gray.png"]["id_failure"] == "MTCNN found no face in the ground-truth image and the generated image"
    assert report["alignment_failures"]["count"] == 1
    assert "unmatched.png" in (tmp_path / "report" / "report.md").read_text()


# ---------------------------------------------------------------------------------------------
# Missing weights.


def test_missing_weights_error_names_key(workspace):
    cfg = tiny_config(workspace, "weights.lpips=null", "eval.on_missing_weights=error")
    with pytest.raises(MissingWeightsError, match="weights.lpips is null"):
        plan_metrics(cfg, ["lpips", "mse"])
    cfg = tiny_config(workspace, "weights.mtcnn=null", "eval.on_missing_weights=error")
    with pytest.raises(MissingWeightsError, match="weights.mtcnn is null"):
        plan_metrics(cfg, ["id"])


def test_missing_weights_skip_is_reported(workspace, faces_dir, tmp_path):
    generated, ground_truth = make_folder_pairs(tmp_path, faces_dir)
    cfg = tiny_config(workspace, "weights.lpips=null", "weights.curricularface=null", "eval.on_missing_weights=skip")
    folder, _ = evaluate_folders(cfg, str(generated), str(ground_truth), ["lpips", "mse", "id"],
                                 DistInfo(rank=0, world_size=1), str(tmp_path / "report"))
    report = json.loads((folder / "report.json").read_text())
    assert report["metrics"]["computed"] == ["mse"]
    assert report["metrics"]["skipped"]["lpips"].startswith("skipped because weights.lpips is null")
    assert report["metrics"]["skipped"]["id"].startswith("skipped because weights.curricularface is null")
    assert all(s["lpips"] is None and s["mse"] is not None for s in report["samples"])
    assert "metric lpips skipped because weights.lpips is null" in (folder / "report.md").read_text()


def test_missing_weights_error_exits_cli(tmp_path, faces_dir):
    generated, ground_truth = make_folder_pairs(tmp_path, faces_dir)
    # Without -c every weights.* is null and eval.on_missing_weights is error.
    command = [sys.executable, "launch/evaluate.py", "--generated", str(generated), "--ground-truth",
               str(ground_truth), "--metrics", "mse,lpips", "--output", str(tmp_path / "report")]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_SEC)
    assert result.returncode == 2
    assert "weights.lpips is null" in result.stderr
    assert not (tmp_path / "report").exists()


# ---------------------------------------------------------------------------------------------
# Validation during training.


def test_is_improvement_direction():
    assert is_improvement("lpips", 0.2, None)
    assert is_improvement("lpips", 0.2, 0.3)
    assert not is_improvement("mse", 0.3, 0.2)
    assert is_improvement("id_similarity", 0.6, 0.5)
    assert not is_improvement("id_similarity", 0.4, 0.5)


def test_validator_rejects_skipped_best_metric(workspace):
    cfg = tiny_config(workspace, "weights.lpips=null", "eval.on_missing_weights=skip", "train.best_metric=lpips")
    with pytest.raises(ValueError, match="train.best_metric=lpips cannot be computed"):
        Validator(cfg, DistInfo(rank=0, world_size=1), sam=None)


def validation_overrides(workspace):
    return workspace["overrides"] + [f"train.val_images={VAL_IMAGES}"]


def run_validator(cfg, checkpoint, info):
    """Run the validator on a SAM in train mode, as the trainer calls it; return (values, training after)."""
    sam = load_sam(cfg, checkpoint)
    sam.set_train_mode()
    values = Validator(cfg, info, sam).run()
    return values, sam.training and sam.encoder.training and not sam.decoder.training


@pytest.mark.multiproc
def test_validator_two_ranks_match_one(workspace, one_rank, tmp_path):
    cfg = load_config(str(TINY_CONFIG), validation_overrides(workspace))
    values, restored = run_validator(cfg, str(workspace["checkpoint"]), DistInfo(rank=0, world_size=1))
    assert restored

    # The subset is the first VAL_IMAGES test images, scored by the same evaluator as the report.
    subset = [s for s in one_rank[1]["samples"] if s["index"] < VAL_IMAGES]
    assert values["images"] == VAL_IMAGES
    for name in ("lpips", "mse", "predicted_age"):
        assert values[name] == pytest.approx(np.mean([s[name] for s in subset]), rel=1e-6)
    assert values["predicted_age_error"] == pytest.approx(np.mean([s["age_error"] for s in subset]), rel=1e-6)
    assert values["id_alignment_failures"] == sum(s["id_similarity"] is None for s in subset)

    settings = {"overrides": validation_overrides(workspace), "checkpoint": str(workspace["checkpoint"])}
    run_launch([Path(__file__).resolve(), tmp_path, json.dumps(settings)], tmp_path / "logs")
    per_rank = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]
    assert per_rank[0] == per_rank[1]
    assert per_rank[0]["restored"]
    assert per_rank[0]["values"].keys() == values.keys()
    for name, value in values.items():
        assert per_rank[0]["values"][name] == pytest.approx(value, rel=FLOAT_RTOL), name


def run_validator_worker(out_dir, settings_json):
    from pipeline.train.distributed import init_distributed

    settings = json.loads(settings_json)
    info = init_distributed()
    cfg = load_config(str(TINY_CONFIG), settings["overrides"])
    values, restored = run_validator(cfg, settings["checkpoint"], info)
    (Path(out_dir) / f"rank{info.rank}.json").write_text(json.dumps({"values": values, "restored": restored}))


if __name__ == "__main__":
    run_validator_worker(sys.argv[1], sys.argv[2])
