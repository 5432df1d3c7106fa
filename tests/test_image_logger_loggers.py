"""ImageLogger's sample grids reach the run's TensorBoard and (offline) wandb loggers besides disk: stills as
images, video batches as animated GIFs (read back from the event file / the offline wandb run)."""
import glob
import io
import os

import numpy as np
import pytest
import torch

import sgm  # noqa: F401  (before Lightning: torchvision shim)
import pytorch_lightning as pl
from pytorch_lightning.loggers import TensorBoardLogger

from sgm.callbacks.image_logger import ImageLogger
from sgm.io.media import image_grid, video_grid

FRAMES = 3  # t of the video batch


class Sampler(pl.LightningModule):
    """A one-parameter module whose `log_images` returns fixed samples: a video batch of 2 clips ((b t), C, H, W)
    and a 2-image still batch that is no multiple of t."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        generator = torch.Generator().manual_seed(0)
        self.clips = torch.rand(2 * FRAMES, 3, 8, 8, generator=generator) * 2 - 1
        self.stills = torch.rand(2, 3, 8, 8, generator=generator) * 2 - 1

    def training_step(self, batch, batch_idx):
        return (self.w * batch["x"]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        data = [{"x": torch.ones(1), "num_video_frames": FRAMES}]
        return torch.utils.data.DataLoader(data, batch_size=None)

    def log_images(self, batch, split="train", **kwargs):
        return {"clips": self.clips, "stills": self.stills}


def fit(tmp_path, loggers):
    module = Sampler()
    trainer = pl.Trainer(max_steps=1, logger=loggers, default_root_dir=str(tmp_path), accelerator="cpu",
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[ImageLogger(batch_frequency=1, max_images=2)])
    trainer.fit(module)
    return module


def test_samples_reach_tensorboard_as_an_image_and_an_animated_gif(tmp_path):
    import imageio.v3 as iio
    from tensorboard.backend.event_processing.event_accumulator import IMAGES, EventAccumulator

    logger = TensorBoardLogger(save_dir=str(tmp_path), name="tensorboard")
    module = fit(tmp_path, [logger])
    logger.experiment.flush()
    events = EventAccumulator(logger.log_dir, size_guidance={IMAGES: 0})
    events.Reload()
    assert sorted(events.Tags()[IMAGES]) == ["train/clips", "train/stills"]

    (still,) = events.Images("train/stills")
    assert still.step == 1
    decoded = iio.imread(io.BytesIO(still.encoded_image_string))  # PNG: (H, W, 3)
    np.testing.assert_array_equal(decoded[..., :3], image_grid(module.stills))  # the grid written to disk

    (clip,) = events.Images("train/clips")
    assert clip.step == 1 and clip.encoded_image_string.startswith(b"GIF89a")
    frames = iio.imread(io.BytesIO(clip.encoded_image_string), index=None)  # (t, H, W, 3)
    expected = video_grid(module.clips, FRAMES)
    assert frames.shape[0] == FRAMES and (clip.height, clip.width) == expected.shape[1:3]
    np.testing.assert_array_equal(frames[..., :3], expected)
    # and on disk as before
    assert len(glob.glob(str(tmp_path / "images" / "train" / "clips_gs-000001_*.gif"))) == 1
    assert len(glob.glob(str(tmp_path / "images" / "train" / "stills_gs-000001_*.png"))) == 1


@pytest.mark.slow
def test_samples_reach_an_offline_wandb_run(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from pytorch_lightning.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = WandbLogger(save_dir=str(tmp_path), project="sgm-dmd-test", offline=True)
    fit(tmp_path, [logger])
    logger.experiment.finish()
    (run,) = glob.glob(str(tmp_path / "wandb" / "offline-run-*"))
    media = [os.path.relpath(p, run) for p in glob.glob(os.path.join(run, "files", "media", "**", "*.*"), recursive=True)]
    assert any(p.startswith(os.path.join("files", "media", "videos", "train", "clips")) and p.endswith(".gif")
               for p in media), media
    assert any(p.startswith(os.path.join("files", "media", "images", "train", "stills")) for p in media), media
