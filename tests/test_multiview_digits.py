"""Multi-view moving digits (the SV4D toy): consistent views by construction, SV4D window batches,
and the tiny SV4D 2.0 teacher config training through main.py."""
import os
import subprocess
import sys
from pathlib import Path

import torch

from sgm.data.multiview_digits import (
    MultiViewDigitsDataModule,
    MultiViewMovingDigits,
    camera_angles,
    to_input_view,
    view_transform,
)

ROOT = Path(__file__).parents[1]


def test_views_are_the_canvas_under_fixed_transforms():
    canvas = torch.randn(2, 3, 5, 5)
    images = [view_transform(canvas, k) for k in range(8)]
    assert all(not torch.equal(images[j], images[k]) for j in range(8) for k in range(j))  # 8 distinct cameras
    for k, image in enumerate(images):
        torch.testing.assert_close(to_input_view(image, k), canvas)
    item = MultiViewMovingDigits(num_views=3, num_frames=4, size=12, channels=3)[0]
    assert item["video"].shape == (4, 3, 12, 12) and item["views"].shape == (4, 3, 3, 12, 12)
    for v in range(3):  # undoing camera v+1's transform gives back the input view, frame by frame
        torch.testing.assert_close(to_input_view(item["views"][:, v], v + 1), item["video"])
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
