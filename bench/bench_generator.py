"""Time the StyleGAN2 generator on the CPU: forward alone, and forward + backward to W+.

Run: python bench/bench_generator.py [--repeats 3] [--warmup 1]
Prints one table row per configuration: the FFHQ config-f generator (1024 px, batch 1) and the
reduced 32 px generator of the parity tests (batch 2). The backward pass reaches only the
W+ input, because SAM keeps the generator frozen and trains the encoder that feeds it.
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import paddle

# Let the script run from a clone without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.models.stylegan2 import Generator  # noqa: E402

CONFIGS = [
    # name, constructor kwargs, batch size
    ("ffhq-1024 (config-f)", dict(size=1024, style_dim=512, n_mlp=8, channel_multiplier=2), 1),
    ("tiny-32 (parity case)", dict(size=32, style_dim=64, n_mlp=2, channels={4: 32, 8: 32, 16: 32, 32: 16}), 2),
]


def time_forward_sec(generator, w_plus, noise):
    """Run one forward pass without autograd and return its wall time in seconds."""
    start = time.perf_counter()
    with paddle.no_grad():
        image, _ = generator([w_plus], input_is_latent=True, noise=noise)
        image.numpy()  # Include the copy to host so the timing covers the whole computation.
    return time.perf_counter() - start


def time_step_sec(generator, w_plus, noise):
    """Run one forward + backward to w_plus and return its wall time in seconds."""
    w_plus.clear_gradient()
    start = time.perf_counter()
    image, _ = generator([w_plus], input_is_latent=True, noise=noise)
    image.mean().backward()
    w_plus.grad.numpy()
    return time.perf_counter() - start


def build_frozen_generator(kwargs, batch):
    """Return a generator with frozen weights, a W+ input that takes gradients, and fixed noise."""
    generator = Generator(**kwargs)
    generator.eval()
    for param in generator.parameters():
        param.stop_gradient = True
    w_plus = paddle.randn([batch, generator.n_latent, generator.style_dim])
    w_plus.stop_gradient = False
    noise = [getattr(generator.noises, f"noise_{i}") for i in range(generator.num_layers)]
    return generator, w_plus, noise


def measure_sec(timer, args, warmup, repeats):
    """Return the timing samples of `repeats` calls of timer(*args) after `warmup` untimed calls."""
    for _ in range(warmup):
        timer(*args)
    return [timer(*args) for _ in range(repeats)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per configuration and pass")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls before timing")
    args = parser.parse_args()
    paddle.set_device("cpu")

    print(f"paddle {paddle.__version__}, cpu, {os.cpu_count()} logical cores, median of {args.repeats} runs")
    print("| config | batch | forward (s) | forward + backward (s) | fwd+bwd min / max (s) |")
    print("|---|---|---|---|---|")
    for name, kwargs, batch in CONFIGS:
        generator, w_plus, noise = build_frozen_generator(kwargs, batch)
        forward = measure_sec(time_forward_sec, (generator, w_plus, noise), args.warmup, args.repeats)
        step = measure_sec(time_step_sec, (generator, w_plus, noise), args.warmup, args.repeats)
        print(
            f"| {name} | {batch} | {statistics.median(forward):.3f} | {statistics.median(step):.3f} "
            f"| {min(step):.3f} / {max(step):.3f} |"
        )


if __name__ == "__main__":
    main()
