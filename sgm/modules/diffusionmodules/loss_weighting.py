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
