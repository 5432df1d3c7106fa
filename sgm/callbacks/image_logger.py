"""Writes what people look at: sample grids as PNG, and GIF/MP4 for video batches.

Files go to `<run dir>/images/<split>/<key>_gs-<step>_e-<epoch>_b-<batch>.{png,gif,mp4}`; the same grids
reach the run's TensorBoard and wandb loggers under `<split>/<key>` (TensorBoard: an image, or for a video
the animated GIF that its `add_video` writes; wandb: `wandb.Image` / `wandb.Video` of the file).
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_only

from sgm.callbacks.setup import run_dir
from sgm.io.media import encode_gif, image_grid, video_grid, write_image, write_video


class ImageLogger(pl.Callback):
    """Calls `pl_module.log_images(batch, **log_images_kwargs)` every `batch_frequency` steps."""

    def __init__(
        self,
        batch_frequency: int,  # log every this many global steps
        max_images: int,  # images (or clips) kept per key
        clamp: bool = True,  # clamp to [-1, 1] before saving
        increase_log_steps: bool = True,  # also log at steps 1, 2, 4, ... < batch_frequency
        rescale: bool = True,  # images are in [-1, 1]
        disabled: bool = False,
        log_on_batch_idx: bool = False,  # count batch_idx instead of global_step
        log_first_step: bool = False,  # also log at step 0
        log_images_kwargs: dict | None = None,  # passed to log_images (N, num_steps, ucg_keys, ...)
        log_before_first_step: bool = False,  # log once before the first optimisation step
        enable_autocast: bool = True,  # accepted for upstream configs; sampling runs in model dtype
        video_format: str = "gif",  # "gif" or "mp4" for video batches
        fps: int = 6,  # frames per second of video files
    ):
        super().__init__()
        self.batch_frequency = batch_frequency
        self.max_images = max_images
        self.clamp = clamp
        self.rescale = rescale
        self.disabled = disabled
        self.log_on_batch_idx = log_on_batch_idx
        self.log_first_step = log_first_step
        self.log_before_first_step = log_before_first_step
        self.log_images_kwargs = dict(log_images_kwargs or {})
        self.log_steps = [2**n for n in range(int(np.log2(batch_frequency)) + 1)] if increase_log_steps else []
        if video_format not in ("gif", "mp4"):
            raise ValueError(f"ImageLogger.video_format must be 'gif' or 'mp4', got {video_format!r}")
        self.video_format = video_format
        self.fps = fps
        self.saved: list[str] = []  # paths written, newest last

    def check_frequency(self, step: int) -> bool:
        if (step % self.batch_frequency == 0 or step in self.log_steps) and (step > 0 or self.log_first_step):
            if step in self.log_steps:
                self.log_steps.remove(step)
            return True
        return False

    @rank_zero_only
    def log_local(self, save_dir: str, split: str, images: dict, batch: dict, step: int, epoch: int,
                  batch_idx: int, loggers: list | tuple = ()) -> None:
        root = os.path.join(save_dir, "images", split)
        os.makedirs(root, exist_ok=True)
        num_frames = batch.get("num_video_frames")
        n_rows = self.log_images_kwargs.get("n_rows")
        for key, value in images.items():
            stem = os.path.join(root, f"{key}_gs-{step:06}_e-{epoch:06}_b-{batch_idx:06}")
            if num_frames and value.shape[0] % num_frames == 0 and value.shape[0] > 1:
                video = video_grid(value, num_frames, self.rescale)  # (t, H, W, 3) uint8
                path = write_video(video, f"{stem}.{self.video_format}", self.fps)
                for logger in loggers:
                    send_video(logger, f"{split}/{key}", video, path, step, self.fps)
            else:
                grid = image_grid(value, n_rows, self.rescale)  # (H, W, 3) uint8
                path = write_image(grid, f"{stem}.png")
                for logger in loggers:
                    send_image(logger, f"{split}/{key}", grid, step)
            self.saved.append(path)

    def log_img(self, pl_module: pl.LightningModule, batch: dict, batch_idx: int, split: str = "train") -> None:
        step = batch_idx if self.log_on_batch_idx else pl_module.global_step
        if self.disabled or not self.check_frequency(step) or not hasattr(pl_module, "log_images"):
            return
        was_training = pl_module.training
        pl_module.eval()
        with torch.no_grad():
            images = pl_module.log_images(batch, split=split, **self.log_images_kwargs)
        frames = batch.get("num_video_frames") or 1
        for key in list(images):
            if isinstance(images[key], torch.Tensor):
                value = images[key][: self.max_images * frames].detach().float().cpu()
                images[key] = value.clamp(-1.0, 1.0) if self.clamp else value
        self.log_local(run_dir(pl_module.trainer), split, images, batch, pl_module.global_step,
                       pl_module.current_epoch, batch_idx, pl_module.trainer.loggers)
        if was_training:
            pl_module.train()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: dict,
                           batch_idx: int) -> None:
        if not self.disabled and (pl_module.global_step > 0 or self.log_first_step):
            self.log_img(pl_module, batch, batch_idx, split="train")

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: dict,
                             batch_idx: int) -> None:
        if self.log_before_first_step and pl_module.global_step == 0:
            self.log_img(pl_module, batch, batch_idx, split="train")


def send_image(logger: Any, tag: str, grid: np.ndarray, step: int) -> None:
    """One (H, W, 3) uint8 grid to a TensorBoard or wandb logger; other loggers (CSV) take no images."""
    from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger

    if isinstance(logger, TensorBoardLogger):
        logger.experiment.add_image(tag, grid, step, dataformats="HWC")
    elif isinstance(logger, WandbLogger):
        logger.log_image(key=tag, images=[grid], step=step)


def send_video(logger: Any, tag: str, video: np.ndarray, path: str, step: int, fps: int) -> None:
    """One (t, H, W, 3) uint8 grid animation to a TensorBoard or wandb logger.

    TensorBoard: the summary `SummaryWriter.add_video` writes (an image summary holding an animated GIF),
    encoded here, because torch's add_video needs moviepy < 2 (`moviepy.editor`) and without it logs
    nothing. wandb: the file just written (GIF or MP4), which wandb.Video reads without moviepy."""
    from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger

    if isinstance(logger, TensorBoardLogger):
        from tensorboard.compat.proto.summary_pb2 import Summary

        t, height, width, channels = video.shape
        image = Summary.Image(height=height, width=width, colorspace=channels, encoded_image_string=encode_gif(video, fps))
        logger.experiment.file_writer.add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)
    elif isinstance(logger, WandbLogger):
        logger.log_video(key=tag, videos=[path], step=step)  # the file's own frame rate and format
