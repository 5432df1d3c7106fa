"""DMDEngine on the digits configs with a tiny U-Net: weights from the teacher file, gradient
routing between the two losses, the manual-optimisation schedule, frozen parts, exact resume, and
`main.py` end to end (train, log, checkpoint, resume)."""
import csv
import glob
import importlib.util
import os
import subprocess
import sys

import pytest
import torch
from torch.utils.data import DataLoader

import pytorch_lightning as pl
from sgm.callbacks.randomness import StepSeed
from sgm.config import load_configs
from sgm.util import instantiate_from_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEACHER_CONFIG = os.path.join(ROOT, "configs/example_training/toy/digits_cond.yaml")
DMD_CONFIG = os.path.join(ROOT, "configs/dmd/digits_dmd.yaml")
GAN_CONFIG = os.path.join(ROOT, "configs/dmd/digits_dmd_gan.yaml")
TINY = [  # one level, one res block: ~0.2M parameters per role
    "model.params.network_config.params.model_channels=32",
    "model.params.network_config.params.num_res_blocks=1",
    "model.params.network_config.params.channel_mult=[1]",
]
GAN_TINY = ["model.params.terms.gan.params.head_config.params.in_channels=32"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory):
    """A digits teacher saved like main.py saves it, with a random (nonzero) output layer and an EMA
    that differs from the live weights."""
    torch.manual_seed(0)
    teacher = instantiate_from_config(load_configs([TEACHER_CONFIG], TINY).model)
    with torch.no_grad():
        teacher.model.diffusion_model.out[-1].weight.normal_(0.0, 0.05)
        teacher.model_ema(teacher.model)
        for p in teacher.model.parameters():
            p.add_(0.01)  # live weights now differ from the EMA
    path = str(tmp_path_factory.mktemp("teacher") / "last.ckpt")
    torch.save({"state_dict": teacher.state_dict(), "global_step": 0}, path)
    return path


def build(teacher_ckpt: str, *overrides: str, config: str = DMD_CONFIG):
    cfg = load_configs([config], [*TINY, f"model.params.teacher_ckpt_path={teacher_ckpt}", *overrides])
    return instantiate_from_config(cfg.model, learning_rate=1e-3)


def digits_batch(n: int = 6) -> dict:
    g = torch.Generator().manual_seed(n)
    return {"jpg": torch.rand(n, 1, 8, 8, generator=g) * 2 - 1, "cls": torch.randint(0, 10, (n,), generator=g)}


def network_state(module) -> dict:
    return {k: v.clone() for k, v in module.state_dict().items()}


def equal_states(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_every_role_starts_from_the_teachers_ema_weights(teacher_ckpt):
    engine = build(teacher_ckpt)
    sd = torch.load(teacher_ckpt, weights_only=True)["state_dict"]
    name = "diffusion_model.out.2.weight"
    ema = sd["model_ema." + name.replace(".", "")]
    assert not torch.equal(ema, sd["model." + name])
    for module in (engine.model, engine.real_score.model, engine.fake_score.model):
        torch.testing.assert_close(module.state_dict()[name], ema, rtol=0, atol=0)
    torch.testing.assert_close(engine.conditioner.state_dict()["embedders.0.embedding.weight"],
                               sd["conditioner.embedders.0.embedding.weight"], rtol=0, atol=0)
    assert int(engine.model_ema.num_updates) == 0
    assert torch.equal(engine.model_ema.state_dict()[name.replace(".", "")], ema)


def test_generator_loss_never_reaches_the_critic_and_vice_versa(teacher_ckpt):
    engine = build(teacher_ckpt, *GAN_TINY, config=GAN_CONFIG)
    batch = digits_batch()
    loss, log = engine.generator_loss(batch)
    loss.backward()
    assert {"loss/dmd", "loss/gan_generator", "dmd/normalizer", "dmd/grad_abs_mean"} <= set(log)
    assert all(p.grad is None for p in engine.critic_parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in engine.generator_parameters())
    assert all(p.grad is None for p in engine.real_score.parameters())
    assert all(p.requires_grad for p in engine.critic_parameters())  # restored after the GAN term
    engine.zero_grad(set_to_none=True)
    loss, log = engine.critic_loss(batch)
    loss.backward()
    assert {"loss/critic", "loss/gan_critic"} <= set(log)
    assert all(p.grad is None for p in engine.generator_parameters())
    assert all(p.grad is not None for p in engine.critic_parameters())


def test_regression_term_on_teacher_ode_pairs(teacher_ckpt):
    from sgm.modules.distillation.ode_pairs import generate_ode_pairs

    teacher_cfg = load_configs([TEACHER_CONFIG], [*TINY, f"model.params.ckpt_path={teacher_ckpt}",
                                                  "model.params.sampler_config.params.num_steps=2"])
    teacher = instantiate_from_config(teacher_cfg.model)
    pairs = generate_ode_pairs(teacher, [digits_batch(4)], num_pairs=6, condition_keys=["cls"])
    assert pairs["ode_noise"].shape == pairs["ode_x0"].shape == (6, 1, 8, 8) and pairs["cls"].shape == (6,)
    engine = build(teacher_ckpt, "model.params.terms.regression.target=sgm.modules.distillation.terms.RegressionTerm",
                   "model.params.terms.regression.params.weight=1.0", "model.params.inputs.latent_shape=[1,8,8]")
    loss, log = engine.generator_loss(pairs)  # data-free: no images in the batch
    loss.backward()
    assert log["loss/regression"] > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in engine.generator_parameters())


def test_teacher_weights_can_stay_out_of_checkpoints(teacher_ckpt):
    engine = build(teacher_ckpt, "model.params.init.save_teacher_weights=False")
    checkpoint = {"state_dict": engine.state_dict()}
    engine.on_save_checkpoint(checkpoint)
    assert not any(k.startswith("real_score.") for k in checkpoint["state_dict"])
    assert any(k.startswith("fake_score.") for k in checkpoint["state_dict"])
    engine.on_load_checkpoint(checkpoint)  # filled back from the teacher file's weights
    assert equal_states({k: v for k, v in checkpoint["state_dict"].items() if k.startswith("real_score.")},
                        {f"real_score.{k}": v for k, v in engine.real_score.state_dict().items()})


@pytest.mark.parametrize("name", ["digits_dmd", "digits_dmd_2step", "digits_dmd_4step", "digits_dmd_gan",
                                  "digits_dmd_regression", "digits_dmd_dino"])
def test_every_dmd_config_builds(name):
    cfg = load_configs([os.path.join(ROOT, "configs/dmd", f"{name}.yaml")], [])
    with torch.device("meta"):  # as main.py --dry-run: full size, nothing loaded
        engine = instantiate_from_config(cfg.model)
    steps = {"digits_dmd_2step": 2, "digits_dmd_4step": 4}.get(name, 1)
    assert len(engine.sampler.generator_sigmas()) == steps
    assert ("gan" in engine.terms) == (name == "digits_dmd_gan")


def test_a_missing_teacher_is_a_config_error():
    from sgm.util import ConfigError

    cfg = load_configs([DMD_CONFIG], TINY)
    with pytest.raises(ConfigError, match="teacher_ckpt_path"):
        instantiate_from_config(cfg.model)


def test_bf16_teacher_on_the_available_device(teacher_ckpt):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    engine = build(teacher_ckpt, "model.params.real_score_config.params.dtype=bfloat16").to(device)
    assert engine.real_score.model.diffusion_model.input_blocks[0][0].weight.dtype == torch.bfloat16
    batch = {k: v.to(device) for k, v in digits_batch().items()}
    loss, log = engine.generator_loss(batch)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss) and log["dmd/normalizer"] > 0
    loss, _ = engine.critic_loss(batch)
    assert torch.isfinite(loss)


def fit(engine, batches: int, max_steps: int, ckpt_path: str | None = None, save_to: str | None = None,
        seed: int = 0):
    batch = digits_batch()
    torch.manual_seed(seed)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=max_steps, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, callbacks=[StepSeed(0)])  # as main.py: draws from (seed, rank, step)
    trainer.fit(engine, DataLoader([batch] * batches, batch_size=None), ckpt_path=ckpt_path)
    if save_to is not None:
        trainer.save_checkpoint(save_to)
    return trainer


def test_training_schedule_and_frozen_parts(teacher_ckpt):
    engine = build(teacher_ckpt, "model.params.generator.update_interval=2")
    frozen = {name: network_state(getattr(engine, name)) for name in ("real_score", "conditioner", "first_stage_model")}
    generator, critic = network_state(engine.model), network_state(engine.fake_score)
    trainer = fit(engine, batches=8, max_steps=5)
    assert trainer.global_step == 5  # one step per iteration
    for name, state in frozen.items():
        assert equal_states(state, network_state(getattr(engine, name))), name
    assert not equal_states(generator, network_state(engine.model))
    assert not equal_states(critic, network_state(engine.fake_score))
    gen_opt, critic_opt = trainer.optimizers
    assert [int(s["step"]) for s in gen_opt.state.values()][0] == 3  # steps 0, 2, 4
    assert [int(s["step"]) for s in critic_opt.state.values()][0] == 5
    assert int(engine.model_ema.num_updates) == 3  # EMA after generator steps only


def test_resume_continues_exactly(teacher_ckpt, tmp_path):
    overrides = ("model.params.generator.update_interval=2",)
    straight = build(teacher_ckpt, *overrides)
    fit(straight, batches=10, max_steps=6)
    first = build(teacher_ckpt, *overrides)
    ckpt = str(tmp_path / "step3.ckpt")
    fit(first, batches=10, max_steps=3, save_to=ckpt)
    resumed = build(teacher_ckpt, *overrides)
    trainer = fit(resumed, batches=10, max_steps=6, ckpt_path=ckpt, seed=999)  # draws follow (seed, rank, step)
    assert trainer.global_step == 6
    for name in ("model", "fake_score", "model_ema"):
        a, b = network_state(getattr(straight, name)), network_state(getattr(resumed, name))
        assert equal_states(a, b), name


# ------------------------------------------------------------------------------ main.py
def run_main(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "main.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env=env)


def logged(logdir: str, key: str) -> list[tuple[int, float]]:
    rows = []
    for path in sorted(glob.glob(os.path.join(logdir, "csv", "version_*", "metrics.csv"))):
        with open(path) as f:
            rows += [r for r in csv.DictReader(f) if r.get(key)]
    return [(int(r["step"]), float(r[key])) for r in rows]


@pytest.mark.slow
def test_main_trains_logs_checkpoints_and_resumes(teacher_ckpt, tmp_path):
    common = [*TINY, "data.params.batch_size=8", "model.params.generator.update_interval=2",
              "lightning.callbacks.image_logger.params.batch_frequency=3",
              "lightning.callbacks.image_logger.params.log_images_kwargs.N=4",
              "lightning.trainer.log_every_n_steps=1", "lightning.trainer.enable_progress_bar=False"]
    logroot = str(tmp_path / "logs")
    out = run_main("--base", "configs/dmd/digits_dmd_4step.yaml", "-l", logroot, "-n", "dmd", "--max_steps", "6",
                   f"model.params.teacher_ckpt_path={teacher_ckpt}", *common)
    assert out.returncode == 0, out.stderr[-3000:]
    (logdir,) = glob.glob(os.path.join(logroot, "*_dmd"))
    assert len(logged(logdir, "loss/critic")) == 6 and len(logged(logdir, "loss/dmd")) == 3
    assert logged(logdir, "dmd/normalizer") and logged(logdir, "grad/generator")
    assert glob.glob(os.path.join(logdir, "images", "train", "samples_gs-000003*.png"))
    last = os.path.join(logdir, "checkpoints", "last.ckpt")
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 6
    for prefix in ("model.diffusion_model.", "model_ema.", "real_score.model.", "fake_score.model.", "conditioner."):
        assert any(k.startswith(prefix) for k in ckpt["state_dict"]), prefix
    assert len(ckpt["optimizer_states"]) == 2 and len(ckpt["lr_schedulers"]) == 2
    assert ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"epoch": 0, "batches": 6}]  # the data order resumes

    out = run_main("-r", logdir, "--max_steps", "8", *common)
    assert out.returncode == 0, out.stderr[-3000:]
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 8
    assert [s for s, _ in logged(logdir, "loss/critic")][-2:] == [6, 7]

    # the exported student is a plain DiffusionEngine that samples with the run's 4-step schedule
    export = importlib.util.spec_from_file_location("export_student", os.path.join(ROOT, "scripts/export_student.py"))
    module = importlib.util.module_from_spec(export)
    export.loader.exec_module(module)
    weights = module.main([logdir, "--out", str(tmp_path / "student"), "--dtype", "float32"])
    cfg = load_configs([str(tmp_path / "student" / "inference.yaml")], [f"model.params.ckpt_path={weights}"])
    student = instantiate_from_config(cfg.model)
    assert len(student.sampler.generator_sigmas()) == 4
    cond = student.conditioner({"cls": torch.arange(3)})
    assert student.sample(cond, batch_size=3, shape=(1, 8, 8)).shape == (3, 1, 8, 8)


# ------------------------------------------------------------------------------ configuration surface
@pytest.mark.parametrize("old, new", [
    ("critic_loss_config", "model.params.loss_fn_config"),
    ("gan_generator_weight", "model.params.terms.gan.params.generator_weight"),
    ("regression_weight", "model.params.terms.regression.params.weight"),
    ("critic_grad_clip", "model.params.critic.grad_clip"),
    ("latent_shape", "model.params.inputs.latent_shape"),
    ("allow_random_teacher", "model.params.init.allow_random_teacher"),
])
def test_an_old_flat_key_names_its_new_place(old, new):
    from sgm.util import ConfigError

    cfg = load_configs([DMD_CONFIG], [*TINY, f"model.params.{old}=1"])
    with pytest.raises(ConfigError, match=f"model.params.{old} is now {new.replace('.', '[.]')}"):
        instantiate_from_config(cfg.model)


@pytest.mark.parametrize("group", ["critic", "init", "inputs"])
def test_a_misspelt_option_is_an_error(group):
    from sgm.util import ConfigError

    cfg = load_configs([DMD_CONFIG], [*TINY, f"model.params.{group}.no_such_option=1"])
    with pytest.raises(ConfigError, match=f"model.params.{group}: unknown option.*no_such_option"):
        instantiate_from_config(cfg.model)


def test_the_constructor_groups_its_concerns():
    import inspect

    from sgm.models.dmd import DMDEngine

    named = [p for p in inspect.signature(DMDEngine).parameters.values() if p.kind is not p.VAR_KEYWORD]
    assert len(named) <= 20, [p.name for p in named]


def test_loss_terms_come_unweighted_with_their_weights_and_graph(teacher_ckpt):
    engine = build(teacher_ckpt, *GAN_TINY, config=GAN_CONFIG)
    batch = digits_batch()
    torch.manual_seed(5)
    terms = engine.generator_loss_terms(batch)
    assert set(terms.losses) == {"dmd", "gan"} and terms.weights == {"dmd": 1.0, "gan": 0.1}
    assert all(v.requires_grad and v.ndim == 0 for v in terms.losses.values())
    torch.manual_seed(5)
    loss, _ = engine.generator_loss(batch)
    torch.testing.assert_close(terms.total(), loss)
    torch.testing.assert_close(terms.total(), terms.losses["dmd"] + 0.1 * terms.losses["gan"])
    critic = engine.critic_loss_terms(batch)
    assert set(critic.losses) == {"critic_denoise", "gan_critic"} and critic.weights["gan_critic"] == 0.3
