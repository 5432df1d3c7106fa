"""Datasets that need no download: digits and moving digits, and the SVD batch assembly."""
import numpy as np
import pytest
import torch

from sgm.data.digits import DigitsDataset, load_digits_split
from sgm.data.moving_digits import MovingDigits, VideoCollate, bounce
from sgm.data.video_batch import make_video_batch


def test_digits_split_is_disjoint_stratified_and_scaled():
    train_x, train_y = load_digits_split("train")
    held_x, held_y = load_digits_split("heldout")
    assert len(train_y) + len(held_y) == 1797
    assert train_x.min() >= -1 and train_x.max() <= 1
    assert set(np.unique(held_y)) == set(range(10))
    counts = np.bincount(held_y) / np.bincount(np.concatenate([train_y, held_y]))
    assert np.all(np.abs(counts - 0.2) < 0.02)
    with pytest.raises(ValueError, match="unknown digits split"):
        load_digits_split("test")


def test_digits_dataset_items():
    item = DigitsDataset(size=16)[0]
    assert item["jpg"].shape == (1, 16, 16) and item["cls"].dtype == torch.int64


def test_bounce_reflects_inside_limits():
    assert bounce(0, 3, 6, 5) == [0, 3, 4, 1, 2, 5]


def test_moving_digits_clip_moves_and_keeps_the_digit():
    data = MovingDigits(num_frames=6, size=16, max_speed=2)
    moving = [i for i in range(40) if data.trajectory(i)[2] > 0]
    item = data[moving[0]]
    video = item["video"]
    assert video.shape == (6, 1, 16, 16)
    assert (video[1:] - video[:-1]).abs().mean() > 0.01  # frames differ
    ink = (video > -1).flatten(1).sum(1)
    assert torch.all(ink == ink[0])  # the same digit in every frame (no clipping at the edges)


def test_collate_builds_svd_batch():
    data = MovingDigits(num_frames=4, size=12)
    batch = VideoCollate(fps_id=6, cond_aug=0.02)([data[i] for i in range(3)])
    assert batch["frames"].shape == (12, 1, 12, 12) and batch["num_video_frames"] == 4
    assert batch["cond_frames"].shape == batch["cond_frames_without_noise"].shape == (3, 1, 12, 12)
    assert torch.equal(batch["cond_frames_without_noise"], batch["frames"][::4])
    for key in ("fps_id", "motion_bucket_id", "cond_aug"):
        assert batch[key].shape == (12,)
    assert torch.equal(batch["motion_bucket_id"][:4], torch.full((4,), batch["motion_bucket_id"][0].item()))
    assert batch["image_only_indicator"].shape == (3, 4) and batch["cls"].shape == (3,)


def test_make_video_batch_cond_aug_noise_and_errors():
    image = torch.zeros(2, 3, 8, 8)
    batch = make_video_batch(image, 5, cond_aug=0.5, generator=torch.Generator().manual_seed(0))
    assert batch["cond_frames"].std() == pytest.approx(0.5, rel=0.2)
    assert "polars_rad" not in batch and batch["fps_id"].shape == (10,)
    sv3d = make_video_batch(image, 5, fps_id=None, motion_bucket_id=None, polars_rad=torch.ones(5),
                            azimuths_rad=torch.arange(5.0))
    assert "fps_id" not in sv3d and sv3d["azimuths_rad"].tolist() == [0, 1, 2, 3, 4] * 2
    with pytest.raises(ValueError, match="'fps_id' must be"):
        make_video_batch(image, 5, fps_id=torch.ones(3))


def test_velocity_code_names_each_velocity_once_and_speed_code_only_the_speed():
    from sgm.data.moving_digits import motion_bucket

    velocity = {motion_bucket(vx, vy, "velocity") for vx in range(-2, 3) for vy in range(-2, 3)}
    assert len(velocity) == 25 and min(velocity) == 0 and max(velocity) <= 255
    assert motion_bucket(1, -2, "speed") == motion_bucket(-2, 1, "speed") == 96
    with pytest.raises(ValueError, match="motion_code"):
        MovingDigits(motion_code="direction")
    with pytest.raises(ValueError, match="0-255"):
        MovingDigits(max_speed=3, motion_code="velocity")


def test_velocity_bucket_and_first_frame_determine_the_clip():
    # Two held-out clips of the same digit whose first frames and buckets agree must be the same clip:
    # under the velocity code the conditioning determines the motion (under the speed code it does not).
    data = MovingDigits("heldout", num_frames=6, size=16, motion_code="velocity")
    rng = np.random.default_rng(0)
    seen = {}
    for _ in range(400):
        xs, ys, (vx, vy) = data.draw_trajectory(rng)
        key = (xs[0], ys[0], vx, vy)
        assert seen.setdefault(key, (xs, ys)) == (xs, ys)


def test_fresh_trajectories_follow_the_item_seed():
    data = MovingDigits(num_frames=6, size=16, fresh_trajectories=True)
    torch.manual_seed(3)
    first = [data[(0, seed)]["video"] for seed in range(4)]
    torch.manual_seed(4)  # the global RNG plays no part
    again = [data[(0, seed)]["video"] for seed in range(4)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))  # reproducible under a seed
    assert len({tuple(v.flatten().tolist()) for v in first}) > 1  # but new trajectories per seed
    with pytest.raises(ValueError, match="index with \\(index, seed\\) pairs"):
        data[0]
    fixed = MovingDigits(num_frames=6, size=16)
    assert torch.equal(fixed[0]["video"], fixed[0]["video"])
    assert torch.equal(fixed[0]["video"], fixed[(0, 5)]["video"])  # a fixed clip whatever the item seed
    assert {"speed", "motion_bucket_id", "seed"} <= set(fixed[0]) and fixed[0]["seed"] is None
    assert fixed[(0, 5)]["seed"] == 5
