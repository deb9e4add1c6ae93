"""Convert official SAM-related checkpoints into safetensors files our Paddle modules load.

Usage:
    python checkpoints/convert.py SRC [SRC ...] DST

SRC is a checkpoint file (torch .pt/.pth in zip or legacy format, pickled .npy, Paddle
.pdparams) or a directory of them. Several SRC are combined when they form one checkpoint:
torchvision's AlexNet plus PerceptualSimilarity's alex.pth make `lpips`, and pnet.npy,
rnet.npy and onet.npy (or their directory) make `mtcnn`. The kind is detected from the keys;
--kind overrides it. Exits with status 1 and a message naming the file and what is wrong
with it (unreadable, corrupt, unsafe, keys it could not map, or an output path it cannot
write) when conversion fails; DST is then left unwritten.
"""

import argparse
import sys
from pathlib import Path

# Allow `python checkpoints/convert.py` from the repository root without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.checkpoint.convert import KINDS, ConversionError, convert_files, summarize  # noqa: E402
from pipeline.checkpoint.torch_format import CheckpointFormatError  # noqa: E402


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Convert official SAM, pSp, StyleGAN2, IR-SE50, DEX, CurricularFace, LPIPS and MTCNN "
        "checkpoints into safetensors files with this repository's key names and layouts.",
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="one or more source checkpoints, then the output .safetensors path")
    parser.add_argument("--kind", choices=sorted(KINDS), help="checkpoint kind, when detection from the keys is not wanted")
    args = parser.parse_args(argv)
    if len(args.paths) < 2:
        parser.error("give at least one source checkpoint and the output path, e.g. convert.py sam_ffhq_aging.pt sam.safetensors")
    args.sources, args.destination = args.paths[:-1], Path(args.paths[-1])
    if args.destination.suffix != ".safetensors":
        parser.error(f"output path {args.destination} should end with .safetensors")
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        conversion = convert_files(args.sources, args.destination, forced_kind=args.kind)
    except (ConversionError, CheckpointFormatError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(summarize(conversion, args.destination))
    return 0


if __name__ == "__main__":
    sys.exit(main())
