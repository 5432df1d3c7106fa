"""Noise-level schedules: explicit, descending lists of sigmas for samplers and discrete denoisers.

`discretization(n)` returns n sigmas from largest to smallest followed by a final 0 (the clean
end of the sampling trajectory); `do_append_zero=False` drops the 0, `flip=True` reverses the
whole list (ascending order, as the discrete denoiser's lookup table wants).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Sequence

import torch

from sgm.util import append_zero


class Discretization(ABC):
    def __call__(
        self,
        n: int | None,  # number of nonzero sigmas (None only for ExplicitDiscretization)
        do_append_zero: bool = True,  # append sigma = 0 at the end
        device: str | torch.device = "cpu",
        flip: bool = False,  # reverse the result (ascending)
    ) -> torch.Tensor:
        sigmas = self.get_sigmas(n, device=device)  # (n,) descending
        if do_append_zero:
            sigmas = append_zero(sigmas)  # (n + 1,)
        if flip:
            sigmas = torch.flip(sigmas, (0,))
        return sigmas

    @abstractmethod
    def get_sigmas(self, n: int | None, device: str | torch.device = "cpu") -> torch.Tensor:
        """n positive sigmas, strictly descending."""


def _require_count(n: int | None, name: str) -> int:
    if n is None or int(n) < 1:
        raise ValueError(f"{name} needs a number of steps n >= 1, got {n!r} (set num_steps)")
    return int(n)


class EDMDiscretization(Discretization):
    """Karras et al. 2022, eq. 5: sigma_i = (smax^(1/rho) + i/(n-1) (smin^(1/rho) - smax^(1/rho)))^rho."""

    def __init__(
        self,
        sigma_min: float = 0.002,  # last nonzero sigma
        sigma_max: float = 80.0,  # first sigma
        rho: float = 7.0,  # curvature; larger spends more steps at small sigma
    ) -> None:
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max
        self.rho = rho

    def get_sigmas(self, n: int | None, device: str | torch.device = "cpu") -> torch.Tensor:
        n = _require_count(n, type(self).__name__)
        ramp = torch.linspace(0, 1, n, device=device)  # (n,) float32, i / (n - 1)
        max_inv_rho = self.sigma_max ** (1 / self.rho)
        min_inv_rho = self.sigma_min ** (1 / self.rho)
        return (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** self.rho  # (n,)


class LegacyDDPMDiscretization(Discretization):
    """The Stable Diffusion "scaled linear" DDPM schedule, as sigmas.

    beta_k = (linspace(sqrt(linear_start), sqrt(linear_end), num_timesteps)_k)^2,
    abar_k = prod_{j<=k} (1 - beta_j),  sigma_k = sqrt((1 - abar_k) / abar_k).
    For n < num_timesteps the n timesteps floor((T - 1) (1 - i / n)), i = 0..n-1, are used
    (roughly evenly spaced, always including T - 1); n == num_timesteps gives the full table.
    """

    def __init__(
        self,
        linear_start: float = 0.00085,  # beta at the first timestep
        linear_end: float = 0.012,  # beta at the last timestep
        num_timesteps: int = 1000,  # T, length of the DDPM chain
    ) -> None:
        self.num_timesteps = num_timesteps
        betas = torch.linspace(linear_start**0.5, linear_end**0.5, num_timesteps, dtype=torch.float64) ** 2
        self.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)  # (T,) float64, abar_k

    def timesteps(self, n: int) -> torch.Tensor:
        """Descending integer timesteps used for an n-step schedule."""
        T = self.num_timesteps
        if n > T:
            raise ValueError(f"LegacyDDPMDiscretization has {T} timesteps; cannot make {n} steps")
        if n == T:
            return torch.arange(T - 1, -1, -1)
        i = torch.arange(n, dtype=torch.float64)
        return ((T - 1) - i * ((T - 1) / n)).floor().long()  # (n,) descending

    def get_sigmas(self, n: int | None, device: str | torch.device = "cpu") -> torch.Tensor:
        n = _require_count(n, type(self).__name__)
        alphas_cumprod = self.alphas_cumprod[self.timesteps(n)]  # (n,) descending timesteps
        sigmas = ((1.0 - alphas_cumprod) / alphas_cumprod) ** 0.5
        return sigmas.to(device=device, dtype=torch.float32)


class RectifiedFlowDiscretization(Discretization):
    """Uniform in rectified-flow time: t_i = t_max (n - i) / n, i = 0..n-1, as sigma_i = t_i / (1 - t_i).

    The appended 0 is t = 0, so every step, the last included, spans dt = t_max / n. Euler steps in
    sigma with `RectifiedFlowScaling` are exactly Euler steps x_t <- x_t + (t_next - t) v in t.
    t = 1 (sigma = inf) cannot be represented; t_max = 1 - 1e-4 starts at sigma ~ 1e4, where the
    sampler's noise x = sqrt(1 + sigma^2) eps is x_t = 0.9999 eps.
    """

    def __init__(
        self,
        t_max: float = 1.0 - 1.0e-4,  # first (noisiest) time, < 1
    ) -> None:
        if not 0.0 < t_max < 1.0:
            raise ValueError(f"RectifiedFlowDiscretization needs 0 < t_max < 1, got t_max={t_max}")
        self.t_max = t_max

    def get_sigmas(self, n: int | None, device: str | torch.device = "cpu") -> torch.Tensor:
        n = _require_count(n, type(self).__name__)
        t = self.t_max * torch.arange(n, 0, -1, dtype=torch.float64) / n  # (n,) descending, last t_max / n
        return (t / (1.0 - t)).to(device=device, dtype=torch.float32)  # sigma = t / (1 - t)


class ExplicitDiscretization(Discretization):
    """A fixed list of sigmas, e.g. the few noise levels a distilled student was trained on."""

    def __init__(
        self,
        sigmas: Sequence[float],  # strictly descending, positive; the final 0 is appended on call
    ) -> None:
        values = [float(s) for s in sigmas]
        if not values:
            raise ValueError("ExplicitDiscretization needs at least one sigma")
        if any(s <= 0 for s in values):
            raise ValueError(
                f"ExplicitDiscretization sigmas must be positive, got {values} "
                "(leave out the final 0: it is appended by do_append_zero)"
            )
        if any(a <= b for a, b in zip(values, values[1:])):
            raise ValueError(f"ExplicitDiscretization sigmas must be strictly descending, got {values}")
        self.sigmas = values

    def get_sigmas(self, n: int | None, device: str | torch.device = "cpu") -> torch.Tensor:
        if n is not None and int(n) != len(self.sigmas):
            raise ValueError(
                f"ExplicitDiscretization has {len(self.sigmas)} sigmas but {n} steps were requested; "
                f"set num_steps to {len(self.sigmas)} or leave it unset"
            )
        return torch.tensor(self.sigmas, dtype=torch.float32, device=device)
