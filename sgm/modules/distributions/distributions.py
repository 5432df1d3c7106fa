"""The diagonal Gaussian posterior of a KL autoencoder.

An encoder predicts `2·z` channels: the first half is the mean, the second half the log-variance
of an axis-aligned Gaussian over the latent. The log-variance is clamped to [-30, 20] so that
`exp` stays finite in float16/float32.
"""
from __future__ import annotations

import math

import torch

LOGVAR_MIN = -30.0  # exp(-30) ~ 1e-13: variance floor
LOGVAR_MAX = 20.0  # exp(20) ~ 5e8: variance ceiling


def _sum_non_batch(x: torch.Tensor) -> torch.Tensor:
    """Sum over every dim except the first: `(N, ...)` -> `(N,)`."""
    return x.reshape(x.shape[0], -1).sum(dim=1)


class DiagonalGaussianDistribution:
    """N(mean, diag(exp(logvar))) built from the encoder's `(N, 2·z, ...)` moments tensor."""

    def __init__(self, parameters: torch.Tensor):
        if parameters.ndim < 2 or parameters.shape[1] % 2 != 0:
            raise ValueError(
                "DiagonalGaussianDistribution expects moments of shape (N, 2*z, ...) with an even "
                f"channel count (mean and logvar halves), got shape {tuple(parameters.shape)}"
            )
        self.parameters = parameters
        self.mean, logvar = torch.chunk(parameters, 2, dim=1)  # each (N, z, ...)
        self.logvar = torch.clamp(logvar, LOGVAR_MIN, LOGVAR_MAX)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """z = mean + std · ε, ε ~ N(0, I) (reparameterised, so gradients reach the moments)."""
        eps = torch.randn(
            self.mean.shape,
            generator=generator,
            device=self.mean.device,
            dtype=self.mean.dtype,
        )
        return self.mean + self.std * eps

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self, other: DiagonalGaussianDistribution | None = None) -> torch.Tensor:
        """KL(self || other) per row, `(N,)`; `other=None` means the standard normal N(0, I)."""
        if other is None:
            return 0.5 * _sum_non_batch(self.mean**2 + self.var - 1.0 - self.logvar)
        return 0.5 * _sum_non_batch(
            (self.mean - other.mean) ** 2 / other.var
            + self.var / other.var
            - 1.0
            - self.logvar
            + other.logvar
        )

    def nll(self, sample: torch.Tensor) -> torch.Tensor:
        """Negative log-likelihood of `sample` under this Gaussian, summed per row, `(N,)`."""
        log_two_pi = math.log(2.0 * math.pi)
        return 0.5 * _sum_non_batch(log_two_pi + self.logvar + (sample - self.mean) ** 2 / self.var)
