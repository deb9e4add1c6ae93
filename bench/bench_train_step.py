"""Time one SAM training step and its parts on this machine (single process).

Usage: python bench/bench_train_step.py [-c configs/tiny.yaml] [--batch-size 2] [--repeats 3]
Reports milliseconds per part (forward and backward of the SAM pass, LPIPS, ID, aging) and per
whole step (real pass plus cycle pass, as the trainer runs it), and images per second.
"""

import argparse
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import paddle  # noqa: E402

from pipeline.config import load_config  # noqa: E402
from pipeline.losses.objective import SamObjective  # noqa: E402
from pipeline.models.sam import add_age_channel  # noqa: E402
from pipeline.train.components import build_components  # noqa: E402


def timed(fn, repeats):
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-c", "--config", default="configs/tiny.yaml")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    logging.disable(logging.WARNING)

    cfg = load_config(args.config)
    parts = build_components(cfg)
    sam = parts.sam
    sam.set_train_mode()
    objective = SamObjective(cfg.loss, parts.id_loss, parts.lpips, parts.aging)
    src_img = paddle.to_tensor(np.random.default_rng(0).uniform(-1, 1, (args.batch_size, 3, 256, 256)).astype("float32"))
    age = paddle.full([args.batch_size], 0.5)
    out_img = src_img.clone()
    out_img.stop_gradient = False

    def sam_pass():
        img, w_plus = sam(add_age_channel(src_img, age))
        img.mean().backward()

    def lpips_pass():
        parts.lpips.batch_mean(out_img, src_img).backward()

    def id_pass():
        parts.id_loss(out_img, src_img, src_img)[0].backward()

    def aging_pass():
        parts.aging(out_img, age).backward()

    def full_step(share_reference=True):
        reference = objective.reference(src_img) if share_reference else None
        for pass_name in ("real", "cycle"):
            img, w_plus = sam(add_age_channel(src_img, age))
            loss, _ = objective(src_img=src_img, out_img=img, w_plus=w_plus, latent_avg=sam.latent_avg,
                                target_age=age, input_age=age, keep_input_age=False, pass_name=pass_name,
                                reference=reference)
            loss.backward()
        sam.encoder.clear_gradients()

    rows = [
        ("SAM forward+backward (one pass)", timed(sam_pass, args.repeats)),
        ("LPIPS forward+backward", timed(lpips_pass, args.repeats)),
        ("ID loss forward+backward", timed(id_pass, args.repeats)),
        ("aging loss forward+backward", timed(aging_pass, args.repeats)),
    ]
    step_ms = timed(full_step, args.repeats)
    rows.append(("whole step (real + cycle, all losses)", step_ms))
    rows.append(("whole step, target features encoded in each pass", timed(lambda: full_step(False), args.repeats)))
    print(f"config {args.config}, batch {args.batch_size}, {paddle.get_device()}, "
          f"{paddle.get_flags('FLAGS_paddle_num_threads')['FLAGS_paddle_num_threads']} Paddle thread(s)")
    print("| part | ms |\n|---|---|")
    for name, ms in rows:
        print(f"| {name} | {ms:.0f} |")
    print(f"| images/s | {args.batch_size / step_ms * 1000:.2f} |")


if __name__ == "__main__":
    main()
