"""Conditioning images from a folder, as SVD image-to-video batches without target frames.

For data-free distillation (DMD with `latent_shape` set) the generator needs only what SVD samples
from: the first frame and the micro-conditioning. Each image is resized (shorter side) and
center-cropped to `size`, scaled to [-1, 1], and a batch of them goes through
`sgm.data.video_batch.make_video_batch` (the one place SVD batches are assembled):

    data:
      target: sgm.data.image_folder.ImageFolderDataModule
      params: {folder: data/first_frames, size: [576, 1024], num_frames: 14, batch_size: 1}

The student then trains at upstream's fixed fps_id 6 / motion_bucket_id 127 / cond_aug 0.02 unless
ranges are given, e.g. `fps_id: [4, 10]`, `motion_bucket_id: [60, 200]`,
`cond_aug: {log_normal: [-3.0, 0.5]}`, drawn per clip, so that it learns the range a user samples at.
"""
from __future__ import annotations

import os

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from sgm.data.micro_conditioning import parse_law
from sgm.data.video_batch import make_video_batch

EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def list_images(folder: str) -> list[str]:
    """Image files under `folder` (recursively), sorted."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"image folder not found: {folder}")
    paths = sorted(os.path.join(root, name) for root, _, names in os.walk(folder)
                   for name in names if name.lower().endswith(EXTENSIONS))
    if not paths:
        raise FileNotFoundError(f"no images ({', '.join(EXTENSIONS)}) under {folder}")
    return paths


def load_image(path: str, size: tuple[int, int]) -> torch.Tensor:
    """-> (3, H, W) in [-1, 1]: shorter side resized to cover (H, W), then center-cropped."""
    from PIL import Image

    height, width = size
    image = Image.open(path).convert("RGB")
    scale = max(height / image.height, width / image.width)
    resized = (max(width, round(image.width * scale)), max(height, round(image.height * scale)))
    image = image.resize(resized, Image.BICUBIC)
    left, top = (resized[0] - width) // 2, (resized[1] - height) // 2
    image = image.crop((left, top, left + width, top + height))
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0  # (H, W, 3)
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


class ImageFolder(Dataset):
    def __init__(self, folder: str, size: tuple[int, int]):
        self.paths = list_images(folder)
        self.size = (int(size[0]), int(size[1]))

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        return load_image(self.paths[index], self.size)  # (3, H, W)


class FirstFrameCollate:
    """A list of (3, H, W) images -> an SVD batch of clips with `num_frames` frames and no targets.

    fps_id, motion_bucket_id and cond_aug are laws (`sgm.data.micro_conditioning.parse_law`): a
    constant, or drawn per clip from [lo, hi] (whole numbers for fps_id and motion_bucket_id) or
    {log_normal: [p_mean, p_std]}, with torch's generator (seeded per worker by Lightning).
    """

    def __init__(self, num_frames: int, fps_id=6, motion_bucket_id=127, cond_aug=0.02):
        self.num_frames = num_frames
        self.fps_id = parse_law(fps_id, "fps_id", integer=True)
        self.motion_bucket_id = parse_law(motion_bucket_id, "motion_bucket_id", integer=True)
        self.cond_aug = parse_law(cond_aug, "cond_aug")

    def __call__(self, images: list[torch.Tensor]) -> dict:
        clips = len(images)
        return make_video_batch(torch.stack(images), self.num_frames, fps_id=self.fps_id.sample(clips),
                                motion_bucket_id=self.motion_bucket_id.sample(clips),
                                cond_aug=self.cond_aug.sample(clips))


class ImageFolderDataModule(pl.LightningDataModule):
    def __init__(
        self,
        folder: str,  # images, searched recursively
        size: list[int],  # [H, W] of the frames (SVD: [576, 1024])
        num_frames: int = 14,  # t, frames per clip
        batch_size: int = 1,  # clips per batch
        fps_id=6,  # SVD micro-conditioning (upstream's default for 14 frames); or [lo, hi] per clip
        motion_bucket_id=127,  # SVD micro-conditioning; or [lo, hi] per clip
        cond_aug=0.02,  # noise added to cond_frames; or [lo, hi] / {log_normal: [p_mean, p_std]} per clip
        num_workers: int = 0,
    ):
        super().__init__()
        self.folder, self.size = folder, size
        self.batch_size, self.num_workers = batch_size, num_workers
        self.collate = FirstFrameCollate(num_frames, fps_id, motion_bucket_id, cond_aug)

    def setup(self, stage: str | None = None) -> None:
        self.train_dataset = ImageFolder(self.folder, self.size)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_dataset, batch_size=self.batch_size, shuffle=True, drop_last=True,
                          num_workers=self.num_workers, collate_fn=self.collate,
                          persistent_workers=self.num_workers > 0)


__all__ = ["FirstFrameCollate", "ImageFolder", "ImageFolderDataModule", "list_images", "load_image"]
