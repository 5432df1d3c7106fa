"""Overhead of LossDiagnostics: time per non-sampled step (should be ~0) and per sampled step.

    python scripts/bench/diagnostics_overhead.py [--steps 40] [--engine diffusion|dmd]

A tiny digits model on the CPU; figures for the notes, no thresholds.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import sgm  # noqa: E402,F401  (before pytorch_lightning)
import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from sgm.callbacks.diagnostics import LossDiagnostics  # noqa: E402
from sgm.config import load_configs  # noqa: E402
from sgm.util import instantiate_from_config  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = {"diffusion": "configs/example_training/toy/digits_cond.yaml", "dmd": "configs/dmd/digits_dmd.yaml"}
TINY = ["model.params.network_config.params.model_channels=32", "model.params.network_config.params.num_res_blocks=1",
        "model.params.network_config.params.channel_mult=[1]", "model.params.use_ema=False"]


class StepTimer(pl.Callback):
    """Wall time of each whole batch (hooks of every callback included)."""

    def __init__(self):
        self.times: dict[int, float] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.times[trainer.global_step - 1] = time.perf_counter() - self._start


def run(engine_kind: str, steps: int, every: int | None) -> dict[int, float]:
    overrides = TINY + (["model.params.init.allow_random_teacher=True"] if engine_kind == "dmd" else [])
    torch.manual_seed(0)
    engine = instantiate_from_config(load_configs([os.path.join(ROOT, CONFIGS[engine_kind])], overrides).model,
                                     learning_rate=1e-4)
    g = torch.Generator().manual_seed(0)
    batch = {"jpg": torch.rand(32, 1, 8, 8, generator=g) * 2 - 1, "cls": torch.randint(0, 10, (32,), generator=g)}
    timer = StepTimer()
    callbacks = [LossDiagnostics(every_n_steps=every, teacher_samples=16, teacher_steps=4)] if every else []
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=steps, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[timer, *callbacks])
    trainer.fit(engine, DataLoader([batch] * steps, batch_size=None))
    return timer.times


def median(values: list[float]) -> float:
    values = sorted(values)
    return values[len(values) // 2]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--engine", choices=sorted(CONFIGS), default="diffusion")
    args = parser.parse_args()
    torch.set_num_threads(1)
    # callback hook cost alone: the non-sampled path is one modulo and one None check
    callback, n = LossDiagnostics(every_n_steps=10**9), 100000
    callback._pending = None
    start = time.perf_counter()
    for step in range(1, n + 1):
        if callback.is_sampled(step):
            pass
        callback.on_train_batch_end(None, None, None, None, 0)
    hook_us = (time.perf_counter() - start) / n * 1e6
    plain = run(args.engine, args.steps, None)
    diag = run(args.engine, args.steps, args.every)
    warm = [s for s in plain if s >= 2]
    sampled = [s for s in warm if s % args.every == 0]
    other = [s for s in warm if s % args.every != 0]
    base, off = median([plain[s] for s in other]), median([diag[s] for s in other])  # the same steps in both runs
    on = median([diag[s] for s in sampled]) / median([plain[s] for s in sampled]) * base
    print(f"engine={args.engine} steps={args.steps} every_n_steps={args.every} (CPU, 1 thread, batch 32)")
    print(f"hooks on a non-sampled step:   {hook_us:.2f} us")
    print(f"step without the callback:     {base * 1e3:.2f} ms (median of the non-sampled steps)")
    print(f"non-sampled step with it:      {off * 1e3:.2f} ms  ({(off / base - 1) * 100:+.1f}%, noise level)")
    print(f"sampled step:                  {on / base:.1f}x the same step without the callback")


if __name__ == "__main__":
    main()
