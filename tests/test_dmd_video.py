"""DMD on video: the full-size SVD DMD configs (built on the meta device), and the moving-digits
DMD config end to end with a tiny random SVD-architecture teacher: per-clip sigmas, per-frame CFG,
the frame mask, `main.py` training, and the exported student loading into the teacher's config."""
import csv
import glob
import importlib.util
import math
import os
import subprocess
import sys

import pytest
import torch

from sgm.config import load_configs
from sgm.util import fold_frames, instantiate_from_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEACHER_CONFIG = os.path.join(ROOT, "configs/example_training/toy/moving_digits_svd.yaml")
DMD_CONFIG = os.path.join(ROOT, "configs/dmd/moving_digits_dmd.yaml")
SVD_UNET_PARAMS = 1_524_623_082
B, T = 2, 8  # clips, frames


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster


def save_tiny_teacher(path: str) -> str:
    """The moving-digits teacher with random weights (output layer nonzero), as a safetensors file."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    teacher = instantiate_from_config(load_configs([TEACHER_CONFIG], ["model.params.use_ema=False"]).model)
    with torch.no_grad():
        for p in teacher.model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    save_file({k: v.contiguous() for k, v in teacher.state_dict().items()}, path)
    return path


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    return save_tiny_teacher(str(tmp_path_factory.mktemp("teacher") / "teacher.safetensors"))


def video_batch(clips: int = B) -> dict:
    from sgm.data.moving_digits import MovingDigitsDataModule

    data = MovingDigitsDataModule(batch_size=clips, num_frames=T, size=16, channels=3)
    data.setup()
    torch.manual_seed(1)
    return next(iter(data.train_dataloader()))


def build(teacher_file: str, *overrides: str):
    cfg = load_configs([DMD_CONFIG], [f"model.params.teacher_ckpt_path={teacher_file}", *overrides])
    return instantiate_from_config(cfg.model, learning_rate=1e-3)


# ------------------------------------------------------------------------------ full size, meta device
def run_main(*args, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "main.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_svd_dmd_dry_run_lists_every_role():
    out = run_main("--base", "configs/dmd/dmd_svd.yaml", "--dry-run")
    assert out.returncode == 0, out.stderr[-3000:]
    rows = {line.split()[0]: line.split() for line in out.stdout.splitlines() if line.startswith("  ")}
    for role, kind, trainable in (("model", "OpenAIWrapper", SVD_UNET_PARAMS), ("real_score", "ScoreModel", 0),
                                  ("fake_score", "ScoreModel", SVD_UNET_PARAMS)):
        assert rows[role][1] == kind, rows[role]
        assert int(rows[role][2].replace(",", "")) == SVD_UNET_PARAMS, rows[role]
        assert int(rows[role][-1].replace(",", "")) == trainable, rows[role]
    for part in ("conditioner", "first_stage_model", "model_ema", "loss_fn"):
        assert part in rows
    assert "data: sgm.data.image_folder.ImageFolderDataModule" in out.stdout


@pytest.mark.parametrize("name, frames, scales, steps, gan", [
    ("dmd_svd", 14, (1.0, 2.5), 4, False),
    ("dmd_svd_xt", 25, (1.5, 3.0), 4, False),
    ("dmd_svd_1step", 14, (1.0, 2.5), 1, False),
    ("dmd_svd_gan", 14, (1.0, 2.5), 4, True),
])
def test_svd_dmd_overlays(name, frames, scales, steps, gan):
    cfg = load_configs([os.path.join(ROOT, "configs/dmd", f"{name}.yaml")])
    p = cfg.model.params
    assert p.teacher_ckpt_path.startswith("checkpoints/svd") and cfg.data.params.num_frames == frames
    assert p.real_score_config.params.dtype == "bfloat16" and p.network_config.params.use_checkpoint
    guider = instantiate_from_config(p.real_score_config.params.guider_config)
    torch.testing.assert_close(guider.frame_scales(), torch.linspace(*scales, frames))
    sampler = instantiate_from_config(p.sampler_config)
    sigmas = sampler.generator_sigmas()
    assert len(sigmas) == steps and math.isclose(float(sigmas[0]), 700.0, rel_tol=1e-5)
    assert sampler.guider.__class__.__name__ == "IdentityGuider"
    assert ("gan" in p.get("terms", {})) == gan
    if gan:  # the head fits the VideoUNet's bottleneck width
        assert p.terms.gan.params.head_config.params.in_channels == p.network_config.params.model_channels * 4


# ------------------------------------------------------------------------------ tiny, in process
def generator_step_with_grads(engine, batch: dict):
    """One generator loss + backward with the teacher's inputs recorded and the generated x0's gradient kept.

    -> the step's log, `seen` (the teacher's x, sigma, cond, uc and kwargs), the generator's x0 (its `.grad`
    filled) and the teacher's own forward (to re-run it unguided)."""
    seen, x0s = {}, []
    teacher_forward, rollout = engine.real_score.forward, engine.rollout

    def record_teacher(x, sigma, cond, uc=None, **kwargs):
        seen.update(x=x, sigma=sigma, cond=cond, uc=uc, kwargs=kwargs)
        return teacher_forward(x, sigma, cond, uc=uc, **kwargs)

    def keep_x0(inputs, stream):
        x0, exit_step = rollout(inputs, stream)
        if x0.requires_grad:  # the generator's rollout (the critic's runs without grad)
            x0.retain_grad()
            x0s.append(x0)
        return x0, exit_step

    engine.real_score.forward, engine.rollout = record_teacher, keep_x0
    loss, log = engine.generator_loss(batch)
    loss.backward()
    assert torch.isfinite(loss) and all(math.isfinite(float(v)) for v in log.values())
    (x0,) = x0s
    return log, seen, x0, teacher_forward


def test_video_generator_loss_per_clip_sigmas_per_frame_cfg_and_mask(teacher_file):
    engine = build(teacher_file)
    batch = video_batch()
    mask = torch.ones(B, T)
    mask[:, 0] = 0  # the first frame is the known conditioning frame
    batch["dmd_mask"] = mask

    log, seen, x0, teacher_forward = generator_step_with_grads(engine, batch)
    assert log["dmd/gap"] > 0 and log["dmd/normalizer"] > 0

    assert x0.shape == (B * T, 3, 16, 16)  # video-shaped: one row per frame
    grad = fold_frames(x0.grad, T)  # (B, T, 3, 16, 16)
    assert torch.all(grad[:, 0] == 0) and torch.all(grad[:, 1:].flatten(2).abs().sum(-1) > 0)

    sigma = seen["sigma"].view(B, T)  # one DMD sigma per clip
    assert torch.all(sigma == sigma[:, :1]) and seen["kwargs"]["num_video_frames"] == T

    with torch.no_grad():  # the teacher's CFG: D_u + s_t (D_c - D_u), s_t = 1.0 .. 2.5 over the frames
        x, s, kw = seen["x"], seen["sigma"], seen["kwargs"]
        d_c = fold_frames(engine.real_score.denoise(x, s, seen["cond"], **kw), T)
        d_u = fold_frames(engine.real_score.denoise(x, s, seen["uc"], **kw), T)
        scale = torch.linspace(1.0, 2.5, T).view(1, T, 1, 1, 1)
        guided = fold_frames(teacher_forward(x, s, seen["cond"], uc=seen["uc"], **kw), T)
    torch.testing.assert_close(guided, d_u + scale * (d_c - d_u), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(d_c, d_u)  # the uc really drops the conditioning frame

    loss, log = engine.critic_loss(batch)
    loss.backward()
    assert torch.isfinite(loss)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in engine.critic_parameters())


def test_image_folder_yields_svd_first_frame_batches(tmp_path):
    from PIL import Image

    from sgm.data.image_folder import ImageFolderDataModule

    for i, size in enumerate([(40, 30), (20, 50), (24, 24)]):
        Image.new("RGB", size, (255 * (i % 2), 128, 0)).save(tmp_path / f"{i}.png")
    data = ImageFolderDataModule(folder=str(tmp_path), size=[16, 24], num_frames=5, batch_size=2, cond_aug=0.0)
    data.setup()
    batch = next(iter(data.train_dataloader()))
    assert batch["cond_frames_without_noise"].shape == (2, 3, 16, 24)
    assert torch.equal(batch["cond_frames"], batch["cond_frames_without_noise"])  # cond_aug 0
    assert batch["cond_frames"].min() >= -1 and batch["cond_frames"].max() <= 1
    assert batch["num_video_frames"] == 5 and batch["fps_id"].shape == (10,)
    assert batch["image_only_indicator"].shape == (2, 5) and "frames" not in batch


# ------------------------------------------------------------------------------ main.py end to end
def logged(logdir: str, key: str) -> list[float]:
    values = []
    for path in glob.glob(os.path.join(logdir, "csv", "version_*", "metrics.csv")):
        with open(path) as f:
            values += [float(r[key]) for r in csv.DictReader(f) if r.get(key)]
    return values


@pytest.mark.slow
def test_main_trains_tiny_video_dmd_and_the_export_loads_into_the_teacher_config(teacher_file, tmp_path):
    logroot = str(tmp_path / "logs")
    out = run_main("--base", "configs/dmd/moving_digits_dmd.yaml", "-l", logroot, "-n", "vdmd", "--max_steps", "3",
                   f"model.params.teacher_ckpt_path={teacher_file}", "data.params.batch_size=2",
                   "model.params.generator.update_interval=2", "lightning.trainer.log_every_n_steps=1",
                   "lightning.callbacks.image_logger.params.batch_frequency=2",
                   "lightning.callbacks.image_logger.params.log_images_kwargs.N=1",
                   "lightning.trainer.enable_progress_bar=False", "lightning.callbacks.video_eval=null")
    assert out.returncode == 0, out.stderr[-3000:]
    (logdir,) = glob.glob(os.path.join(logroot, "*_vdmd"))
    assert len(logged(logdir, "loss/critic")) == 3 and len(logged(logdir, "loss/dmd")) == 2
    assert all(math.isfinite(v) for v in logged(logdir, "loss/critic") + logged(logdir, "loss/dmd"))
    assert glob.glob(os.path.join(logdir, "images", "train", "samples_gs-000002*"))

    spec = importlib.util.spec_from_file_location("export_student", os.path.join(ROOT, "scripts/export_student.py"))
    export = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(export)
    weights = export.main([logdir, "--out", str(tmp_path / "student"), "--dtype", "float32"])

    from safetensors.torch import load_file

    # the teacher's own model config (a plain DiffusionEngine, as configs/inference/svd.yaml for SVD)
    teacher_cfg = load_configs([TEACHER_CONFIG], ["model.params.use_ema=False"])
    engine = instantiate_from_config(teacher_cfg.model)
    result = engine.load_state_dict(load_file(weights), strict=False)
    assert result.missing_keys == [] and result.unexpected_keys == []

    student = instantiate_from_config(load_configs([str(tmp_path / "student" / "inference.yaml")],
                                                   [f"model.params.ckpt_path={weights}"]).model)
    assert len(student.sampler.generator_sigmas()) == 1
    batch = video_batch(1)
    cond = student.conditioner(batch)
    frames = student.sample(cond, batch_size=T, shape=(3, 16, 16), num_video_frames=T,
                            image_only_indicator=batch["image_only_indicator"])
    assert frames.shape == (T, 3, 16, 16) and torch.isfinite(frames).all()


def test_gan_term_without_real_frames_is_a_config_error(teacher_file):
    from sgm.util import ConfigError

    head = "model.params.terms.gan.params.head_config"
    engine = build(teacher_file, "model.params.terms.gan.target=sgm.modules.distillation.terms.GANTerm",
                   f"{head}.target=sgm.modules.distillation.losses.BottleneckClassifier",
                   f"{head}.params.in_channels=64",  # 32 x channel_mult[-1] = 2
                   "model.params.inputs.latent_shape=[3,16,16]")  # data-free, as dmd_svd.yaml
    batch = video_batch()
    batch.pop("frames")  # first frames only, as sgm.data.image_folder yields
    with pytest.raises(ConfigError, match="GAN term needs real data"):
        engine.critic_loss(batch)
