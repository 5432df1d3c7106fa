"""SVD's micro-conditioning for training data: fps_id, motion_bucket_id and cond_aug, per clip.

What upstream fixes and what it leaves to the user (§17.3):

* `fps_id` is the frame rate minus one. `simple_video_sample.py` defaults to fps_id 6 and writes its
  mp4 at `fps_id + 1` frames per second, so a clip whose frames are `stride` container frames apart
  plays at `fps / stride` and gets `fps_id = round(fps / stride) - 1` (`fps_id_from_fps`).
* `motion_bucket_id` is an integer on 0..255 (default 127). The SVD paper derives it from optical
  flow but publishes no mapping, so ours is stated and tested here (`motion_bucket_from_flow`):
  the mean Farneback flow magnitude between consecutive frames of the clip, as a percentage of the
  frame's shorter side, times `scale` (default 50: a clip moving 2.54% of its shorter side per frame
  sits at 127), rounded and clipped to 0..255.
* `cond_aug` is the noise level added to the conditioning frame. Upstream samples at 0.02; the
  public SVD fine-tuning scripts (SVD_Xtend and its descendants) draw it per clip from a log-normal
  law, log(cond_aug) ~ N(-3.0, 0.5^2) (median 0.05).

Each value is configured as a law (`parse_law`):

    fps_id: 6                          # a constant
    motion_bucket_id: [60, 200]        # uniform over [lo, hi] (integers for fps_id / motion_bucket_id)
    cond_aug: {log_normal: [-3.0, 0.5]}   # exp(p_mean + p_std * n), n ~ N(0, 1)
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

MOTION_BUCKET_SCALE = 50.0  # buckets per percent of the shorter side moved per frame
SVD_COND_AUG_LOG_NORMAL = (-3.0, 0.5)  # (p_mean, p_std) of log(cond_aug) in public SVD fine-tuning


@dataclass(frozen=True)
class Constant:
    value: float

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.full((n,), float(self.value))


@dataclass(frozen=True)
class Uniform:
    low: float
    high: float
    integer: bool  # whole numbers low..high inclusive (fps_id, motion_bucket_id)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.integer:
            return torch.randint(int(self.low), int(self.high) + 1, (n,), generator=generator).float()
        return self.low + (self.high - self.low) * torch.rand(n, generator=generator)


@dataclass(frozen=True)
class LogNormal:
    p_mean: float  # mean of log(value)
    p_std: float  # std of log(value)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.exp(self.p_mean + self.p_std * torch.randn(n, generator=generator))


Law = Constant | Uniform | LogNormal


def parse_law(spec, name: str, integer: bool = False) -> Law:
    """A number, [lo, hi] or {log_normal: [p_mean, p_std]} (YAML or Python) -> a law. `name` is for errors."""
    if isinstance(spec, (Constant, Uniform, LogNormal)):
        return spec
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        return Constant(float(spec))
    if hasattr(spec, "keys") and list(spec.keys()) == ["log_normal"]:
        p_mean, p_std = _pair(spec["log_normal"], name)
        if p_std < 0:
            raise ValueError(f"'{name}': log_normal p_std must be >= 0, got {p_std}")
        return LogNormal(p_mean, p_std)
    if not hasattr(spec, "keys") and not isinstance(spec, str):
        low, high = _pair(spec, name)
        if low > high:
            raise ValueError(f"'{name}': range [{low}, {high}] has low > high")
        if integer and (low != int(low) or high != int(high)):
            raise ValueError(f"'{name}' takes whole numbers; got range [{low}, {high}]")
        return Uniform(low, high, integer)
    raise ValueError(f"'{name}' must be a number, [low, high] or {{log_normal: [p_mean, p_std]}}; got {spec!r}")


def _pair(spec, name: str) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in spec)
    except (TypeError, ValueError):
        raise ValueError(f"'{name}' needs two numbers, got {spec!r}") from None
    return low, high


def fps_id_from_fps(fps: float, stride: int) -> int:
    """SVD's fps_id of a clip taking every `stride`-th frame of a `fps` video: round(fps / stride) - 1, >= 0."""
    if not fps > 0 or stride < 1:
        raise ValueError(f"need fps > 0 and stride >= 1, got fps={fps}, stride={stride}")
    return max(0, round(fps / stride) - 1)


def mean_flow_percent(frames: np.ndarray, max_side: int = 128) -> float:
    """Mean optical-flow magnitude between consecutive frames, in percent of the shorter side per frame.

    frames: (t, H, W, 3) uint8 RGB, t >= 2. Flow is OpenCV's Farneback on grey frames, downscaled so
    the shorter side is at most `max_side` (the percentage does not depend on the resolution).
    """
    import cv2  # opencv-python-headless, only needed for motion_bucket_id: flow

    if frames.ndim != 4 or frames.shape[0] < 2 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be (t >= 2, H, W, 3) uint8, got shape {frames.shape}")
    height, width = frames.shape[1:3]
    factor = min(1.0, max_side / min(height, width))
    size = (max(1, round(width * factor)), max(1, round(height * factor)))  # cv2 wants (W, H)
    grey = [cv2.resize(cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY), size,
                       interpolation=cv2.INTER_AREA) for f in frames]
    magnitudes = []
    for previous, current in zip(grey[:-1], grey[1:]):
        flow = cv2.calcOpticalFlowFarneback(previous, current, None, pyr_scale=0.5, levels=3, winsize=15,
                                            iterations=3, poly_n=5, poly_sigma=1.2, flags=0)  # (h, w, 2) pixels
        magnitudes.append(float(np.linalg.norm(flow, axis=-1).mean()))
    return 100.0 * float(np.mean(magnitudes)) / min(size)


def motion_bucket_from_flow(flow_percent: float, scale: float = MOTION_BUCKET_SCALE) -> int:
    """Our rule onto SVD's 0..255 scale: round(scale * flow_percent), clipped (see the module docstring)."""
    if not math.isfinite(flow_percent) or flow_percent < 0:
        raise ValueError(f"flow_percent must be finite and >= 0, got {flow_percent}")
    return int(min(255, max(0, round(scale * flow_percent))))


__all__ = ["Constant", "LogNormal", "Uniform", "Law", "parse_law", "fps_id_from_fps", "mean_flow_percent",
           "motion_bucket_from_flow", "MOTION_BUCKET_SCALE", "SVD_COND_AUG_LOG_NORMAL"]
