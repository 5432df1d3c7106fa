"""scripts/moving_digits_strip.py cuts each clip's frames back out of the evaluation GIFs' grid."""
import numpy as np
import torch

from scripts.moving_digits_strip import clip_frames, main
from sgm.evaluation.moving_digits import save_clips_gif


def test_a_clip_comes_back_out_of_the_gif_grid(tmp_path):
    g = torch.Generator().manual_seed(0)
    clips = (torch.rand(16, 3, 1, 4, 4, generator=g) > 0.5).float() * 2 - 1  # (b, t, C, H, W) black/white
    clips = clips.repeat(1, 1, 3, 1, 1)
    for name in ("real.gif", "teacher_25step.gif", "trained_1step.gif"):
        save_clips_gif(clips, str(tmp_path / name), scale=4)
    import imageio.v3 as iio

    video = np.asarray(iio.imread(tmp_path / "real.gif", index=None))[..., :3]
    got = clip_frames(video, 5, 16)  # (t, s, s, 3), s = 4 x the writers' upscaling
    step = got.shape[1] // 4
    assert got.shape[0] == 3 and got.shape[1] == got.shape[2] == 4 * step
    assert np.array_equal(got[:, ::step, ::step, 0] > 127, (clips[5, :, 0] > 0).numpy())
    out = main([str(tmp_path), "--clips", "2", "--out", str(tmp_path / "strip.png")])
    strip = iio.imread(out)
    side = got.shape[1]
    assert strip.shape[1] == 3 * side and strip.shape[0] == 2 * 3 * side + 6  # 2 clips x 3 rows, one gap
