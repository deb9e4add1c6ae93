"""Build webdataset tar shards with an index.json from an image folder or a zip archive.

Example:
    python shards/build.py --input ffhq/images1024x1024 --output data/ffhq_256 --workers 8
    python shards/build.py --input celeba_hq.zip --output data/celeba_256 --split train=0.9,val=0.1

Re-running the same command after an interruption reuses every complete shard. A build into the
output of an earlier build replaces it: shard files the new plan has no place for are deleted, and
so are the shard sets of earlier splits that the new build does not write (the summary names them).
Exit status: 0 on success, 1 when --strict and an input file was skipped (after the index is
written), 2 on invalid options or input.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):
    # Run as a script: make the repository root importable.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shards.builder import BuildOptions, Progress, run_build  # noqa: E402
from shards.plan import parse_splits  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, type=Path,
                        help="image folder (searched recursively) or zip archive of images")
    parser.add_argument("--output", required=True, type=Path, help="folder for the shards and index.json")
    parser.add_argument("--resolution", type=int, default=256, help="side of the square sample images in pixels")
    parser.add_argument("--format", dest="image_format", choices=("jpg", "png"), default="jpg",
                        help="sample image encoding: jpg (quality 95, 4:4:4) or png (lossless)")
    parser.add_argument("--samples-per-shard", type=int, default=1000,
                        help="input files per shard; files skipped while decoding make a shard smaller")
    parser.add_argument("--workers", type=int, default=1, help="processes that build shards in parallel")
    parser.add_argument("--crop", choices=("center", "reject"), default="center",
                        help="non-square images: keep the centre square, or skip them")
    parser.add_argument("--split", default=None, metavar="NAME=FRACTION,...",
                        help="write each split to <output>/<NAME>/, choosing each file's split from a hash of "
                             "its input path without the extension")
    parser.add_argument("--strict", action="store_true",
                        help="exit with status 1 when any input file is skipped (the index is still written)")
    parser.add_argument("--align", action="store_true",
                        help="crop faces the FFHQ way from dlib's 68 landmarks instead of the centre crop")
    parser.add_argument("--landmarks", type=Path, default=None,
                        help="dlib shape predictor file (shape_predictor_68_face_landmarks.dat) for --align")
    parser.add_argument("--max-pixels", type=int, default=100_000_000,
                        help="skip images with more pixels than this, read from the header before decoding")
    parser.add_argument("--max-file-mb", type=int, default=256, help="skip input files larger than this, in MiB")
    return parser.parse_args(argv)


def options_from_args(args: argparse.Namespace) -> BuildOptions:
    """Turn parsed arguments into BuildOptions, raising ValueError for invalid values."""
    return BuildOptions(
        input=args.input, output=args.output, resolution=args.resolution, image_format=args.image_format,
        samples_per_shard=args.samples_per_shard, workers=args.workers, crop=args.crop,
        splits=parse_splits(args.split), strict=args.strict, align=args.align, landmarks=args.landmarks,
        max_pixels=args.max_pixels, max_file_mb=args.max_file_mb,
    )


def main(argv: list[str] | None = None) -> int:
    """Run the build and return the exit status."""
    args = parse_args(argv)
    progress = Progress()
    try:
        options = options_from_args(args)
        report = run_build(options, progress)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume from the complete shards", file=sys.stderr)
        return 130

    print(report.summary_line(progress.elapsed_sec()), file=sys.stderr)
    if args.strict and report.num_skipped:
        print(f"error: --strict and {report.num_skipped} input files were skipped; "
              f"see `skipped` in the index.json files under {args.output}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
