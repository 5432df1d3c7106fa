"""DMD2 losses (Yin et al. 2024, "Improved Distribution Matching Distillation").

Shapes: rows are upstream's flattened layout `(N, ...)` with N = B * T (T = 1 for images). Every
per-sample reduction goes over all non-batch dims of a *clip*: the T frames of a clip are folded
together with `sgm.util.fold_frames`, so a clip is one sample.

    dmd_loss               generator: 0.5 ||x0 - sg(x0 - grad)||^2 with
                           grad = (pred_fake - pred_real) / mean|x0 - pred_real|   (DMD eq. 7-8)
    critic (fake_score)    the ordinary denoising loss on generated samples: the engine's loss_fn
    gan_*_loss             non-saturating GAN on the critic's bottleneck features (DMD2 sec. 4.3)
    regression_loss        ||G(noise) - x0_teacher||^2 on teacher ODE pairs (DMD1 sec. 3.3)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sgm.util import append_dims, fold_frames, instantiate_from_config


@dataclass
class DMDStats:
    normalizer: torch.Tensor  # (B,) mean |x0 - pred_real| per clip
    grad: torch.Tensor  # (N, ...) the normalised DMD gradient, zero on masked frames


def frame_mask(
    mask: torch.Tensor | None,  # (B*T,) or (B, T), 1 = keep; None: keep all
    num_rows: int,  # N = B*T
    num_frames: int,  # T
) -> torch.Tensor:
    """-> (B, T) float mask of the frames that take part in the DMD loss."""
    num_clips = num_rows // num_frames
    if mask is None:
        return torch.ones(num_clips, num_frames)
    if mask.numel() != num_rows:
        raise ValueError(f"dmd mask has {mask.numel()} entries for {num_rows} rows (B*T)")
    return mask.reshape(num_clips, num_frames).float()


def dmd_loss(
    x0: torch.Tensor,  # (N, ...) generator output, with grad
    pred_real: torch.Tensor,  # (N, ...) teacher x0 estimate at x_t (with CFG), no grad
    pred_fake: torch.Tensor,  # (N, ...) critic x0 estimate at x_t, no grad
    num_frames: int = 1,  # T, frames per clip
    mask: torch.Tensor | None = None,  # (N,) or (B, T): 1 = frame takes part, 0 = known frame
) -> tuple[torch.Tensor, DMDStats]:
    """Per-clip DMD loss (B,), whose gradient w.r.t. x0 is `grad` / (kept elements per clip).

    Masked frames contribute neither to the mean-squared error nor to the normaliser.
    """
    keep = frame_mask(mask, x0.shape[0], num_frames).to(x0.device)  # (B, T)
    x0_f = fold_frames(x0.float(), num_frames)  # (B, T, ...) fp32
    real_f = fold_frames(pred_real.detach().float(), num_frames)  # (B, T, ...)
    fake_f = fold_frames(pred_fake.detach().float(), num_frames)  # (B, T, ...)
    keep_b = append_dims(keep, x0_f.ndim)  # (B, T, 1, ...)
    per_frame = x0_f[0, 0].numel()  # elements of one frame
    count = keep.sum(dim=1).clamp(min=1) * per_frame  # (B,) kept elements per clip
    with torch.no_grad():
        abs_diff = (x0_f.detach() - real_f).abs() * keep_b  # (B, T, ...)
        normalizer = abs_diff.flatten(1).sum(dim=1) / count  # (B,) DMD2: mean |x0 - pred_real|
        # eq. 7; the floor only guards x0 == pred_real exactly (0/0), so a NaN teacher stays visible
        # (DMD2's nan_to_num turned it into a zero gradient and a run that "trains" for ever)
        grad = (fake_f - real_f) / append_dims(normalizer.clamp(min=torch.finfo(torch.float32).tiny), x0_f.ndim)
        grad = torch.where(keep_b > 0, grad, torch.zeros_like(grad))  # (B, T, ...) masked frames: 0
        target = x0_f.detach() - grad  # sg(x0 - grad)
    sq = (x0_f - target) ** 2 * keep_b  # (B, T, ...)
    loss = 0.5 * sq.flatten(1).sum(dim=1) / count  # (B,)
    grad_rows = grad.reshape(x0.shape).to(x0.dtype)  # (N, ...)
    return loss, DMDStats(normalizer=normalizer, grad=grad_rows)


class RestrictedDiscreteSampling:
    """Uniform over the indices [lo, hi] of a teacher's N-point schedule, lo/hi given as fractions.

    The default DMD-loss distribution: DMD2 draws t uniformly in [0.02 T, 0.98 T]; here the teacher's
    discretization (descending, index 0 = sigma_max) is restricted to the same share of its range.
    """

    def __init__(
        self,
        discretization_config: dict,  # {target, params}, e.g. the teacher's EDMDiscretization
        num_idx: int = 1000,  # N, points of the schedule
        min_fraction: float = 0.02,  # lowest index used, as a fraction of N - 1
        max_fraction: float = 0.98,  # highest index used, as a fraction of N - 1
    ) -> None:
        if not 0.0 <= min_fraction <= max_fraction <= 1.0:
            raise ValueError(f"need 0 <= min_fraction <= max_fraction <= 1, got {min_fraction}, {max_fraction}")
        discretization = instantiate_from_config(discretization_config)
        self.sigmas = discretization(num_idx, do_append_zero=False)  # (N,) descending
        self.lo = int(round(min_fraction * (num_idx - 1)))
        self.hi = int(round(max_fraction * (num_idx - 1)))

    def __call__(
        self,
        n_samples: int,
        rand: torch.Tensor | None = None,  # (n_samples,) indices in [lo, hi] to use
        generator: torch.Generator | None = None,
        device: str | torch.device | None = None,
    ) -> torch.Tensor:
        if rand is None:
            rand = torch.randint(self.lo, self.hi + 1, (n_samples,), generator=generator)
        sigma = self.sigmas[rand.cpu()]  # (n_samples,)
        return sigma if device is None else sigma.to(device)


# ---------------------------------------------------------------------------------- GAN (DMD2)
class BottleneckClassifier(nn.Module):
    """A small real/fake head on the critic's bottleneck features h_mid -> one logit per row."""

    def __init__(
        self,
        in_channels: int,  # channels of h_mid (the critic U-Net's middle block)
        hidden_channels: int = 64,  # width of the head
        num_groups: int = 8,  # GroupNorm groups (must divide both widths)
    ) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.GroupNorm(num_groups, in_channels),
            nn.SiLU(),
            nn.Conv2d(in_channels, hidden_channels, 3, padding=1),
            nn.GroupNorm(num_groups, hidden_channels),
            nn.SiLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(hidden_channels, 1),
        )

    def forward(self, h_mid: torch.Tensor) -> torch.Tensor:
        """(N, C_mid, h, w) -> (N,) logits."""
        return self.net(h_mid.float()).squeeze(1)


def gan_generator_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss softplus(-D(G(z))), per row (N,)."""
    return F.softplus(-logits_fake)


def gan_critic_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Discriminator loss softplus(-D(x)) + softplus(D(G(z))), mean over rows (scalar)."""
    return F.softplus(-logits_real).mean() + F.softplus(logits_fake).mean()


def regression_loss(x0: torch.Tensor, x0_teacher: torch.Tensor, num_frames: int = 1) -> torch.Tensor:
    """||G(noise) - x0_teacher||^2 per clip (B,) on teacher ODE pairs (DMD1's regression loss, l2)."""
    diff = fold_frames((x0.float() - x0_teacher.float()) ** 2, num_frames)  # (B, T, ...)
    return diff.flatten(1).mean(dim=1)


__all__ = [
    "BottleneckClassifier",
    "DMDStats",
    "RestrictedDiscreteSampling",
    "dmd_loss",
    "frame_mask",
    "gan_critic_loss",
    "gan_generator_loss",
    "regression_loss",
]
