"""Small network helpers shared by the U-Nets, the autoencoders and the embedders."""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.utils.checkpoint
from einops import rearrange
from torch import nn

from sgm.util import ConfigError


def timestep_embedding(
    timesteps: torch.Tensor,  # (N,) scalars, any float/int dtype
    dim: int,  # output width
    max_period: int = 10000,  # longest sinusoid period
) -> torch.Tensor:
    """Sinusoidal embedding `[cos(t f_k), sin(t f_k)]`, f_k = max_period^(-k/half). -> (N, dim) float32."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    )
    args = timesteps[:, None].float() * freqs[None]  # (N, half)
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (N, 2*half)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


def zero_module(module: nn.Module) -> nn.Module:
    """Zero all parameters of `module` in place (output layers that start as a no-op) and return it."""
    for param in module.parameters():
        param.detach().zero_()
    return module


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 whatever the input dtype; the result keeps the input dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).type(x.dtype)


def normalization(channels: int) -> GroupNorm32:
    """The U-Net's standard norm: 32 groups, eps 1e-5, fp32 statistics."""
    return GroupNorm32(32, channels)


_CONVS = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_AVG_POOLS = {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}


def conv_nd(dims: int, *args: Any, **kwargs: Any) -> nn.Module:
    """`nn.Conv{dims}d(*args, **kwargs)` for dims in 1, 2, 3."""
    if dims not in _CONVS:
        raise ConfigError(f"unsupported dims: {dims} (expected 1, 2 or 3)")
    return _CONVS[dims](*args, **kwargs)


def avg_pool_nd(dims: int, *args: Any, **kwargs: Any) -> nn.Module:
    """`nn.AvgPool{dims}d(*args, **kwargs)` for dims in 1, 2, 3."""
    if dims not in _AVG_POOLS:
        raise ConfigError(f"unsupported dims: {dims} (expected 1, 2 or 3)")
    return _AVG_POOLS[dims](*args, **kwargs)


def linear(*args: Any, **kwargs: Any) -> nn.Linear:
    return nn.Linear(*args, **kwargs)


def checkpoint(function: Callable[..., Any], *args: Any, enabled: bool) -> Any:
    """`function(*args)`, recomputing its activations in backward when `enabled` and grad is on.

    Uses the non-reentrant variant: gradients reach parameters even when no input requires grad
    (adapter / partial training), unlike upstream's re-entrant default.
    """
    if enabled and torch.is_grad_enabled():
        return torch.utils.checkpoint.checkpoint(function, *args, use_reentrant=False)
    return function(*args)


MERGE_STRATEGIES = ("fixed", "learned", "learned_with_images")


class AlphaBlender(nn.Module):
    """`alpha * x_spatial + (1 - alpha) * x_temporal` with a fixed or learned scalar `mix_factor`.

    * "fixed": alpha = mix_factor (a buffer, not trained).
    * "learned": alpha = sigmoid(mix_factor).
    * "learned_with_images": alpha = sigmoid(mix_factor) for video frames and exactly 1 for rows that
      `image_only_indicator` (B, T) flags as still images (sigmoid applied before the override).
      The per-frame alpha (B, T) is laid out against the features by `rearrange_pattern`.
    """

    def __init__(
        self,
        alpha: float,  # initial mix_factor
        merge_strategy: str = "learned_with_images",  # one of MERGE_STRATEGIES
        rearrange_pattern: str = "b t -> (b t) 1 1",  # einops pattern from (B, T) to the feature layout
    ):
        super().__init__()
        if merge_strategy not in MERGE_STRATEGIES:
            raise ConfigError(f"unknown merge_strategy {merge_strategy!r}; expected one of {MERGE_STRATEGIES}")
        self.merge_strategy = merge_strategy
        self.rearrange_pattern = rearrange_pattern
        mix_factor = torch.tensor([float(alpha)])  # (1,)
        if merge_strategy == "fixed":
            self.register_buffer("mix_factor", mix_factor)
        else:
            self.mix_factor = nn.Parameter(mix_factor)

    def get_alpha(self, image_only_indicator: torch.Tensor | None) -> torch.Tensor:
        if self.merge_strategy == "fixed":
            return self.mix_factor
        alpha = torch.sigmoid(self.mix_factor)  # (1,)
        if self.merge_strategy == "learned":
            return alpha
        if image_only_indicator is None:
            raise ValueError("merge_strategy 'learned_with_images' needs image_only_indicator (B, T)")
        alpha = torch.where(image_only_indicator.bool(), torch.ones_like(alpha), alpha)  # (B, T)
        return rearrange(alpha, self.rearrange_pattern)

    def forward(
        self,
        x_spatial: torch.Tensor,
        x_temporal: torch.Tensor,
        image_only_indicator: torch.Tensor | None = None,  # (B, T), 1 = still image
    ) -> torch.Tensor:
        alpha = self.get_alpha(image_only_indicator)  # float32; cast after 1 - alpha
        return alpha.to(x_spatial.dtype) * x_spatial + (1.0 - alpha).to(x_spatial.dtype) * x_temporal
