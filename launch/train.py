"""Train SAM. Run with `python -m paddle.distributed.launch --nproc_per_node N launch/train.py -c CONFIG`."""

import argparse

import _entry  # noqa: F401 (sets the import path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    _entry.add_config_arguments(parser)
    parser.add_argument(
        "--resume", default="auto",
        help="auto: continue from the newest complete checkpoint in output_dir (default); "
             "none: start from scratch; or a checkpoint folder such as runs/x/checkpoints/step_100",
    )
    args = parser.parse_args()
    cfg = _entry.load_config_or_exit(args)

    from pipeline.train.run import train

    train(cfg, resume=args.resume)


if __name__ == "__main__":
    _entry.exit_on_user_error(main)
