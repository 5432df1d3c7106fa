"""Shared closed-form toys for the diffusion tests (scalings, samplers, guiders, loss)."""
from __future__ import annotations

import json
from pathlib import Path

import torch

DATA = Path(__file__).parent / "data"
MODULE = "sgm.modules.diffusionmodules"


def golden_facts() -> dict:
    """Closed-form values produced by upstream (copy of golden.json's `_facts`)."""
    return json.loads((DATA / "golden_facts.json").read_text())


def cfg(path: str, **params) -> dict:
    """`{target, params}` for a class under sgm.modules.diffusionmodules, e.g. cfg("discretizer.EDMDiscretization")."""
    return {"target": f"{MODULE}.{path}", "params": params}


class GaussianData:
    """x0 ~ N(mu, s^2) per dimension. The exact denoiser is E[x0 | x0 + sigma eps = x]:

    D(x; sigma) = mu + s^2 / (s^2 + sigma^2) (x - mu).
    """

    def __init__(self, mu: float = 1.5, s: float = 0.5) -> None:
        self.mu = mu
        self.s = s
        self.calls = 0

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: dict) -> torch.Tensor:
        self.calls += 1
        sigma = sigma.reshape(-1, *([1] * (x.ndim - 1)))  # (N, 1, ...)
        return self.mu + self.s**2 / (self.s**2 + sigma**2) * (x - self.mu)


def identity_network(x: torch.Tensor, c_noise: torch.Tensor, cond: dict, **kwargs) -> torch.Tensor:
    return x
