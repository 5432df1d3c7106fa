"""SV4D sampling: the window batch (T frames x V views), the conditioner's c / uc on it, and the 4D
sampling script end to end on a tiny SV4D 2.0 config (both schedules, gif and frame-folder input)."""
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sgm.config import load_config
from sgm.data.video_batch import SV4D_UC_ZERO_KEYS, make_window_batch
from sgm.util import instantiate_from_config

ROOT = Path(__file__).parents[1]
TINY = Path(__file__).parent / "data" / "configs" / "sv4d2_tiny.yaml"
sys.path.insert(0, str(ROOT / "scripts" / "sampling"))
import simple_video_sample_4d as sample_4d  # noqa: E402


def test_window_batch_layout():
    b, T, V = 2, 3, 4
    frames = torch.arange(b * T, dtype=torch.float32).view(b, T, 1, 1, 1).expand(b, T, 3, 2, 2)
    polar, azimuth = torch.arange(V) * 0.1, torch.arange(V) * 1.0
    targets = torch.randn(b, T, V, 3, 2, 2)
    batch = make_window_batch(frames, polar, azimuth, targets=targets)
    assert batch["num_video_frames"] == T * V
    torch.testing.assert_close(batch["cond_frames_without_noise"], frames.reshape(b * T, 3, 2, 2))
    torch.testing.assert_close(batch["cond_motion"], frames.reshape(b * T, 3, 2, 2))
    # rows (b, t, v): the input frame repeated per view, the camera repeated per frame
    assert batch["cond_frames"][:, 0, 0, 0].tolist() == [float(i // V) for i in range(b * T * V)]
    torch.testing.assert_close(batch["azimuth_rad"], azimuth.repeat(b * T))
    torch.testing.assert_close(batch["polar_rad"], polar.repeat(b * T))
    torch.testing.assert_close(batch["frames"], targets.reshape(b * T * V, 3, 2, 2))
    # without reference views: zeros and image_only_indicator 0; with them: the views and 1
    assert batch["cond_view"].shape == (b * V, 3, 2, 2) and not batch["cond_view"].any()
    assert batch["image_only_indicator"].shape == (b, T * V) and not batch["image_only_indicator"].any()
    refs = torch.randn(b, V, 3, 2, 2)
    with_refs = make_window_batch(frames, polar, azimuth, ref_views=refs)
    torch.testing.assert_close(with_refs["cond_view"], refs.reshape(b * V, 3, 2, 2))
    assert with_refs["image_only_indicator"].eq(1).all()
    # DMD: the first frame's views are the given reference views, all other rows are generated
    assert batch["dmd_mask"].eq(1).all()
    assert with_refs["dmd_mask"].view(b, T, V)[:, 0].eq(0).all() and with_refs["dmd_mask"].view(b, T, V)[:, 1:].eq(1).all()
    anchors = make_window_batch(frames, polar, azimuth, ref_views=refs, refs_in_window=False)  # SV4D's anchor window
    assert anchors["dmd_mask"].eq(1).all()
    with pytest.raises(ValueError, match="ref_views"):
        make_window_batch(frames, polar, azimuth, ref_views=refs[:, :2])
    with pytest.raises(ValueError, match="polar_rad"):
        make_window_batch(frames, polar.repeat(2), azimuth)
    # one window whose frames x ... rows happen to number v (b t = 1 * 4 = v): still the camera per view, not per frame
    one = make_window_batch(torch.zeros(1, V, 3, 2, 2), polar, azimuth)
    torch.testing.assert_close(one["azimuth_rad"], azimuth.repeat(V))
    torch.testing.assert_close(one["polar_rad"], polar.repeat(V))


def test_conditioner_c_and_uc_on_a_window():
    engine = instantiate_from_config(load_config(str(TINY)).model).eval()
    T, V = 2, 4
    frames = torch.rand(1, T, 3, 16, 16) * 2 - 1
    batch = make_window_batch(frames, torch.zeros(V), torch.linspace(0, 3, V), ref_views=torch.rand(1, V, 3, 16, 16))
    with torch.no_grad():
        c, uc = engine.conditioner.get_unconditional_conditioning(batch, force_uc_zero_embeddings=SV4D_UC_ZERO_KEYS)
    shapes = {key: tuple(value.shape) for key, value in c.items()}
    assert shapes == {"crossattn": (1, T, 128), "concat": (T * V, 3, 16, 16), "vector": (T * V, 96),
                      "cond_view": (V, 3, 16, 16), "cond_motion": (T, 3, 16, 16)}
    for key in ("crossattn", "concat", "cond_view", "cond_motion"):
        assert not uc[key].any() and c[key].any(), key
    # the cameras stay; sigma_cond is an output of the cond_frames embedder, so it is zeroed with it
    # (as upstream's conditioner does)
    torch.testing.assert_close(uc["vector"][:, 32:], c["vector"][:, 32:])
    assert not uc["vector"][:, :32].any()
    sigma_cond = c["vector"][:, :32]
    torch.testing.assert_close(sigma_cond, sigma_cond[:1].expand_as(sigma_cond))  # one constant sigma


def test_window_schedule_and_cameras():
    assert sample_4d.window_starts(21, 12) == [0, 9]  # upstream's sv4d2 windows for 21 frames
    assert sample_4d.window_starts(21, 5) == [0, 4, 8, 12, 16]  # and sv4d2_8views'
    assert sample_4d.window_starts(12, 12) == [0]
    polar, azimuth = sample_4d.cameras(4, 0.0, None, relative_polar=True)
    torch.testing.assert_close(torch.rad2deg(azimuth), torch.tensor([60.0, 120.0, 180.0, 240.0]))
    torch.testing.assert_close(polar, torch.full((4,), math.pi / 2))


def write_clip(path: Path, frames: int) -> np.ndarray:
    import imageio.v3 as iio

    video = np.zeros((frames, 16, 16, 3), np.uint8)
    for t in range(frames):
        video[t, 4:10, 2 + 2 * t : 8 + 2 * t] = 255
    if path.suffix == ".gif":
        iio.imwrite(path, video, duration=100, loop=0)
    else:
        path.mkdir()
        for t, frame in enumerate(video):
            iio.imwrite(path / f"{t:03d}.png", frame)
    return video


@pytest.mark.parametrize("schedule", ["windows", "anchor_dense"])
def test_script_end_to_end_on_tiny_config(tmp_path, schedule):
    import imageio.v3 as iio

    fmt = "mp4" if schedule == "windows" else "gif"
    common = ["--config", str(TINY), "--size", "16x16", "--device", "cpu", "--format", fmt,
              "--output", str(tmp_path / "out")]
    if schedule == "windows":  # 5 frames, windows of 2 starting at 0, 1, 2, 3; the configured 2 steps
        write_clip(tmp_path / "clip.gif", 5)
        paths = sample_4d.main(common + ["--input", str(tmp_path / "clip.gif"), "--n_frames", "5"])
        n = 5
    else:  # anchors need (T-1)*T + 1 = 3 frames; frame folder input; a 1-step student schedule
        write_clip(tmp_path / "clip", 3)
        write_clip(tmp_path / "refs.gif", 4)
        paths = sample_4d.main(common + ["--input", str(tmp_path / "clip"), "--n_frames", "3",
                                         "--ref_views", str(tmp_path / "refs.gif"), "--sigmas", "80"])
        n = 3
    assert [Path(p).name for p in paths] == [f"clip_v0{v}.{fmt}" for v in range(1, 5)] + [f"clip_grid.{fmt}"]
    view, grid = iio.imread(paths[0], index=0), iio.imread(paths[-1], index=0)
    assert grid.shape[0] * grid.shape[1] > 3 * view.shape[0] * view.shape[1]  # input view + 4 novel views
    if fmt == "mp4":  # (a gif drops repeated frames: random-weight students output constant frames)
        assert len(iio.imread(paths[0], index=None)) == n


def test_script_samples_a_dmd_students_config_with_the_committed_teacher(tmp_path):
    """A student's sampler has no guider to give the window's rows: the script reads T and V from the conditioner.
    The committed toy teacher and its (teacher-initialised) student sample one window of 4 frames x 4 views, where
    b*t == v, and each view shows its own camera: undoing camera k's colour filter brings back the grey input."""
    import imageio.v3 as iio

    from sgm.data.moving_digits import MovingDigits
    from sgm.data.multiview_digits import CAMERA_TINTS
    from sgm.io.media import to_uint8

    clip = MovingDigits(split="heldout", num_frames=4, size=16, channels=3, max_speed=1)[3]["video"]  # (4, 3, 16, 16)
    iio.imwrite(tmp_path / "clip.gif", to_uint8(clip), duration=100, loop=0)
    teacher = ROOT / "assets" / "multiview_digits_teacher"
    paths = sample_4d.main(["--config", str(ROOT / "configs/dmd/multiview_digits_dmd.yaml"), "--input",
                            str(tmp_path / "clip.gif"), "--size", "16x16", "--n_frames", "4", "--device", "cpu",
                            "--format", "gif", "--output", str(tmp_path / "out"), "--azimuths_deg", "0,45,90,135,180",
                            f"model.params.teacher_ckpt_path={teacher / 'model.safetensors'}"])
    assert len(paths) == 5
    for v, path in enumerate(paths[:4], start=1):  # the brightest pixels take camera v's ink colour (red, green, blue, yellow)
        frame = iio.imread(path, index=0)[..., :3].reshape(-1, 3).astype(float)
        ink = frame[frame.sum(1) > 0.3 * frame.sum(1).max()].mean(0)  # (3,) mean colour of the inked pixels
        assert int(ink.argmax()) in [i for i, g in enumerate(CAMERA_TINTS[v]) if g == max(CAMERA_TINTS[v])], (v, ink)


@pytest.mark.parametrize("case", ["text_video", "text_frame", "size_16by16"])
def test_bad_inputs_fail_with_one_line_naming_them(tmp_path, case):
    """Checked before the model is built: exit status 1 and one line on stderr that names the input."""
    import os
    import subprocess

    text = tmp_path / "notes.gif"
    text.write_text("not a video\n")
    folder = tmp_path / "frames"
    write_clip(folder, 3)
    (folder / "frame_0001_notes.png").write_text("not a frame\n")
    args, expected = {
        "text_video": (["--input", str(text)], f"cannot read input video {text}"),
        "text_frame": (["--input", str(folder)], f"cannot read input frame {folder / 'frame_0001_notes.png'}"),
        "size_16by16": (["--input", str(folder), "--size", "16by16"], "--size must be HxW in pixels"),
    }[case]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "sampling" / "simple_video_sample_4d.py"),
                          "--config", str(TINY), "--device", "cpu", "--output", str(tmp_path / "out"), *args],
                         capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert len(out.stderr.strip().splitlines()) == 1 and expected in out.stderr, out.stderr[-3000:]
