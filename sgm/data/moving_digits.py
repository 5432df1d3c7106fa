"""Moving digits: scikit-learn's 8x8 digits sliding and bouncing over a small canvas.

A synthetic image-to-video task that needs no download. Each clip starts from a real digit at a
random position and moves it with a constant velocity, reflecting off the canvas edges. The
first frame is the conditioning image; `motion_bucket_id` encodes the speed, as in SVD.
Batches carry the SVD keys (see `sgm.data.video_batch.make_video_batch`).
"""
from __future__ import annotations

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from sgm.data.digits import load_digits_split
from sgm.data.video_batch import make_video_batch

MOTION_BUCKET_PER_PIXEL = 32  # motion_bucket_id = 32 * (|vx| + |vy|), speeds in pixels per frame


def bounce(position: int, velocity: int, steps: int, limit: int) -> list[int]:
    """Positions along one axis over `steps` frames, reflecting inside [0, limit]."""
    out = []
    for _ in range(steps):
        out.append(position)
        position += velocity
        if position < 0 or position > limit:
            velocity = -velocity
            position = -position if position < 0 else 2 * limit - position
    return out


def render_clip(digit: np.ndarray, xs: list[int], ys: list[int], size: int) -> np.ndarray:
    """(8, 8) digit in [-1, 1] pasted at (ys[k], xs[k]) on a -1 canvas -> (t, 1, size, size)."""
    h, w = digit.shape
    clip = np.full((len(xs), 1, size, size), -1.0, dtype=np.float32)
    for k, (x, y) in enumerate(zip(xs, ys)):
        clip[k, 0, y:y + h, x:x + w] = np.maximum(clip[k, 0, y:y + h, x:x + w], digit)
    return clip


class MovingDigits(Dataset):
    def __init__(
        self,
        split: str = "train",  # digits split: "train" or "heldout"
        num_frames: int = 8,  # t
        size: int = 16,  # canvas side in pixels
        max_speed: int = 2,  # |vx|, |vy| <= max_speed pixels per frame
        channels: int = 1,  # 1 (grey) or 3 (grey repeated, for RGB models such as SVD's)
        seed: int = 0,  # trajectories are a fixed function of (seed, index)
    ):
        self.images, self.labels = load_digits_split(split)
        if size < self.images.shape[-1]:
            raise ValueError(f"canvas size {size} is smaller than the {self.images.shape[-1]}px digits")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        self.num_frames, self.size, self.max_speed, self.seed = num_frames, size, max_speed, seed
        self.channels = channels

    def __len__(self) -> int:
        return len(self.labels)

    def trajectory(self, index: int) -> tuple[list[int], list[int], int]:
        rng = np.random.default_rng([self.seed, index])
        limit = self.size - self.images.shape[-1]
        x0, y0 = rng.integers(0, limit + 1, size=2)
        vx, vy = rng.integers(-self.max_speed, self.max_speed + 1, size=2)
        xs = bounce(int(x0), int(vx), self.num_frames, limit)
        ys = bounce(int(y0), int(vy), self.num_frames, limit)
        return xs, ys, int(abs(vx) + abs(vy))

    def __getitem__(self, index: int) -> dict:
        xs, ys, speed = self.trajectory(index)
        video = torch.from_numpy(render_clip(self.images[index], xs, ys, self.size))
        return {
            "video": video.repeat(1, self.channels, 1, 1),  # (t, channels, size, size)
            "cls": int(self.labels[index]),
            "motion_bucket_id": float(MOTION_BUCKET_PER_PIXEL * speed),
        }


class VideoCollate:
    """Stacks clips and assembles the SVD batch (first frame as the conditioning image)."""

    def __init__(self, fps_id: float = 6, cond_aug: float = 0.02, input_key: str = "frames"):
        self.fps_id, self.cond_aug, self.input_key = fps_id, cond_aug, input_key

    def __call__(self, items: list[dict]) -> dict:
        videos = torch.stack([item["video"] for item in items])  # (b, t, C, H, W)
        batch = make_video_batch(
            cond_image=videos[:, 0],
            num_frames=videos.shape[1],
            fps_id=self.fps_id,
            motion_bucket_id=torch.tensor([item["motion_bucket_id"] for item in items]),
            cond_aug=self.cond_aug,
            frames=videos,
            input_key=self.input_key,
        )
        batch["cls"] = torch.tensor([item["cls"] for item in items])
        return batch


class MovingDigitsDataModule(pl.LightningDataModule):
    def __init__(
        self,
        batch_size: int = 16,  # clips per batch
        num_frames: int = 8,  # t
        size: int = 16,  # canvas side
        max_speed: int = 2,  # pixels per frame
        channels: int = 1,  # 1 or 3
        fps_id: float = 6,  # constant fps micro-conditioning
        cond_aug: float = 0.02,  # noise on the conditioning frame
        input_key: str = "frames",  # batch key of the target frames
        num_workers: int = 0,
        seed: int = 0,
    ):
        super().__init__()
        self.batch_size, self.num_workers = batch_size, num_workers
        self.dataset_kwargs = dict(num_frames=num_frames, size=size, max_speed=max_speed, channels=channels, seed=seed)
        self.collate = VideoCollate(fps_id=fps_id, cond_aug=cond_aug, input_key=input_key)

    def setup(self, stage: str | None = None) -> None:
        self.train_dataset = MovingDigits("train", **self.dataset_kwargs)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_dataset, batch_size=self.batch_size, shuffle=True, drop_last=True,
                          num_workers=self.num_workers, collate_fn=self.collate,
                          persistent_workers=self.num_workers > 0)
