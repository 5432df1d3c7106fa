"""KL autoencoder training and its diagnostics: the KL in closed form, a planted kl_weight = 0, the
notes' KL-on vs KL-off trend, the posterior rules on made-up series, and main.py end to end."""
import glob
import math
import os
import subprocess
import sys

import pytest
import torch

from sgm.callbacks.diagnostics import LossDiagnostics
from sgm.config import load_configs
from sgm.diagnostics.registry import make_probe
from sgm.diagnostics.rules import kl_ablation_verdict, read_metrics, verdicts
from sgm.diagnostics.vae import VAEProbe
from sgm.models.autoencoder import AutoencodingEngine
from sgm.models.autoencoder_training import TrainableAutoencodingEngine
from sgm.modules.autoencoding.losses import KLReconstructionLoss
from sgm.modules.distributions.distributions import DiagonalGaussianDistribution
from sgm.util import ConfigError, instantiate_from_config
from test_diagnostics import MemoryLogger, as_series, fit, fit_with_and_without_diagnostics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VAE_CONFIG = "configs/example_training/toy/digits_vae.yaml"
ENCODER = "model.params.encoder_config.params."
TINY = [f"{ENCODER}ch_mult=[1]", f"{ENCODER}z_channels=1"]  # no downsampling: 1 x 8 x 8 latent
KL_WEIGHT = "model.params.loss_config.params.kl_weight"

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster


def vae_config(*overrides: str):
    return load_configs([os.path.join(ROOT, VAE_CONFIG)], [*TINY, *overrides])


def vae(*overrides: str) -> TrainableAutoencodingEngine:
    torch.manual_seed(0)
    return instantiate_from_config(vae_config(*overrides).model, learning_rate=2e-3)


def digit_batches(n_batches: int, n: int = 32) -> list[dict]:
    from sgm.data.digits import DigitsDataset

    images = DigitsDataset("train").images  # (N, 1, 8, 8) in [-1, 1]
    g = torch.Generator().manual_seed(0)
    return [{"jpg": images[torch.randint(0, len(images), (n,), generator=g)]} for _ in range(n_batches)]


# ------------------------------------------------------------------------------ the loss
def test_kl_term_is_the_closed_form_of_mu_and_logvar():
    mu = torch.tensor([[[[0.5, -1.0]], [[0.0, 2.0]]], [[[0.0, 0.0]], [[0.0, 0.0]]]])  # (2, 2, 1, 2)
    logvar = torch.tensor([[[[0.0, math.log(4.0)]], [[-1.0, 0.5]]], [[[0.0, 0.0]], [[0.0, 0.0]]]])
    posterior = DiagonalGaussianDistribution(torch.cat([mu, logvar], dim=1))  # moments (2, 4, 1, 2)
    # row 0: ½ Σ (mu² + e^logvar - 1 - logvar); row 1 is N(0, I) itself: 0
    row0 = 0.5 * sum(m * m + math.exp(v) - 1 - v for m, v in
                     zip([0.5, -1.0, 0.0, 2.0], [0.0, math.log(4.0), -1.0, 0.5]))
    expected = (row0 + 0.0) / 2  # summed per row, averaged over rows
    assert KLReconstructionLoss.kl(posterior).item() == pytest.approx(expected, rel=1e-6)
    reference = torch.distributions.kl_divergence(torch.distributions.Normal(mu, (0.5 * logvar).exp()),
                                                  torch.distributions.Normal(0.0, 1.0))
    assert KLReconstructionLoss.kl(posterior).item() == pytest.approx(reference.flatten(1).sum(1).mean().item(),
                                                                      rel=1e-6)

    x, x_rec = torch.zeros(2, 1, 2, 2), torch.full((2, 1, 2, 2), 0.5)
    l1, l2 = KLReconstructionLoss(kl_weight=0.1), KLReconstructionLoss(kl_weight=0.1, rec_loss="l2")
    assert l1.reconstruction(x, x_rec).item() == pytest.approx(4 * 0.5)  # 4 pixels per row
    assert l2.reconstruction(x, x_rec).item() == pytest.approx(4 * 0.25)
    total, terms = l2(x, x_rec, posterior)
    assert total.item() == pytest.approx(1.0 + 0.1 * expected, rel=1e-6)
    assert set(terms) == {"rec", "kl"} and l2.weights() == {"rec": 1.0, "kl": 0.1}
    with pytest.raises(ValueError, match="rec_loss 'l3'"):
        KLReconstructionLoss(rec_loss="l3")


def test_only_a_gaussian_posterior_trains():
    params = dict(vae_config().model.params)
    params["regularizer_config"] = {"target": "sgm.modules.autoencoding.regularizers.IdentityRegularizer"}
    with pytest.raises(ConfigError, match="must be sgm.modules.autoencoding.regularizers.DiagonalGaussianRegularizer"):
        TrainableAutoencodingEngine(**params)


# ------------------------------------------------------------------------------ the probe
def test_probe_isolates_rec_and_kl_and_flags_a_kl_weighted_zero():
    batch = digit_batches(1)[0]
    healthy = vae()
    probe = make_probe(healthy)
    assert isinstance(probe, VAEProbe) and probe.default_groups == {"encoder": "encoder.", "decoder": "decoder."}
    metrics = probe(healthy, batch).metrics
    assert metrics["grad/rec"] > 0 and metrics["grad/kl"] > 0 and metrics["grad/kl_detached"] == 0.0
    assert metrics["grad/autoencoder_total"] == pytest.approx(metrics["grad/total"])
    for key in ("mu/abs_mean", "mu/rms", "logvar/mean", "std/mean", "std/min", "std/max", "z_init/mean",
                "z_init/var", "z_init/std_per_dim_mean", "kl/per_dim"):
        assert math.isfinite(metrics[key]), key
    assert metrics["std/min"] <= metrics["std/mean"] <= metrics["std/max"]

    planted = vae(f"{KL_WEIGHT}=0.0")  # the same weights: only the KL weight differs
    off = probe(planted, batch).metrics
    assert off["grad/kl"] == 0.0 and off["grad/kl_detached"] == 0.0 and off["grad/kl_ratio"] == 0.0
    assert off["grad/rec"] == pytest.approx(metrics["grad/rec"], rel=1e-5)  # same draw, same reconstruction
    assert off["std/mean"] == metrics["std/mean"]  # the statistics do not depend on the weight
    text = [str(v) for v in verdicts(as_series(off))]
    assert any(t.startswith("FAULT kl: grad/kl is 0: loss weighted 0 or detached") for t in text), text

    weak = probe(vae(f"{KL_WEIGHT}=1e-6"), batch).metrics
    text = [str(v) for v in verdicts(as_series(weak))]
    assert any(t.startswith("WARN  kl:") and "kl term too weak" in t for t in text), text


def test_probe_sees_the_steps_own_draw_and_changes_no_training_result():
    batches = digit_batches(5)
    callback = fit_with_and_without_diagnostics(vae, batches)
    assert callback.last_metrics and "step/encoder_update_ratio" in callback.last_metrics

    engine, batch = vae(), batches[0]
    torch.manual_seed(7)
    z_probe = VAEProbe()(engine, batch).metrics["z_init/mean"]
    torch.manual_seed(7)  # what the training step would draw from the same state
    assert engine.reconstruct(batch).z.mean().item() == pytest.approx(z_probe, abs=1e-7)


# ------------------------------------------------------------------------------ the notes' KL trend
@pytest.fixture(scope="module")
def kl_on_and_off_runs():
    batches = digit_batches(30)
    runs, threads = {}, torch.get_num_threads()
    torch.set_num_threads(1)  # the one_thread fixture is function-scoped
    for name, weight in (("on", 1.0), ("off", 0.0)):
        logger = MemoryLogger()
        fit(vae(f"{KL_WEIGHT}={weight}"), batches, [LossDiagnostics(every_n_steps=5)], logger)
        runs[name] = logger.series()
    torch.set_num_threads(threads)
    return runs


def test_with_the_kl_on_std_goes_to_one_and_mu_shrinks_relative_to_kl_off(kl_on_and_off_runs):
    on, off = kl_on_and_off_runs["on"], kl_on_and_off_runs["off"]
    last = lambda series, key: series[key][-1][1]
    assert on["std/mean"][0][1] == off["std/mean"][0][1]  # one initialisation, one first batch
    # KL off: sigma shrinks and mu spreads; KL on: sigma stays near 1 and mu stays small
    assert last(off, "std/mean") < 0.8 * off["std/mean"][0][1]
    assert abs(math.log(last(on, "std/mean"))) < 0.5 * abs(math.log(last(off, "std/mean")))
    assert last(on, "mu/abs_mean") < 0.7 * last(off, "mu/abs_mean")
    assert abs(last(on, "logvar/mean")) < abs(last(off, "logvar/mean"))
    assert last(on, "kl/per_dim") < last(off, "kl/per_dim")
    assert str(kl_ablation_verdict(on, off)).startswith("OK    kl ablation: the KL acts")
    assert str(kl_ablation_verdict(off, on)).startswith("OK")  # either order
    assert kl_ablation_verdict(on, on) is None  # needs one run with the KL off


# ------------------------------------------------------------------------------ rules on made-up series
def made_up(steps: int = 8, **curves) -> dict:
    """{metric: [(step, value)]}: a constant, or a list of values over the steps."""
    series = {"grad/kl": 1.0, "grad/kl_ratio": 0.2, "grad/rec": 4.0, "grad/rec_ratio": 0.98, "std/mean": 0.6,
              "std/min": 0.2, "mu/rms": 0.8, "mu/abs_mean": 0.6, "logvar/mean": -1.0, "kl/per_dim": 0.5,
              "mu/active_fraction": 1.0} | curves
    return {k: [(i * 10, v[i] if isinstance(v, list) else v) for i in range(steps)] for k, v in series.items()}


def subjects(series: dict, level: str) -> dict[str, str]:
    return {v.subject: v.message for v in verdicts(series) if v.level == level}


def test_posterior_rules():
    assert subjects(made_up(), "WARN") == {} and "posterior" in subjects(made_up(), "OK")

    shrunk = subjects(made_up(**{"std/mean": 0.01, "std/min": 0.001}), "WARN")
    assert "std/mean = 0.01 < 0.05" in shrunk["std/mean"] and "raise kl_weight" in shrunk["std/mean"]
    off = subjects(made_up(**{"std/mean": 0.01, "grad/kl": 0.0, "grad/kl_ratio": 0.0}), "WARN")
    assert "the KL term is off" in off["std/mean"]

    collapsed = subjects(made_up(**{"kl/per_dim": 0.001, "std/mean": 0.99, "mu/rms": 0.01}), "WARN")
    assert collapsed["kl/per_dim"].startswith("posterior collapse: KL = 0.001 nats per latent element")

    rising = [0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2]
    drifting = made_up(**{"mu/rms": rising, "logvar/mean": [-r for r in rising]})
    trend = subjects(drifting, "WARN")["kl trend"]
    assert "mu/rms 0.9 -> 1.2" in trend and "logvar/mean -0.9 -> -1.2" in trend
    settled = made_up(**{"mu/rms": rising[:4] + [0.8] * 4, "logvar/mean": [-r for r in rising[:4]] + [-0.8] * 4})
    assert "kl trend" not in subjects(settled, "WARN")  # drift early in the run only: warm-up
    assert "kl trend" not in subjects(made_up(**{"mu/rms": rising, "logvar/mean": [-r for r in rising],
                                                 "grad/kl": 0.0, "grad/kl_ratio": 0.0}), "WARN")  # KL off


# ------------------------------------------------------------------------------ main.py end to end
@pytest.mark.slow
def test_main_trains_the_digits_vae_with_kl_diagnostics(tmp_path):
    logroot = str(tmp_path / "logs")
    args = ["--base", VAE_CONFIG, "configs/diagnostics/loss_diagnostics.yaml", "-t", "-l", logroot, "-n", "vae",
            "--max_steps", "4", "data.params.batch_size=16",
            "lightning.callbacks.loss_diagnostics.params.every_n_steps=2",
            "lightning.callbacks.image_logger.params.batch_frequency=4", "lightning.trainer.log_every_n_steps=1",
            "lightning.trainer.enable_progress_bar=False", *TINY]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # a tiny model: one thread is faster on a busy machine
    out = subprocess.run([sys.executable, "main.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    (logdir,) = glob.glob(os.path.join(logroot, "*_vae"))
    series = read_metrics(logdir)
    for key in ("mu/abs_mean", "mu/rms", "logvar/mean", "std/mean", "std/min", "std/max", "z_init/mean", "z_init/var",
                "z_init/std_per_dim_mean", "grad/kl", "grad/rec", "grad/kl_ratio", "grad/total",
                "step/encoder_update_ratio", "step/decoder_update_ratio", "loss", "loss/rec", "loss/kl", "rec/mse"):
        assert key in series, key
    assert [s for s, _ in series["grad/kl"]] == [0, 2] and all(v > 0 for _, v in series["grad/kl"])
    for kind in ("inputs", "reconstructions", "samples"):
        assert glob.glob(os.path.join(logdir, "images", "train", f"{kind}_gs-000004*.png")), kind

    # the checkpoint loads into the frozen first stage (same state-dict layout) and encodes alike
    params = vae_config().model.params
    frozen = AutoencodingEngine(encoder_config=params.encoder_config, decoder_config=params.decoder_config,
                                regularizer_config={"target": "sgm.modules.autoencoding.regularizers."
                                                              "DiagonalGaussianRegularizer",
                                                    "params": {"sample": False}},
                                ckpt_path=os.path.join(logdir, "checkpoints", "last.ckpt"))
    trained = vae(f"model.params.ckpt_path={os.path.join(logdir, 'checkpoints', 'last.ckpt')}")
    x = digit_batches(1, 4)[0]["jpg"]
    assert torch.allclose(frozen.encode(x), trained.posterior(x).mode())


def test_main_refuses_to_train_a_frozen_first_stage(tmp_path, capsys):
    import importlib.util

    from omegaconf import OmegaConf

    config = vae_config()
    config.model.target = "sgm.models.autoencoder.AutoencodingEngine"  # upstream's name: frozen here
    for key in ("optimizer_config", "input_key", "lr_g_factor"):
        config.model.params.pop(key)
    path = tmp_path / "frozen.yaml"
    OmegaConf.save(config, path)
    spec = importlib.util.spec_from_file_location("main", os.path.join(ROOT, "main.py"))
    main = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(main)
    with pytest.raises(SystemExit) as exit_info:
        main.main(["--base", str(path), "-t", "-l", str(tmp_path / "logs"), "model.base_learning_rate=null"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "not a LightningModule" in err and "TrainableAutoencodingEngine" in err
