"""Motion statistics: real moving digits move, static clips do not, noise has no coherent motion."""
import pytest
import torch

from sgm.data.moving_digits import MovingDigits
from sgm.metrics.video import center_motion, frame_difference, motion_stats


@pytest.fixture(scope="module")
def real_clips():
    data = MovingDigits(num_frames=8, size=16, channels=3)
    return torch.stack([data[i]["video"] for i in range(64)])  # (64, 8, 3, 16, 16)


def test_real_clips_move_static_and_noise_do_not(real_clips):
    static = real_clips[:, :1].repeat(1, 8, 1, 1, 1)
    noise = torch.randn_like(real_clips).clamp(-1, 1)
    real = motion_stats(real_clips)
    assert real["center_motion"] > 0.8  # speeds are 0..2 px per axis per frame
    assert center_motion(static) == 0.0 and frame_difference(static) == 0.0
    assert center_motion(noise) < 0.3 * real["center_motion"]
    assert frame_difference(noise) > real["frame_difference"]  # why frame difference alone is not enough


def test_single_moving_pixel_speed():
    clips = -torch.ones(1, 4, 1, 8, 8)
    for k in range(4):
        clips[0, k, 0, 2, k] = 1.0  # one pixel moving right by 1 px per frame
    assert center_motion(clips) == pytest.approx(1.0)


def test_shape_errors_name_the_shape():
    with pytest.raises(ValueError, match=r"\(b, t>=2, C, H, W\), got shape \(8, 3, 16, 16\)"):
        center_motion(torch.zeros(8, 3, 16, 16))
