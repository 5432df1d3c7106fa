"""Preconditionings `(c_skip, c_out, c_in, c_noise)` of the denoiser D(x; sigma).

Every model here uses the variance-exploding convention x = x0 + sigma * eps and the denoiser

    D(x; sigma) = c_skip(sigma) * x + c_out(sigma) * F(c_in(sigma) * x, c_noise(sigma))

of Karras et al. 2022 ("Elucidating the Design Space...", eq. 7). Each scaling below is one column
of that paper's Table 1 (or a close relative, named in its comment). Each maps a sigma tensor of
any shape to four tensors of the same shape.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import torch

Coefficients = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


class DenoiserScaling(ABC):
    """Maps sigma to `(c_skip, c_out, c_in, c_noise)`, elementwise."""

    @abstractmethod
    def __call__(self, sigma: torch.Tensor) -> Coefficients:
        ...


class EDMScaling(DenoiserScaling):
    """Table 1, "EDM" column: unit-variance network input and training target."""

    def __init__(
        self,
        sigma_data: float = 0.5,  # standard deviation of the data
    ) -> None:
        self.sigma_data = sigma_data

    def __call__(self, sigma: torch.Tensor) -> Coefficients:
        sigma_data = self.sigma_data
        c_skip = sigma_data**2 / (sigma**2 + sigma_data**2)
        c_out = sigma * sigma_data / (sigma**2 + sigma_data**2) ** 0.5
        c_in = 1 / (sigma**2 + sigma_data**2) ** 0.5
        c_noise = 0.25 * sigma.log()
        return c_skip, c_out, c_in, c_noise


class EpsScaling(DenoiserScaling):
    """Table 1, "VP" column (epsilon prediction): D = x - sigma * F.

    c_noise is sigma itself; `DiscreteDenoiser` turns it into the DDPM timestep index.
    """

    def __call__(self, sigma: torch.Tensor) -> Coefficients:
        c_skip = torch.ones_like(sigma)
        c_out = -sigma
        c_in = 1 / (sigma**2 + 1.0) ** 0.5
        c_noise = sigma.clone()
        return c_skip, c_out, c_in, c_noise


class VScaling(DenoiserScaling):
    """v-prediction (Salimans & Ho 2022): Table 1 "EDM" column with sigma_data = 1 and F = -v.

    c_noise is sigma itself (for `DiscreteDenoiser`, which maps it to a timestep index).
    """

    def __call__(self, sigma: torch.Tensor) -> Coefficients:
        c_skip = 1.0 / (sigma**2 + 1.0)
        c_out = -sigma / (sigma**2 + 1.0) ** 0.5
        c_in = 1.0 / (sigma**2 + 1.0) ** 0.5
        c_noise = sigma.clone()
        return c_skip, c_out, c_in, c_noise


class VScalingWithEDMcNoise(DenoiserScaling):
    """v-prediction as `VScaling`, with the "EDM" column's c_noise = ln(sigma) / 4.

    Used by SVD, SV3D and SV4D: D = x / (sigma^2 + 1) - sigma * F / sqrt(sigma^2 + 1).
    """

    def __call__(self, sigma: torch.Tensor) -> Coefficients:
        c_skip = 1.0 / (sigma**2 + 1.0)
        c_out = -sigma / (sigma**2 + 1.0) ** 0.5
        c_in = 1.0 / (sigma**2 + 1.0) ** 0.5
        c_noise = 0.25 * sigma.log()
        return c_skip, c_out, c_in, c_noise


class RectifiedFlowScaling(DenoiserScaling):
    """A flow-matching (rectified-flow) teacher seen as a sigma-parameterised denoiser.

    Not a Table 1 column; derived here. The network was trained on

        x_t = (1 - t) * x0 + t * eps,   t in [0, 1],   predicting the velocity v = eps - x0.

    Our convention is x = x0 + sigma * eps. Dividing by (1 + sigma) gives
    x / (1 + sigma) = x0 / (1 + sigma) + sigma / (1 + sigma) * eps, which is x_t with

        t = sigma / (1 + sigma),   1 - t = 1 / (1 + sigma)   (i.e. sigma = t / (1 - t)).

    So the network input is x_t = x / (1 + sigma)              => c_in   = 1 / (1 + sigma).
    From x_t = x0 + t * (eps - x0) = x0 + t * v:  x0 = x_t - t * v
                 = x / (1 + sigma) - sigma / (1 + sigma) * v   => c_skip = 1 / (1 + sigma),
                                                                  c_out  = -sigma / (1 + sigma).
    The network is conditioned on t, times `t_scale` (many flow models use t in [0, 1000]):
                                                                  c_noise = t * t_scale.
    """

    def __init__(
        self,
        t_scale: float = 1.0,  # the network's timestep is t * t_scale
    ) -> None:
        self.t_scale = t_scale

    def __call__(self, sigma: torch.Tensor) -> Coefficients:
        c_skip = 1.0 / (1.0 + sigma)
        c_out = -sigma / (1.0 + sigma)
        c_in = 1.0 / (1.0 + sigma)
        c_noise = sigma / (1.0 + sigma) * self.t_scale
        return c_skip, c_out, c_in, c_noise


def sigma_to_t(sigma: torch.Tensor) -> torch.Tensor:
    """Rectified-flow time of a noise level: t = sigma / (1 + sigma) (t = 1 at sigma = inf)."""
    return sigma / (1.0 + sigma)


def t_to_sigma(t: torch.Tensor) -> torch.Tensor:
    """Noise level of a rectified-flow time: sigma = t / (1 - t) (infinite at t = 1)."""
    return t / (1.0 - t)
