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

Bad files do not stop a run (as in `sgm.data.video_folder`): setup opens every image's header once and
skips files that are not images (a text file named .png, an empty file), naming them in one warning; a
folder with no readable image is one error. An image that fails later (truncated past its header) is
replaced by the next one and named once in a warning.

Randomness: the loader hands every image a seed drawn from (run seed, epoch, index)
(`sgm.data.resumable`), and a batch's draws (micro-conditioning laws, the noise on cond_frames) come
from its images' seeds, so a resumed run continues with the batches of the uninterrupted one.
"""
from __future__ import annotations

import os
import warnings

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from sgm.data.micro_conditioning import parse_law
from sgm.data.resumable import ResumableDataLoader, seeded_generator
from sgm.data.video_batch import make_video_batch

EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def list_images(folder: str) -> list[str]:
    """Image files under `folder` (recursively), sorted, whose header Pillow can read; the others are
    named in one warning."""
    from PIL import Image

    if not os.path.isdir(folder):
        raise FileNotFoundError(f"image folder not found: {folder}")
    found = sorted(os.path.join(root, name) for root, _, names in os.walk(folder)
                   for name in names if name.lower().endswith(EXTENSIONS))
    paths, skipped = [], []
    for path in found:
        try:
            with Image.open(path):  # reads the header only
                paths.append(path)
        except Exception as error:  # Pillow raises its own types for files it cannot identify
            skipped.append(f"{path} (not an image: {type(error).__name__})")
    if skipped:
        warnings.warn(f"{len(skipped)} of {len(found)} images under {folder} skipped:\n  " + "\n  ".join(skipped),
                      stacklevel=2)
    if not paths:
        raise FileNotFoundError(f"no images ({', '.join(EXTENSIONS)}) under {folder}"
                                + (f" ({len(skipped)} unreadable files skipped)" if skipped else ""))
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
    """Item (index, seed) -> {"image": (3, H, W), "seed": seed} (seeds from ResumableDataLoader(item_seeds=True))."""

    def __init__(self, folder: str, size: tuple[int, int]):
        self.paths = list_images(folder)
        self.size = (int(size[0]), int(size[1]))
        self.failed: set[str] = set()  # files that failed after the scan, in this process

    def __len__(self) -> int:
        return len(self.paths)

    def image(self, index: int) -> torch.Tensor:
        """(3, H, W) in [-1, 1]; a file that cannot be decoded is replaced by the next one (warned once)."""
        for attempt in range(len(self.paths)):
            path = self.paths[(index + attempt) % len(self.paths)]
            try:
                return load_image(path, self.size)
            except Exception as error:  # truncated or corrupt past its header
                if path not in self.failed:
                    self.failed.add(path)
                    warnings.warn(f"skipping {path}: {type(error).__name__}: {error}", stacklevel=2)
        raise RuntimeError(f"no image under the data folder could be read ({len(self.failed)} failed)")

    def __getitem__(self, item: tuple[int, int]) -> dict:
        index, seed = item
        return {"image": self.image(index), "seed": seed}


class FirstFrameCollate:
    """ImageFolder items -> an SVD batch of clips with `num_frames` frames and no targets.

    fps_id, motion_bucket_id and cond_aug are laws (`sgm.data.micro_conditioning.parse_law`): a
    constant, or drawn per clip from [lo, hi] (whole numbers for fps_id and motion_bucket_id) or
    {log_normal: [p_mean, p_std]}; these draws and the cond_frames noise come from the items' seeds.
    """

    def __init__(self, num_frames: int, fps_id=6, motion_bucket_id=127, cond_aug=0.02):
        self.num_frames = num_frames
        self.fps_id = parse_law(fps_id, "fps_id", integer=True)
        self.motion_bucket_id = parse_law(motion_bucket_id, "motion_bucket_id", integer=True)
        self.cond_aug = parse_law(cond_aug, "cond_aug")

    def __call__(self, items: list[dict]) -> dict:
        clips, generator = len(items), seeded_generator(item["seed"] for item in items)
        images = torch.stack([item["image"] for item in items])  # (b, 3, H, W)
        return make_video_batch(images, self.num_frames, fps_id=self.fps_id.sample(clips, generator),
                                motion_bucket_id=self.motion_bucket_id.sample(clips, generator),
                                cond_aug=self.cond_aug.sample(clips, generator), generator=generator)


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
        return ResumableDataLoader(  # the same batches after -r as in an uninterrupted run
            self.train_dataset, batch_size=self.batch_size, shuffle=True, drop_last=True, item_seeds=True,
            num_workers=self.num_workers, collate_fn=self.collate, persistent_workers=self.num_workers > 0)


__all__ = ["FirstFrameCollate", "ImageFolder", "ImageFolderDataModule", "list_images", "load_image"]
