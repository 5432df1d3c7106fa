"""The denoiser D(x; sigma) = c_skip * x + c_out * F(c_in * x, c_noise) (Karras et al. 2022, eq. 7).

`F` is the network (called as `network(x_in, c_noise, cond, **additional_model_inputs)`), the
coefficients come from a scaling in `denoiser_scaling.py`. The denoiser owns no parameters.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from sgm.util import append_dims, instantiate_from_config


class Denoiser(nn.Module):
    def __init__(
        self,
        scaling_config: dict,  # {target, params} of a DenoiserScaling
    ) -> None:
        super().__init__()
        self.scaling = instantiate_from_config(scaling_config)

    def possibly_quantize_sigma(self, sigma: torch.Tensor) -> torch.Tensor:
        return sigma

    def possibly_quantize_c_noise(self, c_noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return c_noise

    def forward(
        self,
        network: Callable[..., torch.Tensor],  # F(x_in, c_noise, cond, **kw)
        input: torch.Tensor,  # (N, ...) noisy x = x0 + sigma * eps
        sigma: torch.Tensor,  # (N,) noise level per row
        cond: dict,  # conditioning dict passed through to the network
        **additional_model_inputs: Any,  # e.g. num_video_frames, image_only_indicator
    ) -> torch.Tensor:
        sigma = self.possibly_quantize_sigma(sigma)  # (N,)
        sigma_bc = append_dims(sigma, input.ndim)  # (N, 1, ...)
        c_skip, c_out, c_in, c_noise = self.scaling(sigma_bc)
        c_noise = self.possibly_quantize_c_noise(c_noise.reshape(sigma.shape), sigma)  # (N,)
        F_x = network(input * c_in, c_noise, cond, **additional_model_inputs)  # (N, ...)
        return c_skip * input + c_out * F_x  # eq. 7


class DiscreteDenoiser(Denoiser):
    """A denoiser for networks trained on a finite table of noise levels (e.g. DDPM timesteps).

    sigma is snapped to the nearest of the `num_idx` table entries; with `quantize_c_noise` the
    network receives that entry's integer index (0 = smallest sigma) as its timestep. Upstream
    quantises the scaling's c_noise instead; for the scalings whose c_noise is sigma (Eps, V),
    the only ones used with this class, the two are identical.
    """

    def __init__(
        self,
        scaling_config: dict,  # {target, params} of a DenoiserScaling
        num_idx: int,  # size of the sigma table, e.g. 1000 DDPM timesteps
        discretization_config: dict,  # {target, params} of the schedule the table comes from
        do_append_zero: bool = False,  # include sigma = 0 in the table
        quantize_c_noise: bool = True,  # feed the table index (not c_noise) to the network
        flip: bool = True,  # ascending table: index 0 is the smallest sigma
    ) -> None:
        super().__init__(scaling_config)
        discretization = instantiate_from_config(discretization_config)
        sigmas = discretization(num_idx, do_append_zero=do_append_zero, flip=flip)  # (num_idx,)
        self.register_buffer("sigmas", sigmas)  # persistent: checkpoints hold `denoiser.sigmas`
        self.quantize_c_noise = quantize_c_noise
        self.num_idx = num_idx

    def sigma_to_idx(self, sigma: torch.Tensor) -> torch.Tensor:
        """Index of the nearest table entry, same shape as sigma (int64)."""
        distances = (sigma.reshape(1, -1) - self.sigmas.reshape(-1, 1)).abs()  # (num_idx, N)
        return distances.argmin(dim=0).reshape(sigma.shape)

    def idx_to_sigma(self, idx: torch.Tensor) -> torch.Tensor:
        return self.sigmas[idx]

    def possibly_quantize_sigma(self, sigma: torch.Tensor) -> torch.Tensor:
        return self.idx_to_sigma(self.sigma_to_idx(sigma)).to(sigma.dtype)

    def possibly_quantize_c_noise(self, c_noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        if self.quantize_c_noise:
            return self.sigma_to_idx(sigma)
        return c_noise
