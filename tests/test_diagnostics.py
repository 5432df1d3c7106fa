"""LossDiagnostics with planted faults: a loss weighted 0, a detached loss, a network that ignores its
condition; a healthy run shows none of them, and sampling changes no training result."""
import importlib.util
import os

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

import pytorch_lightning as pl
from pytorch_lightning.loggers.logger import Logger
from sgm.callbacks.diagnostics import LossDiagnostics
from sgm.config import load_configs
from sgm.diagnostics.probes import DMDProbe
from sgm.diagnostics.rules import verdicts
from sgm.models.dmd import DMDEngine
from sgm.util import instantiate_from_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEACHER_CONFIG = os.path.join(ROOT, "configs/example_training/toy/digits_cond.yaml")
DMD_CONFIG = os.path.join(ROOT, "configs/dmd/digits_dmd.yaml")
GAN_CONFIG = os.path.join(ROOT, "configs/dmd/digits_dmd_gan.yaml")
TINY = ["model.params.network_config.params.model_channels=32", "model.params.network_config.params.num_res_blocks=1",
        "model.params.network_config.params.channel_mult=[1]"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster


class MemoryLogger(Logger):
    def __init__(self):
        super().__init__()
        self.rows: list[tuple[int, dict]] = []

    name, version = "memory", 0

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    def log_metrics(self, metrics, step=None):
        self.rows.append((step, dict(metrics)))

    def series(self) -> dict:
        out = {}
        for step, metrics in self.rows:
            for k, v in metrics.items():
                out.setdefault(k, []).append((step, float(v)))
        return out


class CondNet(nn.Module):
    """F = a x + W y: strongly dependent on the class vector y (or blind to it with use_y=False)."""

    def __init__(self, use_y: bool = True):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(0.1))
        self.lin = nn.Linear(128, 64)
        self.use_y = use_y

    def forward(self, x, timesteps=None, context=None, y=None, **kwargs):
        out = self.a * x
        return out + self.lin(y).view(-1, 1, 8, 8) if self.use_y else out


def template_batches(n_batches: int, n: int = 32) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    templates = torch.randint(0, 2, (10, 1, 8, 8), generator=g).float() * 2 - 1  # one pattern per class
    batches = []
    for _ in range(n_batches):
        cls = torch.randint(0, 10, (n,), generator=g)
        batches.append({"jpg": templates[cls], "cls": cls})
    return batches


def cond_engine(use_y: bool = True):
    torch.manual_seed(0)
    cfg = load_configs([TEACHER_CONFIG], [*TINY, "model.params.use_ema=False"])
    engine = instantiate_from_config(cfg.model, learning_rate=1e-2)
    engine.model.diffusion_model = CondNet(use_y)
    return engine


def fit(engine, batches, callbacks=(), logger=False, max_steps=None):
    torch.manual_seed(0)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=max_steps or len(batches), logger=logger,
                         callbacks=list(callbacks), enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(engine, DataLoader(batches, batch_size=None))
    return trainer


def fault_subjects(series: dict) -> set[str]:
    return {v.subject for v in verdicts(series) if v.level == "FAULT"}


# ------------------------------------------------------------------------------ DiffusionEngine
@pytest.fixture(scope="module")
def healthy_run():
    engine, logger = cond_engine(True), MemoryLogger()
    callback = LossDiagnostics(every_n_steps=10)
    fit(engine, template_batches(60), [callback], logger)
    return logger.series(), engine


def test_healthy_run_uses_its_condition_and_shows_no_fault(healthy_run):
    series, _ = healthy_run
    assert [s for s, _ in series["grad/diffusion"]] == [0, 10, 20, 30, 40, 50]  # sampled steps only
    assert {"grad/total", "grad/diffusion_ratio", "grad/diffusion_detached", "step/network_update_ratio",
            "loss/cond_gain"} <= set(series)
    assert any(k.startswith("loss/sigma_") for k in series)
    gains = [v for _, v in series["loss/cond_gain"]]
    assert gains[-1] > 0.1 and gains[-1] > 0.1 * series["loss/cond_true"][-1][1]
    assert all(v > 0 for _, v in series["grad/diffusion"]) and series["grad/diffusion_ratio"][-1][1] == 1.0
    assert all(0 < v < 1 for _, v in series["step/network_update_ratio"])
    assert fault_subjects(series) == set()


def test_a_network_that_ignores_its_condition_shows_zero_gain():
    engine, logger = cond_engine(use_y=False), MemoryLogger()
    fit(engine, template_batches(6), [LossDiagnostics(every_n_steps=2)], logger)
    series = logger.series()
    assert all(v == 0.0 for _, v in series["loss/cond_gain"])
    text = [str(v) for v in verdicts(series)]
    assert any("loss/cond_gain" in t and "ignores its conditioning" in t for t in text), text


def fit_with_and_without_diagnostics(make_engine, batches) -> LossDiagnostics:
    """Two fresh engines trained on `batches`, one with LossDiagnostics every 2 steps: weights must be equal."""
    plain, diagnosed = make_engine(), make_engine()
    fit(plain, batches)
    callback = LossDiagnostics(every_n_steps=2)
    fit(diagnosed, batches, [callback], MemoryLogger())
    for (name, a), (_, b) in zip(plain.state_dict().items(), diagnosed.state_dict().items()):
        assert torch.equal(a, b), name
    return callback


def test_sampling_changes_no_training_result():
    callback = fit_with_and_without_diagnostics(cond_engine, template_batches(7))
    assert callback.last_metrics  # it did sample


# ------------------------------------------------------------------------------ DMDEngine
def dmd_engine(*overrides: str, config: str = DMD_CONFIG) -> DMDEngine:
    torch.manual_seed(0)
    cfg = load_configs([config], [*TINY, "model.params.init.allow_random_teacher=True", "model.params.use_ema=False",
                                  *overrides])
    engine = instantiate_from_config(cfg.model, learning_rate=1e-3)
    with torch.no_grad():  # zero-initialised output layers would make every role predict c_skip x
        for scale, module in ((0.3, engine.real_score.model), (0.1, engine.fake_score.model), (0.1, engine.model)):
            module.diffusion_model.out[-1].weight.normal_(0.0, scale)
    return engine


def digits_batch(n: int = 8) -> dict:
    return template_batches(1, n)[0]


def as_series(metrics: dict) -> dict:
    return {k: [(0, float(v))] * 3 for k, v in metrics.items()}


def test_dmd_weight_zero_and_gan_terms():
    engine = dmd_engine("model.params.dmd_weight=0", "model.params.terms.gan.params.head_config.params.in_channels=32", config=GAN_CONFIG)
    metrics = DMDProbe(teacher_samples=8, teacher_steps=2)(engine, digits_batch()).metrics
    assert metrics["grad/dmd"] == 0.0 and metrics["grad/dmd_detached"] == 0.0
    assert metrics["grad/gan"] > 0 and metrics["grad/gan_ratio"] == pytest.approx(1.0, rel=1e-4)
    assert metrics["grad/critic_denoise"] > 0 and metrics["grad/gan_critic"] > 0
    text = [str(v) for v in verdicts(as_series(metrics))]
    assert any(t.startswith("FAULT") and "grad/dmd is 0: loss weighted 0 or detached" in t for t in text), text


class DetachedDMD(DMDEngine):
    """Planted fault: the generator's output reaches the DMD loss without its graph."""

    def rollout(self, inputs, stream):
        x0, exit_step = super().rollout(inputs, stream)
        return x0.detach(), exit_step


def test_a_detached_dmd_loss_is_flagged():
    engine = dmd_engine()
    engine.__class__ = DetachedDMD
    metrics = DMDProbe(teacher_samples=8, teacher_steps=2)(engine, digits_batch()).metrics
    assert metrics["grad/dmd_detached"] == 1.0 and metrics["grad/dmd"] == 0.0
    assert "dmd" in fault_subjects(as_series(metrics))


def test_dmd_run_logs_statistics_images_and_a_verdict(tmp_path):
    engine, logger = dmd_engine("model.params.generator.update_interval=1"), MemoryLogger()
    callback = LossDiagnostics(every_n_steps=2, image_every_n_steps=2, max_images=4, teacher_samples=8,
                               teacher_steps=2)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=3, logger=logger, callbacks=[callback],
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=str(tmp_path))
    torch.manual_seed(0)
    trainer.fit(engine, DataLoader([digits_batch()] * 3, batch_size=None))
    metrics = callback.last_metrics
    for key in ("grad/dmd", "grad/dmd_ratio", "grad/generator_total", "grad/critic_denoise", "grad/total",
                "step/generator_update_ratio", "step/critic_update_ratio", "dmd/normalizer_mean", "dmd/grad_abs_mean",
                "dmd/gen_mean", "dmd/gen_std", "dmd/teacher_std", "dmd/gen_std_ratio", "critic/cond_gain",
                "dmd/cond_gain"):
        assert key in metrics, key
    assert any(k.startswith("dmd/gap_sigma_") for k in metrics)
    assert any(k.startswith("critic/loss_sigma_") for k in metrics)
    assert metrics["grad/dmd"] > 0 and metrics["step/generator_update_ratio"] > 0
    assert sorted({s for s, m in logger.rows if "grad/dmd" in m}) == [0, 2]
    assert [os.path.basename(p) for p in callback.saved] == ["dmd_gs-000000.png", "dmd_gs-000002.png"]
    assert all(os.path.dirname(p).endswith(os.path.join("images", "diagnostics")) for p in callback.saved)


# ------------------------------------------------------------------------------ scripts/diagnose.py
def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "scripts", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_csv(run_dir, rows: list[tuple[int, dict]]):
    from pytorch_lightning.loggers import CSVLogger

    logger = CSVLogger(save_dir=str(run_dir), name="csv")
    for step, metrics in rows:
        logger.log_metrics(metrics, step=step)
    logger.save()


def test_diagnose_script_prints_verdicts_writes_a_plot_and_compares(healthy_run, tmp_path, capsys):
    series, _ = healthy_run
    rows = {}
    for key, values in series.items():
        for step, value in values:
            rows.setdefault(step, {})[key] = value
    write_csv(tmp_path / "healthy", sorted(rows.items()))
    ablated = {s: m | {"loss/cond_gain": 0.0} for s, m in rows.items()}  # as if the condition were dropped
    write_csv(tmp_path / "ablated", sorted(ablated.items()))
    diagnose = load_script("diagnose")
    assert diagnose.main([str(tmp_path / "healthy")]) == 0
    out = capsys.readouterr().out
    assert "OK    diffusion" in out and "FAULT" not in out
    assert os.path.getsize(tmp_path / "healthy" / "diagnostics.png") > 1000
    assert diagnose.main([str(tmp_path / "ablated"), "--compare", str(tmp_path / "healthy"), "--no-plot"]) == 0
    out = capsys.readouterr().out
    assert "ignores its conditioning" in out and "loss/cond_gain" in out.split("moved")[1]


# ------------------------------------------------------------------------------ the probe table and its options
def test_one_table_chooses_the_probe_and_options_are_typed():
    from sgm.diagnostics.flow import FlowProbe
    from sgm.diagnostics.probes import DiffusionProbe
    from sgm.diagnostics.registry import make_probe, probe_class_for
    from sgm.diagnostics.vae import VAEProbe
    from sgm.models.autoencoder_training import TrainableAutoencodingEngine
    from sgm.models.diffusion import DiffusionEngine
    from sgm.util import ConfigError

    assert probe_class_for(DMDEngine) is DMDProbe and probe_class_for(DiffusionEngine) is DiffusionProbe
    assert probe_class_for(TrainableAutoencodingEngine) is VAEProbe and probe_class_for(nn.Module) is None
    probe = make_probe(cond_engine(), sigma_bins=[0.0, 1.0, 100.0], teacher_steps=3, endpoint_rows=None)
    assert type(probe) is DiffusionProbe and probe.sigma_bins == (0.0, 1.0, 100.0)  # takes only its own options
    with pytest.raises(TypeError):
        DMDProbe(endpoint_steps=(2,))  # no option bag: an option the probe does not have is an error
    with pytest.raises(TypeError):
        FlowProbe(teacher_steps=3)
    with pytest.raises(ConfigError, match="teacher_step"):  # misspelt in a config
        instantiate_from_config({"target": "sgm.callbacks.diagnostics.LossDiagnostics", "params": {"teacher_step": 3}})


def test_the_dmd_probe_runs_each_loss_once_for_all_its_terms():
    engine = dmd_engine("model.params.terms.gan.params.head_config.params.in_channels=32", config=GAN_CONFIG)
    calls = []
    rollout = engine.rollout
    engine.rollout = lambda inputs, stream: calls.append(stream) or rollout(inputs, stream)
    metrics = DMDProbe(teacher_samples=8, teacher_steps=2)(engine, digits_batch()).metrics
    assert calls == [0, 1]  # one generator forward, one critic forward: no term is re-run to isolate it
    assert all(metrics[f"grad/{t}"] > 0 for t in ("dmd", "gan", "critic_denoise", "gan_critic"))
