"""Loss weights lambda(sigma) for the denoising loss  lambda(sigma) * ||D(x0 + sigma eps; sigma) - x0||^2."""
from __future__ import annotations

from abc import ABC, abstractmethod

import torch


class DiffusionLossWeighting(ABC):
    @abstractmethod
    def __call__(self, sigma: torch.Tensor) -> torch.Tensor:
        ...


class UnitWeighting(DiffusionLossWeighting):
    """lambda = 1."""

    def __call__(self, sigma: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(sigma)


class EDMWeighting(DiffusionLossWeighting):
    """Karras et al. 2022, Table 1 "EDM" column:
    lambda = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 = 1 / c_out^2."""

    def __init__(
        self,
        sigma_data: float = 0.5,  # standard deviation of the data
    ) -> None:
        self.sigma_data = sigma_data

    def __call__(self, sigma: torch.Tensor) -> torch.Tensor:
        return (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2


class VWeighting(EDMWeighting):
    """v-prediction weighting: the EDM weighting with sigma_data = 1, lambda = (sigma^2 + 1) / sigma^2."""

    def __init__(self) -> None:
        super().__init__(sigma_data=1.0)


class EpsWeighting(DiffusionLossWeighting):
    """epsilon-prediction weighting: lambda = sigma^-2 (the plain ||eps_hat - eps||^2 loss)."""

    def __call__(self, sigma: torch.Tensor) -> torch.Tensor:
        return sigma**-2.0


class RectifiedFlowWeighting(DiffusionLossWeighting):
    """With `RectifiedFlowScaling`, lambda = 1 / c_out^2 = ((1 + sigma) / sigma)^2 = 1 / t^2 turns the
    denoising loss into the velocity loss ||F - v||^2 of rectified flow, v = eps - x0.

    Derivation, with x = x0 + sigma eps, t = sigma / (1 + sigma), c_skip = 1 - t, c_out = -t:
        c_skip x + c_out v = (x0 + sigma eps) / (1 + sigma) - t (eps - x0)
                           = (1 - t) x0 + t eps - t eps + t x0 = x0,
    so the target x0 is what D would be if the network predicted v exactly, and
        D - x0 = c_out (F - v) = -t (F - v),   ||D - x0||^2 = t^2 ||F - v||^2.
    The sign of c_out drops out of the square; lambda = t^-2 is finite for sigma > 0 (clamp t away
    from 0 in the sampler: `RectifiedFlowSampling.t_min`).
    """

    def __call__(self, sigma: torch.Tensor) -> torch.Tensor:
        return ((1.0 + sigma) / sigma) ** 2
