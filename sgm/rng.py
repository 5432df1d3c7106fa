"""The global RNG streams (torch, CUDA, NumPy, Python): seeded by one rule, captured, restored, preserved.

The rule for training: at every step each rank seeds all streams from (seed, rank, step)
(`seed_step`; main.py runs it through sgm.callbacks.randomness.StepSeed). Ranks draw different noise
and sigmas, a resumed run draws at step n what the uninterrupted run drew, and nothing depends on how
many numbers earlier steps, image logging or evaluation consumed. Draws that must agree across ranks
(the backward-simulation exit step) use their own generator seeded without the rank.
Callbacks that measure inside a training step run under `preserved_rng()` so training draws as if they
were absent.
"""
from __future__ import annotations

import random
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch


def step_seed(seed: int, rank: int, step: int) -> int:
    """A well-mixed 63-bit seed from (seed, rank, step) (NumPy's SeedSequence hashing)."""
    if min(seed, rank, step) < 0:
        raise ValueError(f"seed, rank and step must be >= 0, got {seed}, {rank}, {step}")
    low, high = np.random.SeedSequence([seed, rank, step]).generate_state(2, np.uint32)
    return (int(high) << 32 | int(low)) & (2**63 - 1)


def seed_step(seed: int, rank: int, step: int) -> None:
    """Seed torch (CPU and every CUDA device), NumPy and Python's `random` by the rule above."""
    value = step_seed(seed, rank, step)
    torch.manual_seed(value)
    np.random.seed(value % 2**32)
    random.seed(value)


def capture_rng() -> dict:
    """RNG states as tensors and plain Python values (loadable with torch.load(weights_only=True))."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    """Set every stream to a `capture_rng()` value (CUDA only when it was captured and is in use)."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextmanager
def preserved_rng() -> Iterator[None]:
    """Everything inside draws from, and leaves behind, the RNG state found on entry."""
    state = capture_rng()
    try:
        yield
    finally:
        restore_rng(state)


__all__ = ["capture_rng", "preserved_rng", "restore_rng", "seed_step", "step_seed"]
