"""Small formulas shared by the samplers (variance-exploding ODE/SDE, x = x0 + sigma * eps)."""
from __future__ import annotations

from typing import Sequence

import torch
from scipy import integrate

from sgm.util import append_dims


def initial_noise(noise: torch.Tensor, sigma_0: torch.Tensor) -> torch.Tensor:
    """x_0 = sqrt(1 + sigma_0^2) * eps: every sampler's start from unit noise (upstream's scaling)."""
    return noise * torch.sqrt(1.0 + sigma_0.float() ** 2)


def euler_ode(
    derivative,  # (x (N, ...), s scalar tensor) -> dx/ds (N, ...)
    x: torch.Tensor,  # (N, ...) the state at grid[0]
    grid: torch.Tensor,  # (K + 1,) the values of the ODE variable s (sigma, or flow time t)
) -> torch.Tensor:
    """K explicit Euler steps x <- x + (s_next - s) dx/ds along `grid` -> the state at grid[-1]."""
    for s, s_next in zip(grid[:-1], grid[1:]):
        x = x + (s_next - s).to(x) * derivative(x, s)
    return x


def to_d(x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    """ODE derivative dx/dsigma = (x - D(x; sigma)) / sigma (Karras et al. 2022, eq. 3). sigma: (N,)."""
    return (x - denoised) / append_dims(sigma, x.ndim)


def get_ancestral_step(
    sigma_from: torch.Tensor,  # current noise level
    sigma_to: torch.Tensor,  # next noise level
    eta: float = 1.0,  # 0: deterministic (DDIM-like), 1: full ancestral noise
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a step sigma_from -> sigma_to into a deterministic step down to sigma_down and fresh
    noise of std sigma_up, with sigma_down^2 + sigma_up^2 = sigma_to^2."""
    if not eta:
        return sigma_to, torch.zeros_like(sigma_to)
    sigma_up = torch.minimum(
        sigma_to,
        eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5,
    )
    sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
    return sigma_down, sigma_up


def linear_multistep_coeff(
    order: int,  # number of derivatives combined
    t: Sequence[float],  # the full sigma schedule (floats)
    i: int,  # current step: integrate from t[i] to t[i + 1]
    j: int,  # which past derivative (0 = current, 1 = previous, ...)
    epsrel: float = 1e-4,
) -> float:
    """Integral over [t_i, t_{i+1}] of the Lagrange basis polynomial through t_i, ..., t_{i-order+1}
    that is 1 at t_{i-j} (Adams-Bashforth with non-uniform steps)."""
    if order - 1 > i:
        raise ValueError(f"order {order} is too high for step {i} (needs {order - 1} previous steps)")

    def basis(tau: float) -> float:
        prod = 1.0
        for k in range(order):
            if k != j:
                prod *= (tau - t[i - k]) / (t[i - j] - t[i - k])
        return prod

    return integrate.quad(basis, t[i], t[i + 1], epsrel=epsrel)[0]


def to_neg_log_sigma(sigma: torch.Tensor) -> torch.Tensor:
    """The DPM-Solver time variable t = -ln sigma."""
    return sigma.log().neg()


def to_sigma(neg_log_sigma: torch.Tensor) -> torch.Tensor:
    return neg_log_sigma.neg().exp()
