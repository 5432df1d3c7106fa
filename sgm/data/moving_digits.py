"""Moving digits: scikit-learn's 8x8 digits sliding and bouncing over a small canvas.

A synthetic image-to-video task that needs no download. Each clip starts from a real digit at a
random position and moves it with a constant velocity, reflecting off the canvas edges. The
first frame is the conditioning image. Batches carry the SVD keys (see
`sgm.data.video_batch.make_video_batch`).

`motion_bucket_id` describes the motion, as in SVD, under one of two codes (`motion_code`):

- "velocity" (the teacher's): one bucket per velocity, `10 * (5 * (vy + 2) + (vx + 2))` for
  |vx|, |vy| <= 2, i.e. 0..240 on SVD's 0-255 scale. The first frame and the bucket then determine
  the clip, as a real scene's content tells SVD which way things move.
- "speed": `32 * (|vx| + |vy|)`, the amount of motion only. The first frame of a digit on a blank
  canvas carries no cue for the direction, so a model must invent one of up to eight directions per
  clip; a tiny teacher trained on that blurs the directions together and loses the digit.

Training sets draw a new trajectory per item and epoch (`fresh_trajectories`) from the item seed that
`sgm.data.resumable.ResumableDataLoader(item_seeds=True)` hands out with each index, so a resumed run
draws the trajectories (and the cond_frames noise) of the uninterrupted one; held-out sets keep a fixed
trajectory per index, a function of (seed, index).
"""
from __future__ import annotations

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from sgm.data.digits import load_digits_split
from sgm.data.resumable import ResumableDataLoader, seeded_generator
from sgm.data.video_batch import make_video_batch

MOTION_BUCKET_PER_PIXEL = 32  # "speed" code: motion_bucket_id = 32 * (|vx| + |vy|), pixels per frame
VELOCITY_BUCKET_STEP = 10  # "velocity" code: motion_bucket_id = 10 * (5 * (vy + 2) + (vx + 2))
MOTION_CODES = ("velocity", "speed")


def motion_bucket(vx: int, vy: int, code: str, max_speed: int = 2) -> float:
    """SVD's motion_bucket_id of a clip moving (vx, vy) px/frame under `code` (see the module docstring)."""
    if code == "speed":
        return float(MOTION_BUCKET_PER_PIXEL * (abs(vx) + abs(vy)))
    if code == "velocity":
        side = 2 * max_speed + 1
        return float(VELOCITY_BUCKET_STEP * (side * (vy + max_speed) + (vx + max_speed)))
    raise ValueError(f"motion_code must be one of {MOTION_CODES}, got {code!r}")


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
        seed: int = 0,  # fixed trajectories are a function of (seed, index)
        motion_code: str = "velocity",  # motion_bucket_id of a clip: "velocity" or "speed"
        fresh_trajectories: bool = False,  # draw the trajectory from the item seed ((index, seed) items)
    ):
        self.images, self.labels = load_digits_split(split)
        if size < self.images.shape[-1]:
            raise ValueError(f"canvas size {size} is smaller than the {self.images.shape[-1]}px digits")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        self.num_frames, self.size, self.max_speed, self.seed = num_frames, size, max_speed, seed
        self.channels = channels
        if motion_code not in MOTION_CODES:
            raise ValueError(f"motion_code must be one of {MOTION_CODES}, got {motion_code!r}")
        if motion_code == "velocity" and motion_bucket(max_speed, max_speed, motion_code, max_speed) > 255:
            raise ValueError(f"max_speed {max_speed} leaves SVD's 0-255 motion_bucket_id range under the velocity code")
        self.motion_code, self.fresh_trajectories = motion_code, fresh_trajectories

    def __len__(self) -> int:
        return len(self.labels)

    def trajectory(self, index: int) -> tuple[list[int], list[int], int]:
        """-> xs, ys (t positions each) and the speed |vx| + |vy| of clip `index`'s fixed trajectory."""
        xs, ys, (vx, vy) = self.draw_trajectory(np.random.default_rng([self.seed, index]))
        return xs, ys, abs(vx) + abs(vy)

    def draw_trajectory(self, rng: np.random.Generator) -> tuple[list[int], list[int], tuple[int, int]]:
        limit = self.size - self.images.shape[-1]
        x0, y0 = rng.integers(0, limit + 1, size=2)
        vx, vy = rng.integers(-self.max_speed, self.max_speed + 1, size=2)
        xs = bounce(int(x0), int(vx), self.num_frames, limit)
        ys = bounce(int(y0), int(vy), self.num_frames, limit)
        return xs, ys, (int(vx), int(vy))

    def __getitem__(self, item: int | tuple[int, int]) -> dict:
        """`index` or `(index, seed)`: the seed draws the trajectory under `fresh_trajectories` (otherwise the
        clip is the fixed one of (self.seed, index)) and the batch's cond_frames noise (VideoCollate; a plain
        index leaves that noise to torch's global RNG, as held-out evaluation seeds it)."""
        index, seed = item if isinstance(item, tuple) else (item, None)
        if self.fresh_trajectories and seed is None:
            raise ValueError("fresh_trajectories draws each trajectory from the item seed: index with (index, seed) "
                             "pairs, as ResumableDataLoader(item_seeds=True) does")
        rng = np.random.default_rng(seed if self.fresh_trajectories else [self.seed, index])
        xs, ys, (vx, vy) = self.draw_trajectory(rng)
        video = torch.from_numpy(render_clip(self.images[index], xs, ys, self.size))
        return {
            "video": video.repeat(1, self.channels, 1, 1),  # (t, channels, size, size)
            "cls": int(self.labels[index]),
            "speed": float(abs(vx) + abs(vy)),  # px/frame
            "motion_bucket_id": motion_bucket(vx, vy, self.motion_code, self.max_speed),
            "seed": seed,
        }


class VideoCollate:
    """Stacks clips and assembles the SVD batch (first frame as the conditioning image); the cond_frames
    noise comes from the clips' seeds (`seeded_generator`)."""

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
            generator=seeded_generator(item["seed"] for item in items),  # None: torch's global RNG
        )
        batch["cls"] = torch.tensor([item["cls"] for item in items])
        batch["speed"] = torch.tensor([item["speed"] for item in items])  # (b,) px/frame, for the metrics
        return batch


CLIP_OPTIONS = ("num_frames", "size", "channels", "motion_code", "max_speed")  # what held-out clips must match


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
        seed: int = 0,  # fixed trajectories; the order and fresh draws follow the run's seed (main.py -s)
        motion_code: str = "velocity",  # "velocity" or "speed" (module docstring)
        fresh_trajectories: bool = True,  # a new trajectory per clip and epoch; False: one per digit
    ):
        super().__init__()
        self.batch_size, self.num_workers = batch_size, num_workers
        self.dataset_kwargs = dict(num_frames=num_frames, size=size, max_speed=max_speed, channels=channels, seed=seed,
                                   motion_code=motion_code, fresh_trajectories=fresh_trajectories)
        self.collate = VideoCollate(fps_id=fps_id, cond_aug=cond_aug, input_key=input_key)

    def clip_options(self) -> dict:
        """What held-out clips must share with these to score a model trained on them: num_frames, size,
        channels, motion_code, max_speed (sgm.evaluation.moving_digits.heldout_set's keywords)."""
        return {key: self.dataset_kwargs[key] for key in CLIP_OPTIONS}

    def setup(self, stage: str | None = None) -> None:
        self.train_dataset = MovingDigits("train", **self.dataset_kwargs)

    def train_dataloader(self) -> DataLoader:
        return ResumableDataLoader(  # the same clips after -r as in an uninterrupted run
            self.train_dataset, batch_size=self.batch_size, shuffle=True, drop_last=True, item_seeds=True,
            num_workers=self.num_workers, collate_fn=self.collate, persistent_workers=self.num_workers > 0)
