"""Users' own videos: VideoFolderDataModule on small mp4 / gif / frame-folder clips written here, and
the micro-conditioning rules (fps_id, motion buckets from optical flow, cond_aug laws)."""
import math
import os
import warnings

import numpy as np
import pytest
import torch

from sgm.data.micro_conditioning import (
    Constant, LogNormal, Uniform, fps_id_from_fps, mean_flow_percent, motion_bucket_from_flow, parse_law)
from sgm.data.video_folder import VideoFolderDataModule, list_videos

H, W = 48, 64  # written clips
KEYS = {"frames", "cond_frames", "cond_frames_without_noise", "fps_id", "motion_bucket_id", "cond_aug",
        "num_video_frames", "image_only_indicator"}


def texture(seed: int = 0, height: int = 2 * H, width: int = 2 * W) -> np.ndarray:
    """A smooth random grey-level texture (Farneback needs gradients) as (height, width, 3) uint8."""
    rng = np.random.default_rng(seed)
    noise = torch.from_numpy(rng.random((1, 1, height // 8, width // 8), dtype=np.float32))
    smooth = torch.nn.functional.interpolate(noise, size=(height, width), mode="bicubic", align_corners=False)[0, 0]
    smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min())
    return np.repeat((255 * smooth.numpy()).astype(np.uint8)[..., None], 3, axis=-1)


def moving(frames: int, speed: int, seed: int = 0) -> np.ndarray:
    """(frames, H, W, 3) uint8: a window sliding over a texture by `speed` pixels per frame."""
    image = texture(seed)
    return np.stack([image[8:8 + H, 4 + k * speed:4 + k * speed + W] for k in range(frames)])


def write_mp4(path, frames: np.ndarray, fps: float) -> str:
    import imageio.v2 as iio2

    iio2.mimwrite(str(path), frames, fps=fps, quality=9, macro_block_size=16)
    return str(path)


def write_gif(path, frames: np.ndarray, fps: float) -> str:
    import imageio.v2 as iio2

    iio2.mimwrite(str(path), frames, duration=1000.0 / fps, loop=0)
    return str(path)


def write_frames(folder, frames: np.ndarray) -> str:
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    for k, frame in enumerate(frames):
        Image.fromarray(frame).save(os.path.join(folder, f"{k:04d}.png"))
    return str(folder)


def batches(data: VideoFolderDataModule, count: int = 1, epoch: int = 0) -> list[dict]:
    data.setup()
    loader = data.train_dataloader()
    loader.load_state_dict({"epoch": epoch, "batches": 0})  # the loader counts its own passes
    out = []
    for batch in loader:
        out.append(batch)
        if len(out) == count:
            break
    return out


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Two mp4s (24 fps), a gif (10 fps) in a subfolder and a folder of png frames."""
    root = tmp_path_factory.mktemp("videos")
    write_mp4(root / "a.mp4", moving(20, 1, seed=1), fps=24)
    write_mp4(root / "b.mp4", moving(20, 2, seed=2), fps=24)
    os.makedirs(root / "sub")
    write_gif(root / "sub" / "c.gif", moving(12, 1, seed=3), fps=10)
    write_frames(root / "sub" / "d_frames", moving(10, 1, seed=4))
    return root


# ---------------------------------------------------------------------------------- micro-conditioning
def test_fps_id_is_fps_over_stride_minus_one():
    assert fps_id_from_fps(7, 1) == 6  # upstream's default fps_id 6 plays at 7 fps
    assert fps_id_from_fps(24, 3) == 7 and fps_id_from_fps(29.97, 2) == 14 and fps_id_from_fps(1, 4) == 0
    with pytest.raises(ValueError, match="fps > 0"):
        fps_id_from_fps(0, 1)


def test_flow_percent_measures_a_known_translation_and_the_bucket_rule():
    for speed in (0, 1, 3):  # pixels per frame on a 48-pixel shorter side
        percent = mean_flow_percent(moving(5, speed))
        assert abs(percent - 100 * speed / H) < 0.1 + 0.1 * 100 * speed / H, (speed, percent)
    assert motion_bucket_from_flow(0.0) == 0 and motion_bucket_from_flow(2.54) == 127
    assert motion_bucket_from_flow(100.0) == 255 and motion_bucket_from_flow(1.0, scale=20) == 20
    with pytest.raises(ValueError, match="flow_percent"):
        motion_bucket_from_flow(float("nan"))
    with pytest.raises(ValueError, match=r"\(t >= 2, H, W, 3\)"):
        mean_flow_percent(moving(1, 1))


def test_laws_parse_and_draw():
    assert parse_law(6, "fps_id") == Constant(6.0)
    assert parse_law([3, 9], "fps_id", integer=True) == Uniform(3.0, 9.0, True)
    assert parse_law({"log_normal": [-3.0, 0.5]}, "cond_aug") == LogNormal(-3.0, 0.5)
    draws = parse_law([3, 9], "fps_id", integer=True).sample(2000, torch.Generator().manual_seed(0))
    assert set(draws.tolist()) == {3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0}
    log = torch.log(LogNormal(-3.0, 0.5).sample(20000, torch.Generator().manual_seed(0)))
    assert abs(log.mean() + 3.0) < 0.02 and abs(log.std() - 0.5) < 0.02
    for bad, match in (("fast", "must be a number"), ([9, 3], "low > high"), ([1.5, 3], "whole numbers"),
                       ({"log_normal": [0, -1]}, "p_std"), ([1, 2, 3], "two numbers")):
        with pytest.raises(ValueError, match=match):
            parse_law(bad, "motion_bucket_id", integer=True)


# --------------------------------------------------------------------------------------- data module
def test_batch_keys_shapes_and_conditioning_frame(folder):
    data = VideoFolderDataModule(folder=str(folder), size=[16, 24], num_frames=4, frame_stride=2, batch_size=2,
                                 frames_fps=8, motion_bucket_id=127, cond_aug=0.0)
    assert len(list_videos(str(folder))) == 4
    (batch,) = batches(data)
    assert set(batch) == KEYS
    assert batch["frames"].shape == (8, 3, 16, 24) and batch["num_video_frames"] == 4
    assert batch["cond_frames"].shape == batch["cond_frames_without_noise"].shape == (2, 3, 16, 24)
    assert batch["image_only_indicator"].shape == (2, 4)
    for key in ("fps_id", "motion_bucket_id", "cond_aug"):
        assert batch[key].shape == (8,), key
    assert batch["frames"].min() >= -1 and batch["frames"].max() <= 1 and batch["frames"].std() > 0.1
    torch.testing.assert_close(batch["cond_frames_without_noise"], batch["frames"][::4])  # first frame of each clip
    assert torch.equal(batch["cond_frames"], batch["cond_frames_without_noise"])  # cond_aug 0


def test_fps_id_from_each_container_and_frames_fps(folder):
    data = VideoFolderDataModule(folder=str(folder), size=[16, 24], num_frames=3, frame_stride=3, frames_fps=16,
                                 motion_bucket_id=127)
    data.setup()
    clips = data.train_dataset
    by_name = {os.path.basename(s.path): s for s in clips.sources}
    assert by_name["a.mp4"].fps == 24 and by_name["a.mp4"].num_frames == 20
    assert by_name["c.gif"].fps == pytest.approx(10) and by_name["c.gif"].num_frames == 12
    generator = torch.Generator()
    assert clips.fps_id(by_name["a.mp4"], generator) == 7  # 24 fps / 3 - 1
    assert clips.fps_id(by_name["c.gif"], generator) == 2  # 10 / 3 = 3.3 -> 3, - 1
    assert clips.fps_id(by_name["d_frames"], generator) == 4  # frames_fps 16 / 3 = 5.3 -> 5, - 1
    (batch,) = batches(VideoFolderDataModule(folder=str(folder), size=[16, 24], num_frames=3, frame_stride=3,
                                             fps_id=[2, 4], frames_fps=16, batch_size=4, motion_bucket_id=127))
    assert set(batch["fps_id"].tolist()) <= {2.0, 3.0, 4.0}  # a configured law replaces the container's

    no_rate = VideoFolderDataModule(folder=str(folder), size=[16, 24], num_frames=3, motion_bucket_id=127)
    no_rate.setup()
    (frames_folder,) = [s for s in no_rate.train_dataset.sources if os.path.isdir(s.path)]
    with pytest.raises(ValueError, match="d_frames has no frame rate.*frames_fps"):
        no_rate.train_dataset.fps_id(frames_folder, generator)


def test_motion_buckets_order_static_slow_fast(tmp_path):
    for name, speed in (("0_static", 0), ("1_slow", 1), ("2_fast", 2)):
        write_mp4(tmp_path / f"{name}.mp4", moving(8, speed, seed=speed), fps=8)
    data = VideoFolderDataModule(folder=str(tmp_path), size=[H, W], num_frames=8)  # motion_bucket_id: flow
    data.setup()
    clips = data.train_dataset
    buckets = [clips[(i, 0)]["motion_bucket_id"] for i in range(3)]  # sources are sorted by name
    assert buckets[0] < 5 < buckets[1] < buckets[2], buckets
    # the rule: 1 and 2 pixels per frame on a 48-pixel side are 2.08% and 4.17% -> ~104 and ~208
    assert abs(buckets[1] - 104) < 15 and abs(buckets[2] - 208) < 25, buckets


def test_cond_aug_draws_per_clip_and_noises_cond_frames(folder):
    data = VideoFolderDataModule(folder=str(folder), size=[16, 24], num_frames=2, batch_size=4, frames_fps=8,
                                 motion_bucket_id=[0, 255])  # default cond_aug: log-normal (-3.0, 0.5)
    (batch,) = batches(data)
    per_clip = batch["cond_aug"].view(4, 2)
    assert torch.equal(per_clip[:, 0], per_clip[:, 1]) and len(set(per_clip[:, 0].tolist())) == 4
    assert (per_clip > 0).all() and (per_clip < 1).all()
    noise = (batch["cond_frames"] - batch["cond_frames_without_noise"]).flatten(1).std(dim=1)
    torch.testing.assert_close(noise, per_clip[:, 0], rtol=0.15, atol=0.0)
    assert len(set(batch["motion_bucket_id"].tolist())) > 1  # a range draws per clip


def test_unreadable_and_short_files_are_skipped_and_named_once(tmp_path):
    write_mp4(tmp_path / "good.mp4", moving(10, 1), fps=10)
    write_mp4(tmp_path / "good2.mp4", moving(10, 2), fps=10)
    write_mp4(tmp_path / "short.mp4", moving(3, 1), fps=10)
    (tmp_path / "broken.mp4").write_bytes(b"not a video" * 20)
    data = VideoFolderDataModule(folder=str(tmp_path), size=[16, 24], num_frames=6, motion_bucket_id=127)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data.setup()
    messages = [str(w.message) for w in caught if "skipped" in str(w.message)]
    assert len(messages) == 1, messages
    assert "2 of 4 videos" in messages[0] and "broken.mp4 (unreadable" in messages[0]
    assert "short.mp4 (3 frames < 6 needed)" in messages[0]
    assert len(data.skipped) == 2 and len(data.train_dataset) == 2

    # a file that breaks after the scan: replaced by the next one, named once, no crash
    os.remove(tmp_path / "good.mp4")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        items = [data.train_dataset[(0, seed)] for seed in range(3)]
    assert [str(w.message) for w in caught if "good.mp4" in str(w.message)] == [
        str(caught[0].message)] and "skipping" in str(caught[0].message)
    assert all(item["video"].shape == (6, 3, 16, 24) for item in items)


def test_empty_or_unusable_folder_is_one_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="video folder not found"):
        VideoFolderDataModule(folder=str(tmp_path / "nope"), size=[16, 16]).setup()
    (tmp_path / "notes.txt").write_text("no videos here")
    with pytest.raises(FileNotFoundError, match=r"no usable videos under .*: 0 found"):
        VideoFolderDataModule(folder=str(tmp_path), size=[16, 16]).setup()
    (tmp_path / "broken.gif").write_bytes(b"GIF89a broken")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(FileNotFoundError, match=r"1 found .* >= 14 frames"):
            VideoFolderDataModule(folder=str(tmp_path), size=[16, 16]).setup()
    with pytest.raises(ValueError, match="'cond_aug' must be"):
        VideoFolderDataModule(folder=str(tmp_path), size=[16, 16], cond_aug="high")


def test_batches_are_the_same_whatever_the_worker_count_and_new_each_epoch(folder):
    kwargs = dict(folder=str(folder), size=[16, 24], num_frames=3, frame_stride=2, batch_size=2, frames_fps=8,
                  motion_bucket_id="flow", seed=5)
    serial = batches(VideoFolderDataModule(**kwargs, num_workers=0), count=2)
    parallel = batches(VideoFolderDataModule(**kwargs, num_workers=2), count=2)
    for one, two in zip(serial, parallel):
        for key in KEYS - {"num_video_frames"}:
            assert torch.equal(one[key], two[key]), key
    next_epoch = batches(VideoFolderDataModule(**kwargs, num_workers=0), count=2, epoch=1)
    assert not torch.equal(serial[0]["frames"], next_epoch[0]["frames"])
    assert not math.isclose(float(serial[0]["cond_aug"][0]), float(next_epoch[0]["cond_aug"][0]))


def test_motion_buckets_script_prints_fps_id_and_buckets(tmp_path, capsys):
    import importlib.util

    write_mp4(tmp_path / "slow.mp4", moving(12, 1), fps=12)
    (tmp_path / "broken.webm").write_bytes(b"nothing")
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts/motion_buckets.py")
    spec = importlib.util.spec_from_file_location("motion_buckets", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    (row,) = script.main([str(tmp_path), "--size", str(H), str(W), "--num_frames", "5", "--frame_stride", "2"])
    assert row["fps_id"] == 5 and row["frames"] == 12 and len(row["buckets"]) == 3  # 12 fps / 2 - 1
    assert all(abs(b - 208) < 25 for b in row["buckets"]), row  # stride 2: 1 px per video frame = 2 px per clip frame
    out = capsys.readouterr().out
    assert "slow.mp4" in out and "skipped: " in out and "broken.webm (unreadable" in out


# ------------------------------------------------------------------- data-free runs (first frames only)
def test_first_frame_batches_draw_micro_conditioning_per_clip_when_given_ranges(tmp_path):
    from PIL import Image

    from sgm.data.image_folder import ImageFolderDataModule

    for i in range(8):
        Image.fromarray(texture(i, 32, 32)).save(tmp_path / f"{i}.png")

    def batch(**laws):
        data = ImageFolderDataModule(folder=str(tmp_path), size=[16, 16], num_frames=3, batch_size=8, **laws)
        data.setup()
        return next(iter(data.train_dataloader()))

    fixed = batch()  # upstream's constants, as before
    assert set(fixed["fps_id"].tolist()) == {6.0} and set(fixed["motion_bucket_id"].tolist()) == {127.0}
    torch.testing.assert_close(fixed["cond_aug"], torch.full((24,), 0.02))
    drawn = batch(fps_id=[4, 10], motion_bucket_id=[60, 200], cond_aug={"log_normal": [-3.0, 0.5]})
    for key, low, high in (("fps_id", 4, 10), ("motion_bucket_id", 60, 200), ("cond_aug", 0.0, 1.0)):
        per_clip = drawn[key].view(8, 3)
        assert torch.equal(per_clip, per_clip[:, :1].expand(8, 3)), key  # one value per clip
        assert per_clip.min() >= low and per_clip.max() <= high and len(set(per_clip[:, 0].tolist())) > 2, key
    assert torch.equal(drawn["fps_id"], drawn["fps_id"].round())
    noise = (drawn["cond_frames"] - drawn["cond_frames_without_noise"]).flatten(1).std(dim=1)
    torch.testing.assert_close(noise, drawn["cond_aug"].view(8, 3)[:, 0], rtol=0.2, atol=0.0)
    with pytest.raises(ValueError, match="'motion_bucket_id' takes whole numbers"):
        ImageFolderDataModule(folder=str(tmp_path), size=[16, 16], motion_bucket_id=[0.5, 2])


# ------------------------------------------------------------------------ fine-tuning on a folder, main.py
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FINETUNE = "configs/example_training/toy/moving_digits_finetune.yaml"


def load_script(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "scripts", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def digit_clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("moving_digits_mp4")
    paths = load_script("write_moving_digits").main([str(folder), "--clips", "16"])
    assert len(paths) == 16 and all(p.endswith(".mp4") for p in paths)
    return str(folder)


def test_written_clips_round_trip_and_the_teacher_recognises_them(digit_clips, one_thread):
    from sgm.config import load_configs
    from sgm.data.moving_digits import MovingDigits
    from sgm.util import instantiate_from_config

    config = load_configs([os.path.join(ROOT, FINETUNE)], [f"data.params.folder={digit_clips}",
                                                           "data.params.batch_size=16"])
    data = instantiate_from_config(config.data)
    data.setup()
    clips, rendered = data.train_dataset, MovingDigits("train", num_frames=8, size=16, channels=3)
    item = clips[(0, 0)]
    assert (item["video"] - rendered[0]["video"]).abs().max() < 0.05  # H.264 at 16x16 is near-lossless here
    assert item["fps_id"] == 6  # written at 7 fps
    by_speed = {}  # |vx| + |vy| -> flow buckets of the clips written with it
    for i in range(16):
        by_speed.setdefault(rendered.trajectory(i)[2], []).append(clips[(i, 0)]["motion_bucket_id"])
    means = [float(np.mean(by_speed[speed])) for speed in sorted(by_speed)]
    assert len(means) >= 3 and means == sorted(means) and means[-1] > means[0] + 40, by_speed  # faster, higher

    batch = next(iter(data.train_dataloader()))
    losses = {}
    for name, ckpt in (("teacher", config.model.params.ckpt_path), ("random", None)):
        torch.manual_seed(0)
        engine = instantiate_from_config(config.model, ckpt_path=ckpt)
        torch.manual_seed(1)
        with torch.no_grad():
            losses[name] = float(engine.loss_fn(engine.model, engine.denoiser, engine.conditioner,
                                                engine.get_input(batch), batch).mean())
    assert losses["teacher"] < 0.3 * losses["random"], losses  # measured 0.07 vs 0.98


@pytest.mark.slow
def test_main_fine_tunes_the_teacher_on_a_folder_of_mp4_clips(digit_clips, tmp_path):
    import csv
    import glob
    import subprocess
    import sys

    logroot = str(tmp_path / "logs")
    out = subprocess.run(
        [sys.executable, "main.py", "--base", FINETUNE, "-l", logroot, "-n", "ft", "--max_steps", "4",
         f"data.params.folder={digit_clips}", "data.params.batch_size=4", "lightning.trainer.log_every_n_steps=1",
         "lightning.callbacks.image_logger.params.batch_frequency=2",
         "lightning.callbacks.image_logger.params.log_images_kwargs.N=2", "lightning.trainer.enable_progress_bar=False"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    (logdir,) = glob.glob(os.path.join(logroot, "*_ft"))
    with open(glob.glob(os.path.join(logdir, "csv", "version_*", "metrics.csv"))[0]) as f:
        losses = [float(r["loss"]) for r in csv.DictReader(f) if r.get("loss")]
    assert len(losses) == 4 and all(0 < v < 0.5 for v in losses), losses  # the teacher's level, not a random net's ~1
    assert glob.glob(os.path.join(logdir, "images", "train", "samples_gs-000002*.gif"))
    ckpt = torch.load(os.path.join(logdir, "checkpoints", "last.ckpt"), map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 4


def test_svd_finetune_configs_build_on_meta_with_video_folder_data():
    import subprocess
    import sys

    from sgm.config import load_configs
    from sgm.util import instantiate_from_config

    base = os.path.join(ROOT, "configs/example_training/svd_finetune.yaml")
    xt = os.path.join(ROOT, "configs/example_training/svd_xt_finetune.yaml")
    for paths, frames, scales in (([base], 14, (1.0, 2.5)), ([base, xt], 25, (1.5, 3.0))):
        cfg = load_configs(paths)
        p = cfg.model.params
        assert p.ckpt_path.startswith("checkpoints/svd") and p.network_config.params.use_checkpoint
        assert cfg.lightning.trainer.precision == "bf16-mixed" and p.input_key == "frames"
        assert [e.get("ucg_rate", 0.0) for e in p.conditioner_config.params.emb_models] == [0.1, 0, 0, 0.1, 0]
        assert p.loss_fn_config.params.sigma_sampler_config.params.p_mean == 1.0
        guider = p.sampler_config.params.guider_config.params
        assert (guider.min_scale, guider.max_scale, guider.num_frames) == (*scales, frames)
        data = instantiate_from_config(cfg.data)  # the folder is only read in setup()
        assert data.num_frames == frames and data.size == (576, 1024)
    out = subprocess.run([sys.executable, "main.py", "--base", base, xt, "--dry-run"], cwd=ROOT, capture_output=True,
                         text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    assert "DiffusionEngine: 2,389,819,785 parameters (1,524,623,082 trainable)" in out.stdout
    assert "data: sgm.data.video_folder.VideoFolderDataModule" in out.stdout


def test_dmd_svd_gan_reads_real_clips_from_a_video_folder(folder):
    from sgm.config import load_configs
    from sgm.util import instantiate_from_config

    cfg = load_configs([os.path.join(ROOT, "configs/dmd/dmd_svd_gan.yaml")])
    data = instantiate_from_config(cfg.data)
    assert isinstance(data, VideoFolderDataModule) and data.num_frames == 14 and data.size == (576, 1024)
    # the same data block on the small clips written here: real frames for the GAN, micro-conditioning per clip
    small = load_configs([os.path.join(ROOT, "configs/dmd/dmd_svd_gan.yaml")], [
        f"data.params.folder={folder}", "data.params.size=[16,24]", "data.params.num_frames=3",
        "data.params.frame_stride=2", "data.params.num_workers=0", "data.params.batch_size=2",
        "+data.params.frames_fps=8"])
    (batch,) = batches(instantiate_from_config(small.data))
    assert set(batch) == KEYS and batch["frames"].shape == (6, 3, 16, 24)
    assert set(batch["fps_id"].tolist()) <= {11.0, 4.0, 3.0}  # 24 fps / 2 - 1, 10 fps gif -> 5 - 1, 8 / 2 - 1


def test_motion_buckets_from_a_file_beside_the_clips(digit_clips, tmp_path):
    import json

    from sgm.data.moving_digits import MovingDigits

    data = VideoFolderDataModule(folder=digit_clips, size=[16, 16], num_frames=8, motion_bucket_id="file")
    data.setup()
    rendered = MovingDigits("train", num_frames=8, size=16, channels=3)
    assert [data.train_dataset[(i, 0)]["motion_bucket_id"] for i in range(4)] == [
        rendered[i]["motion_bucket_id"] for i in range(4)]  # the renderer's own code, written by the script
    write_mp4(tmp_path / "a.mp4", moving(8, 1), fps=8)
    write_mp4(tmp_path / "b.mp4", moving(8, 2), fps=8)
    with pytest.raises(FileNotFoundError, match="motion_bucket_id: file needs .*motion_buckets.json"):
        VideoFolderDataModule(folder=str(tmp_path), size=[16, 16], num_frames=8, motion_bucket_id="file").setup()
    (tmp_path / "motion_buckets.json").write_text(json.dumps({"a.mp4": 40}))
    with pytest.raises(ValueError, match=r"no motion_bucket_id for 1 of 2 videos: b.mp4"):
        VideoFolderDataModule(folder=str(tmp_path), size=[16, 16], num_frames=8, motion_bucket_id="file").setup()


@pytest.mark.slow
def test_moving_digits_gan_distils_with_real_clips_from_mp4_files(digit_clips, tmp_path):
    import glob
    import subprocess
    import sys

    from sgm.config import load_configs

    config = load_configs([os.path.join(ROOT, "configs/dmd/moving_digits_dmd_gan.yaml")])
    assert config.data.target == "sgm.data.video_folder.VideoFolderDataModule" and "channels" not in config.data.params
    out = subprocess.run(
        [sys.executable, "main.py", "--base", "configs/dmd/moving_digits_dmd_gan.yaml", "-l", str(tmp_path), "-n", "gan",
         "--max_steps", "2", f"data.params.folder={digit_clips}", "data.params.batch_size=2",
         "model.params.generator.update_interval=2", "lightning.callbacks.video_eval=null",
         "lightning.trainer.log_every_n_steps=1", "lightning.trainer.enable_progress_bar=False",
         "lightning.callbacks.image_logger.params.batch_frequency=1000"],
        cwd=ROOT, capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    (logdir,) = glob.glob(os.path.join(str(tmp_path), "*_gan"))
    with open(glob.glob(os.path.join(logdir, "csv", "version_*", "metrics.csv"))[0]) as f:
        header = f.readline()
    assert "gan" in header, header  # the GAN term ran on the real clips


def test_pyav_and_imageio_read_the_same_frames(folder):
    """Videos decode through PyAV when it is installed, imageio-ffmpeg otherwise: both give the same frames."""
    pytest.importorskip("av")
    from sgm.data.video_folder import read_video_frames_imageio, read_video_frames_pyav

    path = str(folder / "a.mp4")
    indices = [3, 5, 7, 19]
    pyav, imageio = read_video_frames_pyav(path, indices), read_video_frames_imageio(path, indices)
    assert pyav.shape == imageio.shape == (4, *imageio.shape[1:3], 3) and pyav.dtype == np.uint8
    assert np.abs(pyav.astype(int) - imageio.astype(int)).max() <= 2  # one ffmpeg decoder under both
    with pytest.raises(ValueError, match="has no frame"):
        read_video_frames_pyav(path, [0, 40])
