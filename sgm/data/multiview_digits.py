"""Multi-view moving digits: a CPU toy of SV4D's task (novel-view videos of a moving object).

A moving-digits clip (sgm.data.moving_digits) is the input view. "Camera" k sees the same canvas
through its own fixed, local transform: the canvas slides sideways by `CAMERA_SHIFTS[k]` pixels (the
parallax of a camera moved along a rail; what leaves its field of view is lost, what enters is
background) and its ink takes the camera's colour filter `CAMERA_TINTS[k]` (per-channel gains of the
ink over the -1 background). Camera 0 is the input view (no shift, white). So the views of one frame
are consistent by construction, and undoing each view's transform (`to_input_view`) compares views in
one frame of reference.

Why local transforms: an earlier version used the symmetries of the square (rotations and flips of the
whole canvas). Those are global maps of position that a small U-Net without positional encodings
learns slowly (its teacher, at ~9 s/step, was stopped unmeasured at step 243); a shift and a colour
filter are translation-equivariant, learnt by convolutions and the camera embedding alone, so the toy
teacher trains on a CPU within the hour and the toy measures distillation, not the teacher's limits.
Camera k sits at azimuth 2 pi k / 8, elevation 0 (polar pi/2 after SV4D 2.0's relative mapping).

Batches are SV4D windows (`sgm.data.video_batch.make_window_batch`): t frames x v novel views
(cameras 1..v), rows (b, t, v); with probability `ref_prob` a batch carries the first frame's views as
reference views (SV4D 2.0 trains its later windows that way).
"""
from __future__ import annotations

import math

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from sgm.data.moving_digits import MovingDigits
from sgm.data.resumable import ResumableDataLoader, seeded_generator
from sgm.data.video_batch import CHAIN_VIDEO_KEY, make_window_batch, window_chain_frames

NUM_CAMERAS = 8
CAMERA_SHIFTS = (0, 1, -1, 2, -2, 3, -3, 4)  # pixels to the right, camera 0..7
CAMERA_TINTS = (  # ink gains (R, G, B), camera 0..7; all > 0, so a filter can be undone
    (1.0, 1.0, 1.0), (1.0, 0.5, 0.5), (0.5, 1.0, 0.5), (0.5, 0.5, 1.0),
    (1.0, 1.0, 0.5), (1.0, 0.5, 1.0), (0.5, 1.0, 1.0), (1.0, 0.75, 0.5),
)
BACKGROUND = -1.0


def _check_camera(camera: int) -> None:
    if not 0 <= camera < NUM_CAMERAS:
        raise ValueError(f"camera must be in 0..{NUM_CAMERAS - 1}, got {camera}")


def shift_columns(x: torch.Tensor, dx: int) -> torch.Tensor:
    """Canvases (..., H, W) slid `dx` pixels to the right (left when negative); background fills the gap."""
    if dx == 0:
        return x
    out = torch.full_like(x, BACKGROUND)
    w = x.shape[-1]
    if dx > 0:
        out[..., dx:] = x[..., :w - dx]
    else:
        out[..., :w + dx] = x[..., -dx:]
    return out


def _tint(camera: int, channels: int, like: torch.Tensor) -> torch.Tensor:
    """Camera `camera`'s ink gains as a (C, 1, 1) tensor; grey canvases (C = 1) keep gain 1."""
    gains = CAMERA_TINTS[camera] if channels == 3 else (1.0,) * channels
    return torch.tensor(gains, dtype=like.dtype, device=like.device).view(channels, 1, 1)


def view_transform(x: torch.Tensor, camera: int) -> torch.Tensor:
    """Camera `camera`'s view of canvases (..., C, H, W) in [-1, 1]: slid by CAMERA_SHIFTS[camera], ink through
    CAMERA_TINTS[camera]."""
    _check_camera(camera)
    gain = _tint(camera, x.shape[-3], x)
    return shift_columns(BACKGROUND + (x - BACKGROUND) * gain, CAMERA_SHIFTS[camera])


def to_input_view(x: torch.Tensor, camera: int) -> torch.Tensor:
    """Inverse of `view_transform` (..., C, H, W): camera `camera`'s image seen from the input camera. The
    |CAMERA_SHIFTS[camera]| columns that left the camera's field of view come back as background."""
    _check_camera(camera)
    x = shift_columns(x, -CAMERA_SHIFTS[camera])
    return BACKGROUND + (x - BACKGROUND) / _tint(camera, x.shape[-3], x)


def common_field(x: torch.Tensor, cameras: list[int]) -> torch.Tensor:
    """Canvases (..., H, W) seen from the input camera -> the same with the columns that some camera of `cameras`
    does not see set to background: the part of the canvas that all those views (undone by `to_input_view`) and
    the input view show alike."""
    for camera in cameras:
        _check_camera(camera)
    w = x.shape[-1]
    left = max([-CAMERA_SHIFTS[k] for k in cameras] + [0])  # a camera slid left loses the input's first columns
    right = max([CAMERA_SHIFTS[k] for k in cameras] + [0])  # ... slid right, its last ones
    out = torch.full_like(x, BACKGROUND)
    out[..., left:w - right] = x[..., left:w - right]
    return out


def camera_angles(num_views: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(polar_rad, azimuth_rad) of the novel cameras 1..num_views, relative to the input camera."""
    if not 1 <= num_views < NUM_CAMERAS:
        raise ValueError(f"num_views must be in 1..{NUM_CAMERAS - 1}, got {num_views}")
    azimuth = torch.arange(1, num_views + 1, dtype=torch.float32) * (2 * math.pi / NUM_CAMERAS)
    return torch.full((num_views,), math.pi / 2), azimuth


class MultiViewMovingDigits(Dataset):
    """Items (`index` or `(index, seed)`, as MovingDigits): `video` (t, C, H, W), the input view; `views`
    (t, v, C, H, W), cameras 1..v; `cls`; `seed`."""

    def __init__(self, num_views: int = 4, **moving_digits_kwargs):
        camera_angles(num_views)  # validates num_views
        self.num_views = num_views
        self.clips = MovingDigits(**moving_digits_kwargs)

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, item: int | tuple[int, int]) -> dict:
        clip = self.clips[item]
        video = clip["video"]  # (t, C, H, W)
        views = torch.stack([view_transform(video, k) for k in range(1, self.num_views + 1)], dim=1)
        return {"video": video, "views": views, "cls": clip["cls"], "seed": clip["seed"]}


class WindowCollate:
    """Stacks items into one SV4D window batch (see `make_window_batch`): the items' first `window_frames`
    frames; its draws (reference views or not, the cond_frames noise) come from the items' seeds. With
    `chain` the whole input video rides along as CHAIN_VIDEO_KEY, for a window chain (Self-Forcing,
    sgm/modules/distillation/chain.py: the later windows' input frames)."""

    def __init__(self, num_views: int, ref_prob: float = 0.5, input_key: str = "frames",
                 window_frames: int | None = None, chain: bool = False):
        self.polar, self.azimuth = camera_angles(num_views)
        self.ref_prob, self.input_key = ref_prob, input_key
        self.window_frames, self.chain = window_frames, chain

    def __call__(self, items: list[dict]) -> dict:
        video = torch.stack([item["video"] for item in items])  # (b, F, C, H, W)
        views = torch.stack([item["views"] for item in items])  # (b, F, v, C, H, W)
        t = self.window_frames or video.shape[1]
        generator = seeded_generator(item["seed"] for item in items)
        with_refs = bool(torch.rand((), generator=generator) < self.ref_prob)
        batch = make_window_batch(video[:, :t], self.polar, self.azimuth, ref_views=views[:, 0] if with_refs else None,
                                  targets=views[:, :t], input_key=self.input_key, generator=generator)
        batch["cls"] = torch.tensor([item["cls"] for item in items])
        if self.chain:
            batch[CHAIN_VIDEO_KEY] = video
        return batch


class MultiViewDigitsDataModule(pl.LightningDataModule):
    def __init__(
        self,
        batch_size: int = 8,  # windows per batch
        num_frames: int = 4,  # t
        num_views: int = 4,  # v novel cameras (1..7)
        size: int = 16,  # canvas side
        channels: int = 3,  # 1 or 3
        ref_prob: float = 0.5,  # probability that a batch carries the first frame's views as cond_view
        input_key: str = "frames",  # batch key of the target views
        num_workers: int = 0,
        seed: int = 0,  # MovingDigits' seed; the order and the draws follow the run's seed (main.py -s)
        chain_windows: int = 1,  # N > 1: clips of 1 + N (t-1) input frames for an N-window chain (chain_video)
    ):
        super().__init__()
        if chain_windows < 1:
            raise ValueError(f"data.params.chain_windows must be >= 1, got {chain_windows}")
        self.batch_size, self.num_workers = batch_size, num_workers
        # what held-out windows of this data look like (sgm.evaluation.multiview_digits.heldout_windows)
        self.window_options = dict(num_frames=num_frames, num_views=num_views, size=size, channels=channels)
        self.dataset_kwargs = dict(num_views=num_views, num_frames=window_chain_frames(chain_windows, num_frames),
                                   size=size, channels=channels, seed=seed, fresh_trajectories=True)
        self.collate = WindowCollate(num_views, ref_prob, input_key, window_frames=num_frames, chain=chain_windows > 1)

    def setup(self, stage: str | None = None) -> None:
        self.train_dataset = MultiViewMovingDigits(split="train", **self.dataset_kwargs)

    def train_dataloader(self) -> DataLoader:
        return ResumableDataLoader(  # the same windows after -r as in an uninterrupted run
            self.train_dataset, batch_size=self.batch_size, shuffle=True, drop_last=True, item_seeds=True,
            num_workers=self.num_workers, collate_fn=self.collate, persistent_workers=self.num_workers > 0)
