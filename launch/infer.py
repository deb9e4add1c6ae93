"""Age face images with a trained SAM and write each input beside its outputs.

For every input it writes `<output>/<name>_strip.png` (the input, then one image per age, left to
right) and `<output>/<name>/age_<A>.png`. The generator's noise is fixed, so the same checkpoint
and input always give the same pixels.

Example:
  python launch/infer.py -c configs/tiny.yaml --checkpoint runs/tiny/checkpoints/step_20 \\
      --input demo/faces/celeba_hq --output runs/tiny/infer
"""

import argparse
import logging
from pathlib import Path

import _entry

DEFAULT_AGES = "0,10,20,30,40,50,60,70,80,90,100"


def parse_ages(text: str) -> list[int]:
    try:
        ages = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise SystemExit(f"error: invalid --ages {text!r}: expected whole ages separated by commas, e.g. 0,50,100")
    if not ages or any(not 0 <= age <= 100 for age in ages):
        raise SystemExit(f"error: invalid --ages {text!r}: every age must lie in 0..100")
    return ages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _entry.add_config_arguments(parser)
    parser.add_argument("--checkpoint", required=True,
                        help="training checkpoint folder (…/checkpoints/step_<N>), converted SAM .safetensors file, "
                             "or latest (the newest complete checkpoint of output_dir)")
    parser.add_argument("--input", required=True, help="an image file or a folder of images (searched recursively)")
    parser.add_argument("--ages", default=DEFAULT_AGES, help=f"target ages in years, comma-separated (default {DEFAULT_AGES})")
    parser.add_argument("--output", required=True, help="folder for the strips and single images")
    parser.add_argument("--align", action="store_true",
                        help="align unaligned photos the FFHQ way first (needs --landmarks)")
    parser.add_argument("--landmarks", help="dlib 68-point shape predictor file for --align")
    args = parser.parse_args()
    ages = parse_ages(args.ages)
    cfg = _entry.load_config_or_exit(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")

    import numpy as np
    import paddle

    from pipeline.inference import age_images, list_images, load_image, load_sam, resolve_checkpoint, save_image

    try:
        files = list_images(args.input)
    except FileNotFoundError as exc:
        raise SystemExit(f"error: {exc}")
    aligner = build_aligner(args) if args.align else None
    output = Path(args.output)
    if output.exists() and not output.is_dir():
        raise SystemExit(f"error: --output {output} is a file; pass a folder")
    sam = load_sam(cfg, resolve_checkpoint(cfg, args.checkpoint))
    output.mkdir(parents=True, exist_ok=True)
    names = output_names(files, Path(args.input))

    for path in files:
        try:
            src_img = read_input(path, cfg.data.resolution, aligner, load_image)
        except (OSError, SyntaxError) as exc:  # PIL raises these for files it cannot decode
            logging.warning("skipping %s: not a readable JPEG, PNG, BMP or WebP image (%s)", path, exc)
            continue
        if src_img is None:
            continue
        # Render the input at every age; each output is [1, 3, 256, 256].
        batch = paddle.to_tensor(src_img[None])
        outputs = [age_images(sam, batch, age)[0].numpy() for age in ages]
        name = names[path]
        (output / name).mkdir(exist_ok=True)
        for age, img in zip(ages, outputs):
            save_image(img, output / name / f"age_{age}.png")
        save_image(np.concatenate([src_img] + outputs, axis=2), output / f"{name}_strip.png")
        logging.info("wrote %s (input, then ages %s)", output / f"{name}_strip.png", ",".join(map(str, ages)))


def output_names(files: list[Path], input_path: Path) -> dict[Path, str]:
    """Name each input's outputs by its path under --input, so equal file names never overwrite each other.

    a/x.jpg becomes "a-x"; x.jpg and x.png in one folder become "x-jpg" and "x-png".
    """
    base = input_path if input_path.is_dir() else input_path.parent
    stems = {path: "-".join(path.relative_to(base).with_suffix("").parts) for path in files}
    counts: dict[str, int] = {}
    for stem in stems.values():
        counts[stem] = counts.get(stem, 0) + 1
    return {path: stem if counts[stem] == 1 else f"{stem}-{path.suffix.lstrip('.').lower()}"
            for path, stem in stems.items()}


def build_aligner(args):
    """Return the FFHQ-style aligner for --align, or exit with the option to fix."""
    if not args.landmarks:
        raise SystemExit("error: --align needs --landmarks PATH (dlib's shape_predictor_68_face_landmarks.dat)")
    from pipeline.data import face_align

    try:
        return face_align.FaceAligner(args.landmarks, output_size=256)
    except (ValueError, ImportError) as exc:
        raise SystemExit(f"error: --align could not start: {exc}")


def read_input(path, resolution, aligner, load_image):
    """Return the input as [3, H, W] in [-1, 1], aligned first when an aligner is given; None if skipped."""
    if aligner is None:
        return load_image(path, resolution)
    import numpy as np
    from PIL import Image

    from pipeline.data.face_align import NoFaceFound
    from pipeline.inference import IMAGE_FORMATS

    try:
        with Image.open(path, formats=IMAGE_FORMATS) as img:
            aligned = aligner.align(img.convert("RGB"))
    except NoFaceFound as exc:
        logging.warning("skipping %s: %s", path, exc)
        return None
    pixels = aligned.image.resize((resolution, resolution), Image.BILINEAR)
    return np.asarray(pixels, dtype=np.float32).transpose(2, 0, 1) / 127.5 - 1.0


if __name__ == "__main__":
    _entry.exit_on_user_error(main)
