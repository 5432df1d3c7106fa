"""Motion statistics for generated clips of the moving-digits task (no download).

`frame_difference`   mean |f_{k+1} - f_k| over pixels and frame pairs: high for moving content but
                     also for noise, so read it together with
`center_motion`      mean displacement (pixels per frame) of the ink's centre of mass: close to the
                     digit's speed for real moving digits, 0 for a static video, small for noise
                     (its centre of mass stays near the middle of the canvas).
Clips are `(b, t, C, H, W)` in [-1, 1]; the background is -1.
"""
from __future__ import annotations

import torch


def _check(clips: torch.Tensor) -> torch.Tensor:
    if clips.ndim != 5 or clips.shape[1] < 2:
        raise ValueError(f"clips must be (b, t>=2, C, H, W), got shape {tuple(clips.shape)}")
    return clips.float().clamp(-1, 1)


def ink_centers(clips: torch.Tensor) -> torch.Tensor:
    """(b, t, C, H, W) -> (b, t, 2) centre of mass (y, x) of the ink (x + 1) / 2, in pixels."""
    clips = _check(clips)
    b, t = clips.shape[:2]
    return frame_ink_centers(clips.flatten(0, 1)).view(b, t, 2)


def frame_ink_centers(frames: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) in [-1, 1] -> (N, 2) centre of mass (y, x) of each frame's ink (x + 1) / 2, in pixels."""
    ink = (frames.float().clamp(-1, 1).mean(dim=1) + 1.0) / 2.0  # (N, H, W)
    h, w = ink.shape[-2:]
    ys = torch.arange(h, dtype=ink.dtype, device=ink.device).view(1, h, 1)
    xs = torch.arange(w, dtype=ink.dtype, device=ink.device).view(1, 1, w)
    mass = ink.sum(dim=(-2, -1)).clamp(min=1e-6)  # (N,)
    return torch.stack([(ink * ys).sum(dim=(-2, -1)) / mass, (ink * xs).sum(dim=(-2, -1)) / mass], dim=-1)


def center_motion(clips: torch.Tensor) -> float:
    """Mean per-frame displacement of the ink's centre of mass, in pixels."""
    centers = ink_centers(clips)  # (b, t, 2)
    return float((centers[:, 1:] - centers[:, :-1]).norm(dim=-1).mean())


def frame_difference(clips: torch.Tensor) -> float:
    """Mean |f_{k+1} - f_k| (images in [-1, 1])."""
    clips = _check(clips)
    return float((clips[:, 1:] - clips[:, :-1]).abs().mean())


def motion_stats(clips: torch.Tensor) -> dict:
    return {"center_motion": center_motion(clips), "frame_difference": frame_difference(clips)}
