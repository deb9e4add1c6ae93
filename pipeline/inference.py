"""Load a trained SAM and age images with it, deterministically.

A checkpoint is either a training checkpoint folder (`<output_dir>/checkpoints/step_<N>`, which
holds the age encoder and the pSp encoder's BatchNorm statistics; the frozen networks come from
the config's weights.* files, or from the same seeded random weights the run trained with) or a
converted released SAM file (checkpoints/convert.py output), which holds every network.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import paddle
from PIL import Image

from pipeline.config import Config, config_to_dict
from pipeline.models.sam import SAM, add_age_channel
from pipeline.train import checkpoint as ckpt
from pipeline.train.components import build_sam, load_file_into, load_model_state
from pipeline.train.run_log import to_uint8_image

log = logging.getLogger("sam")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
# Decoders PIL may use for user inputs; other formats (PostScript, for one) could start external programs.
IMAGE_FORMATS = ("JPEG", "PNG", "BMP", "WEBP")


# The weights.* keys SAM itself is built from; the metric networks' files may differ at evaluation.
SAM_WEIGHT_KEYS = ("sam", "stylegan", "psp_encoder", "irse50")


def _check_same_model(cfg: Config, saved_config: dict, folder: Path) -> None:
    """Raise unless the checkpoint was trained with the same model sizes and weight files."""
    current = config_to_dict(cfg)
    checked = {"model": list(saved_config.get("model", {})), "weights": list(SAM_WEIGHT_KEYS)}
    for section, keys in checked.items():
        for key in keys:
            saved_value = saved_config.get(section, {}).get(key)
            if current[section].get(key) != saved_value:
                raise ValueError(
                    f"checkpoint {folder} was trained with {section}.{key}={saved_value!r} but the config has "
                    f"{current[section].get(key)!r}; use the run's own config ({folder / 'config.yaml'}) "
                    f"or -o {section}.{key}=..."
                )
    if saved_config.get("train", {}).get("seed") != cfg.train.seed and not cfg.weights.stylegan:
        raise ValueError(
            f"checkpoint {folder} was trained with train.seed={saved_config['train']['seed']} and random frozen "
            f"networks; set -o train.seed={saved_config['train']['seed']} so they are rebuilt identically"
        )


def resolve_checkpoint(cfg: Config, checkpoint: str) -> str:
    """Return the checkpoint path for --checkpoint: a file, a step folder, or `latest` (newest intact in output_dir).

    Raises CheckpointError listing the checkpoints that do exist when the path is not found.
    """
    if checkpoint == "latest":
        folder = ckpt.newest_intact_checkpoint(cfg.output_dir)
        if folder is None:
            raise ckpt.CheckpointError(f"--checkpoint latest: no complete checkpoint in {cfg.output_dir}/checkpoints; "
                                       "train first or pass a path")
        return str(folder)
    if not Path(checkpoint).exists():
        found = [str(folder) for _, folder in ckpt.list_complete_checkpoints(cfg.output_dir)]
        hint = f"checkpoints in output_dir: {', '.join(found)}" if found else f"no checkpoint in {cfg.output_dir}"
        raise ckpt.CheckpointError(f"--checkpoint {checkpoint}: not found ({hint}); pass a step_<N> folder, "
                                   "a converted SAM .safetensors file or latest")
    return checkpoint


def load_sam(cfg: Config, checkpoint: str | None) -> SAM:
    """Build SAM from the config and fill it from `checkpoint`; return it in eval mode."""
    # The trainer seeds with train.seed before building SAM, so networks without a weights file
    # come out identical here.
    paddle.seed(cfg.train.seed)
    if checkpoint is not None and Path(checkpoint).is_file():
        sam = SAM(cfg.model)
        load_file_into(sam, checkpoint, "sam", "--checkpoint")
    else:
        sam = build_sam(cfg, encoder_from_checkpoint=checkpoint is not None)
        if checkpoint is not None:
            folder = ckpt.resolve_resume(checkpoint, cfg.output_dir, option="--checkpoint")
            if folder is None:
                raise ckpt.CheckpointError(
                    f"--checkpoint {checkpoint}: no complete checkpoint found under {cfg.output_dir}/checkpoints; "
                    "pass a step_<N> folder or a converted SAM .safetensors file"
                )
            data = ckpt.load_checkpoint(folder)
            _check_same_model(cfg, data["config"], folder)
            load_model_state(sam, data["model"], str(folder))
            log.info("loaded the age encoder of %s (step %d)", folder, data["trainer_state"]["step"])
        else:
            log.warning("no checkpoint given: the age encoder has random weights")
    sam.eval()
    return sam


def age_images(sam: SAM, src_img: paddle.Tensor, age_years: int, resize: bool = True) -> paddle.Tensor:
    """Return src_img [B, 3, 256, 256] in [-1, 1] aged to `age_years`, with the generator's fixed noise."""
    target_age = paddle.full([src_img.shape[0]], age_years / 100.0, dtype=src_img.dtype)
    with paddle.no_grad():
        aged_img, _ = sam(add_age_channel(src_img, target_age), resize=resize, randomize_noise=False)
    return aged_img


def load_image(path: str | Path, resolution: int = 256) -> np.ndarray:
    """Read an image file as float32 [3, resolution, resolution] in [-1, 1] (bilinear resize, as SAM)."""
    with Image.open(path, formats=IMAGE_FORMATS) as img:
        img = img.convert("RGB").resize((resolution, resolution), Image.BILINEAR)
        pixels = np.asarray(img, dtype=np.float32)
    return pixels.transpose(2, 0, 1) / 127.5 - 1.0


def list_images(path: str | Path) -> list[Path]:
    """Return the image files at `path` (a file, or a folder searched recursively), sorted."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"input {path} is neither an image file nor a folder")
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found under {path}")
    return files


def save_image(img: np.ndarray, path: str | Path) -> None:
    """Write a CHW image in [-1, 1] as a PNG (or JPEG by suffix)."""
    Image.fromarray(to_uint8_image(img)).save(path)
