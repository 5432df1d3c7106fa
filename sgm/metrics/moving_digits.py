"""Quality of generated moving-digits clips, per frame and across frames (no download).

The task (`sgm.data.moving_digits`): an 8x8 scikit-learn digit on a 16x16 canvas (background -1),
moving at a constant integer velocity (|vx|, |vy| <= 2 px/frame), reflected at the edges; the first
frame conditions the model. Clips are (b, t, C, H, W) in [-1, 1]; the grey image is the mean over C.

Per frame, each frame's digit is cut out (`digit_crops`) and scored by our digit classifier
(`sgm.metrics.digits.DigitMetrics`); across frames, the ink's centre of mass
(`sgm.metrics.video.ink_centers`) is tracked. `evaluate_clips(clips, labels, speeds, metrics, cond)`
returns these keys, always (NaN where not applicable):

- `frame_accuracy`: share of frames whose crop the classifier assigns to the clip's label.
- `frame_fd`: Frechet distance between the classifier's features of all b*t crops and of the held-out
  digits (`DigitMetrics.fid_vs_heldout`, the same held-out statistics as the image benchmark).
  Biased upward at small n like every FD: compare at equal n.
- `identity_consistency`: share of frames whose predicted class equals the clip's majority predicted
  class (the mode over its t frames, ties to the smaller class). Needs no label and does not hinge on
  one frame: a clip that shows one digit throughout scores 1 whatever that digit is, a clip whose digit
  morphs halfway scores about 0.5.
- `center_motion`: mean displacement of the ink centre, px/frame (`sgm.metrics.video.center_motion`).
- `speed_error`: mean over clips and frame steps of | |dy| + |dx| - speed | (px), dy, dx the
  ink-centre step and speed = |vx| + |vy| the conditioned speed (needs `speeds`). A reflection keeps
  |vx| + |vy| but the step that folds back at the wall is shorter (a digit 1 px from the wall moving
  2 px/frame towards it ends where it started), so real clips do not score exactly 0.
- `accel`: mean norm of the second difference c_{k+1} - 2 c_k + c_{k-1} of the ink centres (px/frame^2;
  needs t >= 3): 0 for constant velocity, non-zero only at reflections on real clips.
- `first_frame_error`: mean |frame 0 - cond| over pixels (needs `cond`, the (b, C, H, W) conditioning
  frames): how faithfully the clip starts from its conditioning image.
- `n`: number of clips.

Reference values, 256 held-out clips of 8 frames (`heldout_clips(256)`, its `speeds` and `cond`),
default classifier (tests/test_moving_digits_metrics.py checks them loosely at 128 clips):

    clips                          frame acc.  frame FD  identity  motion  speed err.  accel  first frame
    real                           0.996       2.0       1.000     1.81    0.19        0.96   0.00
    static (frame 0 repeated)      0.996       2.1       1.000     0.00    2.45        0.00   0.00
    Gaussian noise (clamped)       0.10        347       0.53      0.21    2.21        0.37   0.97
    real, frames 0,3,1,7,2,6,5,4   0.996       2.0       1.000     3.47    2.15        6.19   0.00

The real clips' FD depends strongly on the number of clips: 29 / 17 / 7.4 / 2.0 / 0.35 at 32 / 64 /
128 / 256 / 359 clips (fewer distinct digits; at 359 the crops are the held-out set itself), so
compare rows at equal n only. Their speed error and acceleration come from the reflections alone.
The static row is what a model that ignores motion scores: per-frame metrics cannot see it,
`speed_error` (= the mean conditioned speed) does.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from sgm.metrics.video import center_motion, frame_ink_centers, ink_centers

DIGIT = 8  # side of the digits and of the crops, pixels
TIE = 1e-6  # windows holding this much less ink than the best (in pixels of full ink) still tie with it


def _check_clips(clips) -> torch.Tensor:
    clips = torch.as_tensor(clips)
    if clips.ndim != 5 or clips.shape[1] < 2 or min(clips.shape[-2:]) < DIGIT or clips.shape[0] == 0:
        raise ValueError(f"clips must be (b>=1, t>=2, C, H>={DIGIT}, W>={DIGIT}), got shape {tuple(clips.shape)}")
    return clips.detach().float().clamp(-1, 1)


def _check_per_clip(value, name: str, clips: int, dtype: torch.dtype) -> torch.Tensor:
    value = torch.as_tensor(value).detach().cpu()
    if value.shape != (clips,):
        raise ValueError(f"{name} must be ({clips},), one per clip, got shape {tuple(value.shape)}")
    return value.to(dtype)


def digit_crops(clips) -> torch.Tensor:
    """(b, t, C, H, W) in [-1, 1] -> ((b t), 1, 8, 8): the 8x8 window around each frame's digit.

    The window is the one centred on the frame's ink centre of mass (ink = (grey + 1) / 2, grey =
    the channel mean; top-left corner = centre - 3.5, rounded to the nearest pixel, ties up/left),
    moved the least distance needed to hold the most ink, and always inside the canvas. A window
    centred on the centre of mass alone would cut a row off a fifth of real digits: scikit-learn's
    digits fill all 8 rows but their ink is not centred (centres of mass from 2.3 to 4.7).

    On a real clip the crop holds all of the digit's ink and, vertically, is exactly the pasted
    digit. Horizontally most digits leave their first (and often last) column empty, so the frame
    alone does not say where the 8x8 image was pasted: the crop is the pasted digit itself when the
    digit's own centre of mass lies within 0.5 px of its middle (90 % of the held-out digits), and
    otherwise the digit moved sideways by 1 px inside its 8x8 frame (no ink lost).
    """
    clips = _check_clips(clips)
    return frame_digit_crops(clips.flatten(0, 1))


def frame_digit_crops(frames: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) frames in [-1, 1] (H, W >= 8) -> (N, 1, 8, 8): each frame's digit window, as `digit_crops`
    cuts it (the single-frame form, e.g. for a conditioning image)."""
    if frames.ndim != 4 or frames.shape[-1] < DIGIT or frames.shape[-2] < DIGIT:
        raise ValueError(f"frames must be (N, C, H>={DIGIT}, W>={DIGIT}), got shape {tuple(frames.shape)}")
    n, _, h, w = frames.shape
    grey = frames.mean(dim=1)  # (N, H, W)
    ink = (grey.double() + 1.0) / 2.0
    held = F.avg_pool2d(ink[:, None], DIGIT, stride=1)[:, 0] * DIGIT**2  # (N, H-7, W-7) ink per window
    corner = frame_ink_centers(frames).double() - (DIGIT - 1) / 2  # (N, 2) centred window
    rows = torch.arange(h - DIGIT + 1, dtype=torch.float64, device=ink.device)
    cols = torch.arange(w - DIGIT + 1, dtype=torch.float64, device=ink.device)
    dist = (rows.view(1, -1, 1) - corner[:, :1, None]) ** 2 + (cols.view(1, 1, -1) - corner[:, 1:, None]) ** 2
    most = held >= held.amax(dim=(1, 2), keepdim=True) - TIE  # (N, H-7, W-7) windows holding the most ink
    best = dist.masked_fill(~most, math.inf).flatten(1).argmin(dim=1)  # (N,) first = up/left on ties
    top, left = best // len(cols), best % len(cols)
    offsets = torch.arange(DIGIT, device=ink.device)
    ys = (top[:, None] + offsets)[:, :, None]  # (N, 8, 1)
    xs = (left[:, None] + offsets)[:, None, :]  # (N, 1, 8)
    frame = torch.arange(n, device=ink.device).view(-1, 1, 1)
    return grey[frame, ys, xs][:, None]  # (N, 1, 8, 8)


def majority_agreement(preds: torch.Tensor) -> float:
    """(b, t) predicted classes -> share of frames equal to their clip's most frequent class."""
    b, _ = preds.shape
    counts = torch.zeros(b, int(preds.max()) + 1, dtype=torch.long, device=preds.device)
    counts.scatter_add_(1, preds, torch.ones_like(preds))  # (b, classes)
    majority = counts.argmax(dim=1)  # (b,) the smaller class on ties
    return (preds == majority[:, None]).double().mean().item()


def evaluate_clips(
    clips,  # (b, t, C, H, W) in [-1, 1], generated (or real) clips
    labels,  # (b,) the digit class each clip was conditioned on
    speeds=None,  # (b,) conditioned speeds |vx| + |vy| in px/frame; None: speed_error is NaN
    metrics=None,  # a DigitMetrics; None: the committed classifier (sgm.metrics.digits.default_metrics)
    cond=None,  # (b, C, H, W) conditioning frames; None: first_frame_error is NaN
) -> dict:
    """Per-frame and temporal metrics of a batch of clips (keys: see the module docstring)."""
    from sgm.metrics.digits import default_metrics

    clips = _check_clips(clips).cpu()
    b, t = clips.shape[:2]
    labels = _check_per_clip(labels, "labels", b, torch.long)
    if speeds is not None:
        speeds = _check_per_clip(speeds, "speeds", b, torch.float32)
    if cond is not None:
        cond = torch.as_tensor(cond).detach().float().cpu().clamp(-1, 1)
        if cond.shape != clips[:, 0].shape:
            raise ValueError(f"cond must be (b, C, H, W) = {tuple(clips[:, 0].shape)} like the clips' frames, "
                             f"got shape {tuple(cond.shape)}")
    metrics = metrics if metrics is not None else default_metrics()

    crops = digit_crops(clips)  # ((b t), 1, 8, 8)
    digit = metrics.evaluate(crops, labels.repeat_interleave(t))
    preds = metrics.predict(crops).view(b, t)
    centers = ink_centers(clips)  # (b, t, 2)
    steps = centers[:, 1:] - centers[:, :-1]  # (b, t-1, 2)
    second = steps[:, 1:] - steps[:, :-1]  # (b, t-2, 2)
    speed_error = math.nan
    if speeds is not None:  # | |dy| + |dx| - speed | per step
        speed_error = (steps.abs().sum(dim=-1) - speeds[:, None]).abs().mean().item()
    return {
        "frame_accuracy": digit["accuracy"],
        "frame_fd": digit["fd"],
        "identity_consistency": majority_agreement(preds),
        "center_motion": center_motion(clips),
        "speed_error": speed_error,
        "accel": second.norm(dim=-1).mean().item() if t >= 3 else math.nan,
        "first_frame_error": math.nan if cond is None else (clips[:, 0] - cond).abs().mean().item(),
        "n": b,
    }


def heldout_clips(
    n: int,  # clips: the first n of the held-out split (359 digits)
    num_frames: int = 8,  # t
    size: int = 16,  # canvas side
    channels: int = 3,  # 3 for SVD-architecture models
    seed: int = 0,  # trajectories (MovingDigits) and the cond_aug noise of the batch
    motion_code: str = "velocity",  # the model's motion_bucket_id code (sgm.data.moving_digits)
    max_speed: int = 2,  # |vx|, |vy| <= max_speed px/frame (the model's training data)
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
    """Real held-out clips to condition on and score against.

    -> clips (n, t, C, H, W), labels (n,), speeds (n,) = |vx| + |vy| in px/frame, and the SVD batch
    of `VideoCollate` (conditioning keys, `frames`, `cls`). The global RNG is left untouched.
    """
    from sgm.data.moving_digits import MovingDigits, VideoCollate

    data = MovingDigits("heldout", num_frames=num_frames, size=size, channels=channels, seed=seed,
                        motion_code=motion_code, max_speed=max_speed)
    if not 1 <= n <= len(data):
        raise ValueError(f"n must be in [1, {len(data)}] (the held-out digits), got {n}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        batch = VideoCollate()([data[i] for i in range(n)])
    clips = batch["frames"].view(n, num_frames, channels, size, size)
    speeds = batch.pop("speed")
    return clips, batch["cls"], speeds, batch
