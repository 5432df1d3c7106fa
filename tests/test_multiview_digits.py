"""Multi-view moving digits (the SV4D toy): consistent views by construction, SV4D window batches,
and the tiny SV4D 2.0 teacher config training through main.py."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sgm.data.multiview_digits import (
    BACKGROUND,
    CAMERA_SHIFTS,
    MultiViewDigitsDataModule,
    MultiViewMovingDigits,
    camera_angles,
    to_input_view,
    view_transform,
)

ROOT = Path(__file__).parents[1]


def test_views_are_the_canvas_under_fixed_local_transforms():
    canvas = torch.rand(2, 3, 5, 12) * 2 - 1
    images = [view_transform(canvas, k) for k in range(8)]
    assert all(not torch.equal(images[j], images[k]) for j in range(8) for k in range(j))  # 8 distinct cameras
    inner = slice(max(map(abs, CAMERA_SHIFTS)), 12 - max(map(abs, CAMERA_SHIFTS)))  # columns every camera keeps
    for k, image in enumerate(images):
        assert image.min() >= -1 and image.max() <= 1
        torch.testing.assert_close(to_input_view(image, k)[..., inner], canvas[..., inner])
    # a shift is a translation: camera 1 (one pixel right) sees column j where the input camera sees column j - 1
    grey = canvas[:, :1].expand(2, 3, 5, 12)
    torch.testing.assert_close(view_transform(grey, 1)[..., 0, :, 5:], BACKGROUND + (grey[..., 0, :, 4:11] + 1))
    with pytest.raises(ValueError, match="camera must be in 0..7"):
        view_transform(canvas, 8)
    item = MultiViewMovingDigits(num_views=3, num_frames=4, size=12, channels=3)[0]
    assert item["video"].shape == (4, 3, 12, 12) and item["views"].shape == (4, 3, 3, 12, 12)
    for v in range(3):  # undoing camera v+1's transform gives back the input view where the camera sees it
        torch.testing.assert_close(to_input_view(item["views"][:, v], v + 1)[..., 2:10], item["video"][..., 2:10])
    polar, azimuth = camera_angles(3)
    torch.testing.assert_close(azimuth, torch.tensor([1.0, 2.0, 3.0]) * torch.pi / 4)


def test_window_batches():
    for ref_prob, has_refs in ((0.0, False), (1.0, True)):
        data = MultiViewDigitsDataModule(batch_size=2, num_frames=3, num_views=4, size=12, ref_prob=ref_prob)
        data.setup()
        batch = next(iter(data.train_dataloader()))
        assert batch["frames"].shape == (2 * 3 * 4, 3, 12, 12) and batch["num_video_frames"] == 12
        assert batch["cond_frames_without_noise"].shape == (6, 3, 12, 12)
        assert bool(batch["cond_view"].any()) == has_refs
        # the first frame's target views are the reference views when they are given
        first = batch["frames"].view(2, 3, 4, 3, 12, 12)[:, 0].reshape(8, 3, 12, 12)
        assert torch.equal(first, batch["cond_view"]) == has_refs
        assert batch["dmd_mask"].eq(0).sum().item() == (8 if has_refs else 0)


def test_tiny_teacher_trains_through_main(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "main.py", "--base", "configs/example_training/toy/multiview_digits_sv4d2.yaml", "-t",
         "-l", str(tmp_path), "-n", "toy", "--no_date", "data.params.batch_size=2", "lightning.trainer.max_steps=2",
         "lightning.trainer.accelerator=cpu"],
        cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "toy" / "checkpoints" / "last.ckpt").exists()
