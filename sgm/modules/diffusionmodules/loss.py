"""The denoising score-matching loss  lambda(sigma) * ||D(x0 + sigma * eps; sigma) - x0||^2.

Video batches use upstream's flattened layout, (B*T, C, H, W) with an int `num_video_frames` = T
in the batch. Unlike upstream (which draws sigma per *frame*), one sigma (and one offset-noise
draw) is shared by all frames of a clip; the per-element noise eps stays independent.
"""
from __future__ import annotations

from numbers import Integral
from typing import Callable, Iterable

import torch
from torch import nn

from sgm.util import (
    ConfigError,
    append_dims,
    broadcast_cond_to_rows,
    default,
    instantiate_from_config,
    mean_flat,
)

LOSS_TYPES = ("l2", "l1")


class StandardDiffusionLoss(nn.Module):
    def __init__(
        self,
        sigma_sampler_config: dict,  # {target, params}: training sigma distribution
        loss_weighting_config: dict,  # {target, params}: lambda(sigma)
        loss_type: str = "l2",  # "l2" or "l1" ("lpips" is not available, see below)
        offset_noise_level: float = 0.0,  # std of a per-(clip, channel) constant added to eps
        batch2model_keys: Iterable[str] | str | None = None,  # batch entries passed to the network
    ) -> None:
        super().__init__()
        if loss_type == "lpips":
            raise ConfigError(
                "loss_type 'lpips' needs the pretrained VGG16 + LPIPS weights, which this project "
                "cannot download; use loss_type 'l2' or 'l1'"
            )
        if loss_type not in LOSS_TYPES:
            raise ConfigError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
        self.sigma_sampler = instantiate_from_config(sigma_sampler_config)
        self.loss_weighting = instantiate_from_config(loss_weighting_config)
        self.loss_type = loss_type
        self.offset_noise_level = offset_noise_level
        if isinstance(batch2model_keys, str):
            batch2model_keys = [batch2model_keys]
        self.batch2model_keys = set(default(batch2model_keys, []))

    def forward(
        self,
        network: Callable[..., torch.Tensor],  # the wrapped network F
        denoiser: Callable[..., torch.Tensor],  # D(network, x, sigma, cond, **kw)
        conditioner: Callable[[dict], dict],  # batch -> cond
        input: torch.Tensor,  # (N, ...) clean latents x0
        batch: dict,
    ) -> torch.Tensor:
        """Upstream's call: conditions, then `draw`, then `loss` -> per-row loss (N,)."""
        cond = broadcast_cond_to_rows(conditioner(batch), input.shape[0])  # per-clip cond -> N rows
        sigma, noise = self.draw(input, frames_per_clip(batch, input.shape[0]))

        def denoise(x: torch.Tensor, s: torch.Tensor, c: dict, **kwargs) -> torch.Tensor:
            return denoiser(network, x, s, c, **kwargs)

        return self.loss(denoise, input, sigma, noise, cond, **self.model_inputs(batch))

    # ------------------------------------------------------------------ the public seam
    def draw(self, x0: torch.Tensor, num_frames: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """One training draw -> (sigma (N,), one per clip of `num_frames` rows; eps (N, ...))."""
        sigma = per_clip_sigmas(self.sigma_sampler, x0.shape[0], num_frames, x0.device)  # (N,)
        noise = torch.randn_like(x0)  # (N, C, ...)
        if self.offset_noise_level > 0.0:  # plus a constant over space and the frames of a clip
            num_clips = x0.shape[0] // num_frames
            offset = torch.randn(num_clips, x0.shape[1], device=x0.device, dtype=x0.dtype)  # (B, C)
            offset = offset.repeat_interleave(num_frames, dim=0)  # (B*T, C)
            noise = noise + self.offset_noise_level * append_dims(offset, x0.ndim)
        return sigma, noise

    def loss(
        self,
        denoise_fn: Callable[..., torch.Tensor],  # D(x, sigma, cond, **kw) -> x0 estimate (N, ...)
        x0: torch.Tensor,  # (N, ...) clean latents
        sigma: torch.Tensor,  # (N,) from draw()
        noise: torch.Tensor,  # (N, ...) eps from draw()
        cond: dict,  # conditioning, N rows
        **model_kwargs,  # extra network inputs (num_video_frames, image_only_indicator, ...)
    ) -> torch.Tensor:
        """lambda(sigma) * ||D(x0 + sigma * eps; sigma) - x0||^2 per row -> (N,)."""
        x_noisy = x0 + append_dims(sigma, x0.ndim) * noise  # x = x0 + sigma * eps
        D_x = denoise_fn(x_noisy, sigma, cond, **model_kwargs)  # (N, ...)
        w = append_dims(self.loss_weighting(sigma), x0.ndim)  # (N, 1, ...)
        return self.get_loss(D_x, x0, w)

    def model_inputs(self, batch: dict) -> dict:
        """The batch entries named by `batch2model_keys` that the batch has."""
        return {key: batch[key] for key in self.batch2model_keys if key in batch}

    def get_loss(self, model_output: torch.Tensor, target: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if self.loss_type == "l2":
            return mean_flat(w * (model_output - target) ** 2)
        return mean_flat(w * (model_output - target).abs())


def per_clip_sigmas(
    sigma_sampler: Callable[[int], torch.Tensor],  # n -> (n,) sigmas
    num_rows: int,  # N = B*T
    num_frames: int = 1,  # T
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """One sigma per clip of `num_frames` consecutive rows, repeated for its frames -> (N,) fp32."""
    sigma = sigma_sampler(num_rows // num_frames).float().to(device)  # (B,)
    return sigma.repeat_interleave(num_frames)  # (B*T,)


def frames_per_clip(batch: dict, num_rows: int) -> int:
    """T from the batch's int `num_video_frames` (1 for image batches); checks rows = B*T."""
    num_frames = batch.get("num_video_frames", None)
    if num_frames is None:
        return 1
    if isinstance(num_frames, torch.Tensor) and num_frames.numel() == 1:
        num_frames = num_frames.item()
    if not isinstance(num_frames, Integral) or num_frames < 1:
        raise ValueError(f"batch['num_video_frames'] must be a positive int, got {num_frames!r}")
    if num_rows % num_frames != 0:
        raise ValueError(
            f"input has {num_rows} rows, not a whole number of clips of num_video_frames={num_frames}"
        )
    return int(num_frames)


__all__ = ["StandardDiffusionLoss", "frames_per_clip", "per_clip_sigmas"]
