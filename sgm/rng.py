"""The global RNG streams (torch, CUDA, NumPy, Python) as one value: captured, restored, preserved.

Checkpoints store `capture_rng()` so a resumed run draws what the original run drew; callbacks that
measure inside a training step run under `preserved_rng()` so training draws as if they were absent.
"""
from __future__ import annotations

import random
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch


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


__all__ = ["capture_rng", "preserved_rng", "restore_rng"]
