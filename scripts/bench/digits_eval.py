"""Sampling and scoring class-conditional digit models (teachers and distilled students).

Used by `scripts/bench/distill_digits.py`; also a command line for one checkpoint:

    python scripts/bench/digits_eval.py logs/<run dir> --steps 1 2 4 10 25 50 --n 1000

Scores come from `sgm.metrics.digits` (our own classifier): accuracy on the conditioning class,
Fréchet distance of classifier features to the held-out digits (same N for every row), class
coverage. NFE counts network evaluations per sample (CFG doubles them).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import sgm  # noqa: E402,F401
from sgm.evaluation.engines import load_engine, network_evaluations, sampler_steps  # noqa: E402


@torch.no_grad()
def sample_digits(engine, labels: torch.Tensor, num_steps: int | None, batch_size: int = 500,
                  seed: int = 0) -> tuple[torch.Tensor, float]:
    """Class-conditional samples (N, 1, 8, 8) and seconds per sample (EMA weights if present)."""
    torch.manual_seed(seed)
    images, start = [], time.perf_counter()
    with engine.ema_scope():
        for chunk in labels.split(batch_size):
            batch = {"cls": chunk}
            c, uc = engine.conditioner.get_unconditional_conditioning(batch, force_uc_zero_embeddings=["cls"])
            shape = (engine.model.diffusion_model.in_channels, 8, 8)
            z = engine.sample(c, uc=uc, batch_size=len(chunk), shape=shape, num_steps=num_steps)
            images.append(engine.decode_first_stage(z))
    seconds = (time.perf_counter() - start) / len(labels)
    return torch.cat(images).clamp(-1, 1), seconds


def evaluate(engine, num_steps: int | None, n: int = 1000, seed: int = 0, grid: str | None = None) -> dict:
    """Scores of `n` class-balanced samples; with `grid`, the first 40 (4 rows of classes 0-9) as a PNG."""
    from sgm.metrics.digits import evaluate as score

    labels = torch.arange(n) % 10
    images, seconds = sample_digits(engine, labels, num_steps, seed=seed)
    result = score(images, labels)
    num_steps = num_steps or sampler_steps(engine.sampler)
    result.update(steps=num_steps, nfe=network_evaluations(engine, num_steps), sec_per_sample=seconds)
    if grid is not None:
        from sgm.io.media import save_image_grid

        big = torch.nn.functional.interpolate(images[:40], scale_factor=4, mode="nearest")  # 32x32 per digit
        save_image_grid(big, grid, n_rows=4)
    return result


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="main.py run directory")
    parser.add_argument("--ckpt", default=None, help="checkpoint (default: checkpoints/last.ckpt)")
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4, 10, 25, 50])
    parser.add_argument("--n", type=int, default=1000, help="samples per row (FD compared at equal N)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grid", default=None, metavar="PREFIX",
                        help="also save the first 40 samples of each row as PREFIX_<steps>step.png")
    args = parser.parse_args(argv)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    engine = load_engine(args.run, args.ckpt)
    rows = []
    print("| steps | NFE | accuracy | FD | coverage | s/sample |")
    print("|---:|---:|---:|---:|---:|---:|")
    for steps in args.steps:
        grid = f"{args.grid}_{steps}step.png" if args.grid else None
        r = evaluate(engine, steps, n=args.n, seed=args.seed, grid=grid)
        rows.append(r)
        print(f"| {steps} | {r['nfe']} | {r['accuracy']:.3f} | {r['fd']:.2f} | {r['coverage']:.2f} | "
              f"{r['sec_per_sample'] * 1e3:.2f} ms |")
    return rows


if __name__ == "__main__":
    main()
