"""Closed-form pieces for testing distillation on low-dimensional data.

`GaussianMixtureScore` is a score role with an exact denoiser: for data x0 ~ sum_k w_k N(mu_k, s_k^2 I)
and x = x0 + sigma * eps,

    D(x; sigma) = E[x0 | x] = sum_k r_k(x) (mu_k + s_k^2 / (s_k^2 + sigma^2) (x - mu_k)),
    r_k(x) = softmax_k( log w_k + log N(x; mu_k, (s_k^2 + sigma^2) I) ).

With `trainable=True` its means, log-weights and log-stds are parameters, so the same family can
be a critic that starts from the teacher (as DMD's fake_score does) and is fitted to the
generator's samples by the denoising loss.

`ToyMLP` is a network with the U-Net's call signature for vector data `(N, D)`, optionally
conditioned on the conditioner's `vector` (as `y`).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import nn


class GaussianMixtureScore(nn.Module):
    def __init__(
        self,
        means: Sequence[Sequence[float]],  # (K, D) component means mu_k
        weights: Sequence[float] | None = None,  # (K,) mixture weights w_k (normalised); None: equal
        stds: float | Sequence[float] = 0.1,  # s_k, isotropic std per component (or one for all)
        trainable: bool = False,  # means / log-weights / log-stds as parameters
    ) -> None:
        super().__init__()
        mu = torch.tensor(means, dtype=torch.float32)  # (K, D)
        K = mu.shape[0]
        w = torch.full((K,), 1.0 / K) if weights is None else torch.tensor(weights, dtype=torch.float32)
        s = torch.full((K,), float(stds)) if isinstance(stds, (int, float)) else torch.tensor(stds, dtype=torch.float32)
        values = {"means": mu, "log_weights": (w / w.sum()).log(), "log_stds": s.log()}
        for name, value in values.items():
            if trainable:
                self.register_parameter(name, nn.Parameter(value))
            else:
                self.register_buffer(name, value)

    def forward(
        self,
        x: torch.Tensor,  # (N, D)
        sigma: torch.Tensor,  # (N,)
        cond: dict | None = None,  # unused (unconditional)
        uc: dict | None = None,  # unused: no guidance
        **kwargs: Any,
    ) -> torch.Tensor:
        """-> E[x0 | x] (N, D)."""
        log_r, shrink = self._posterior(x.float(), sigma.float())  # (N, K), (N, K)
        r = log_r.softmax(dim=1)  # (N, K) responsibilities
        diff = x.float()[:, None, :] - self.means[None]  # (N, K, D)
        x0_k = self.means[None] + shrink[..., None] * diff  # (N, K, D) per-component posterior mean
        return (r[..., None] * x0_k).sum(dim=1)  # (N, D)

    def _posterior(self, x: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        D = x.shape[1]
        var_s = (2 * self.log_stds).exp()[None]  # (1, K) s_k^2
        var = var_s + sigma[:, None] ** 2  # (N, K) s_k^2 + sigma^2
        sq = ((x[:, None, :] - self.means[None]) ** 2).sum(-1)  # (N, K)
        log_n = -0.5 * sq / var - 0.5 * D * torch.log(2 * math.pi * var)  # (N, K)
        log_w = self.log_weights.log_softmax(dim=0)[None]  # (1, K)
        return log_w + log_n, var_s / var

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n exact samples -> (n, D)."""
        k = torch.multinomial(self.log_weights.softmax(0), n, replacement=True, generator=generator)  # (n,)
        eps = torch.randn(n, self.means.shape[1], generator=generator)
        return self.means[k] + self.log_stds.exp()[k, None] * eps


class ToyMLP(nn.Module):
    """F(x, c_noise) for vector data: an MLP on [x, Fourier features of c_noise]."""

    def __init__(
        self,
        dim: int = 2,  # D, data dimension
        hidden: int = 128,  # width
        depth: int = 3,  # hidden layers
        num_freqs: int = 8,  # Fourier features of c_noise
        cond_dim: int = 0,  # > 0: the conditioning vector y (N, cond_dim) is an input too
    ) -> None:
        super().__init__()
        self.cond_dim = cond_dim
        self.register_buffer("freqs", torch.arange(1, num_freqs + 1, dtype=torch.float32) * math.pi)
        layers: list[nn.Module] = [nn.Linear(dim + 2 * num_freqs + cond_dim, hidden), nn.SiLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(hidden, hidden), nn.SiLU()]
        self.body = nn.Sequential(*layers)
        self.out = nn.Linear(hidden, dim)

    def forward(
        self,
        x: torch.Tensor,  # (N, D)
        timesteps: torch.Tensor | None = None,  # (N,) c_noise
        context: torch.Tensor | None = None,  # unused
        y: torch.Tensor | None = None,  # (N, cond_dim) when cond_dim > 0
        return_bottleneck: bool = False,  # also return the last hidden layer
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        t = timesteps.float()[:, None] * self.freqs[None]  # (N, F)
        inputs = [x, t.sin().to(x.dtype), t.cos().to(x.dtype)] + ([y.to(x.dtype)] if self.cond_dim else [])
        h = self.body(torch.cat(inputs, dim=1))  # (N, hidden)
        out = self.out(h)  # (N, D)
        return (out, h) if return_bottleneck else out


__all__ = ["GaussianMixtureScore", "ToyMLP"]
