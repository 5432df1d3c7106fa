"""scikit-learn's 8x8 handwritten digits as an image dataset: real data that needs no download.

1797 grey images of the digits 0-9 (values 0..16), split once with a fixed seed into a training
part and a held-out part (the held-out part is what quality metrics compare samples against).
Batches: `{"jpg": (B, 1, size, size) in [-1, 1], "cls": (B,) int64}`.
"""
from __future__ import annotations

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from sgm.data.resumable import ResumableDataLoader

SPLITS = ("train", "heldout")


def load_digits_split(
    split: str = "train",  # "train" or "heldout"
    heldout_fraction: float = 0.2,  # share of images kept out of training
    seed: int = 0,  # split seed
) -> tuple[np.ndarray, np.ndarray]:
    """Images in [-1, 1] as float32 (N, 8, 8) and labels (N,), one fixed stratified split."""
    from sklearn.datasets import load_digits

    if split not in SPLITS:
        raise ValueError(f"unknown digits split '{split}', expected one of {SPLITS}")
    digits = load_digits()
    images = (digits.images.astype(np.float32) / 16.0) * 2.0 - 1.0  # 0..16 -> [-1, 1]
    labels = digits.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    heldout = np.zeros(len(labels), dtype=bool)
    for digit in range(10):  # stratified: the same share of every class is held out
        idx = np.flatnonzero(labels == digit)
        heldout[rng.choice(idx, size=int(round(heldout_fraction * len(idx))), replace=False)] = True
    keep = heldout if split == "heldout" else ~heldout
    return images[keep], labels[keep]


def resize_digits(images: torch.Tensor, size: int) -> torch.Tensor:
    """(N, 1, 8, 8) -> (N, 1, size, size), bilinear; identity for size 8."""
    if images.shape[-1] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)


class DigitsDataset(Dataset):
    def __init__(
        self,
        split: str = "train",  # "train" or "heldout"
        size: int = 8,  # output resolution
        heldout_fraction: float = 0.2,  # share of images kept out of training
        seed: int = 0,  # split seed
    ):
        images, labels = load_digits_split(split, heldout_fraction, seed)
        self.images = resize_digits(torch.from_numpy(images)[:, None], size)  # (N, 1, size, size)
        self.labels = torch.from_numpy(labels)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"jpg": self.images[i], "cls": self.labels[i]}


class DigitsDataModule(pl.LightningDataModule):
    def __init__(
        self,
        batch_size: int = 64,  # images per batch
        size: int = 8,  # output resolution
        num_workers: int = 0,  # DataLoader workers
        heldout_fraction: float = 0.2,  # share of images kept out of training
        seed: int = 0,  # split seed
    ):
        super().__init__()
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.dataset_kwargs = dict(size=size, heldout_fraction=heldout_fraction, seed=seed)

    def setup(self, stage: str | None = None) -> None:
        self.train_dataset = DigitsDataset("train", **self.dataset_kwargs)

    def train_dataloader(self) -> DataLoader:
        return ResumableDataLoader(  # the same batches after -r as in an uninterrupted run
            self.train_dataset,
            batch_size=self.batch_size,
            shuffle=True,
            drop_last=True,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )
