"""Rectified flow in the DiffusionEngine and its diagnostics (sgm/diagnostics/flow.py).

The closed-form toy: per class c, data x0 ~ N(m_c, s^2) per pixel, independent of eps ~ N(0, 1). Along
x_t = (1 - t) x0 + t eps the exact velocity E[eps - x0 | x_t] is affine in x_t,

    v*(x_t, t) = -m + (t - (1 - t) s^2) / ((1 - t)^2 s^2 + t^2) (x_t - (1 - t) m),

and its flow from t = 1 to 0 maps the noise x_1 to m + s x_1. A network planted with v* must look healthy
to FlowProbe; the same network scaled by 0.5, with its sign flipped, or blind to its class must be flagged.
"""
import os

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

import sgm  # noqa: F401  (torchvision shim before Lightning)
import pytorch_lightning as pl
from diffusion_helpers import cfg
from sgm.callbacks.diagnostics import LossDiagnostics
from sgm.config import load_configs
from sgm.diagnostics.flow import FlowProbe, euler_t
from sgm.diagnostics.probes import DiffusionProbe
from sgm.diagnostics.registry import make_probe
from sgm.diagnostics.rules import read_metrics, verdicts
from sgm.modules.diffusionmodules.denoiser import Denoiser
from sgm.modules.diffusionmodules.denoiser_scaling import sigma_to_t
from sgm.modules.diffusionmodules.discretizer import RectifiedFlowDiscretization
from sgm.modules.diffusionmodules.sigma_sampling import LogitNormalTSampling, UniformTSampling
from sgm.util import append_dims, instantiate_from_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLOW_CONFIG = os.path.join(ROOT, "configs/example_training/toy/digits_flow.yaml")
VIDEO_CONFIG = os.path.join(ROOT, "configs/example_training/toy/moving_digits_svd.yaml")
TINY = ["model.params.network_config.params.model_channels=32", "model.params.network_config.params.num_res_blocks=1",
        "model.params.network_config.params.channel_mult=[1]", "model.params.use_ema=False"]
S = 0.5  # per-pixel std of the toy data around its class mean
QUICK = {"endpoint_steps": (4, 8, 16), "endpoint_ref_steps": 32, "endpoint_rows": 16}  # cheap endpoints

pytestmark = pytest.mark.usefixtures("one_thread")


def exact_velocity(x_t: torch.Tensor, t: torch.Tensor, m: torch.Tensor | float, s: float) -> torch.Tensor:
    """E[eps - x0 | x_t] for x0 ~ N(m, s^2), eps ~ N(0, 1), x_t = (1 - t) x0 + t eps, per dimension."""
    t = append_dims(t, x_t.ndim)  # (N, 1, ...)
    gain = (t - (1 - t) * s**2) / ((1 - t) ** 2 * s**2 + t**2)
    return -m + gain * (x_t - (1 - t) * m)


# ------------------------------------------------------------------------------ sigma sampling, weighting
def test_flow_weighting_makes_the_loss_the_velocity_mse():
    loss = instantiate_from_config(cfg("loss.StandardDiffusionLoss",
                                       sigma_sampler_config=cfg("sigma_sampling.UniformTSampling"),
                                       loss_weighting_config=cfg("loss_weighting.RectifiedFlowWeighting")))
    denoiser = Denoiser(cfg("denoiser_scaling.RectifiedFlowScaling"))
    x0 = torch.randn(64, 1, 4, 4)
    F_out = torch.randn(64, 1, 4, 4)  # any network output, read as a velocity

    def network(x_in, c_noise, cond):
        return F_out

    sigma, eps = loss.draw(x0)  # (N,), (N, ...)
    got = loss.loss(lambda x, s, c: denoiser(network, x, s, c), x0, sigma, eps, {})  # (N,) lambda ||D - x0||^2
    want = (F_out - (eps - x0)).pow(2).flatten(1).mean(dim=1)  # ||F - v||^2, v = eps - x0
    assert sigma.min() > 0 and sigma_to_t(sigma).max() < 1
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_uniform_t_sampling_contract():
    sampler = UniformTSampling(t_min=0.01, t_max=0.99)
    torch.testing.assert_close(sampler(3, rand=torch.tensor([0.5, 0.0, 1.0])),
                               torch.tensor([1.0, 0.01 / 0.99, 99.0]))  # sigma = t / (1 - t), t clamped
    sigma = sampler(20000, generator=torch.Generator().manual_seed(0))
    t = sigma_to_t(sigma.double())
    assert sigma.shape == (20000,) and sigma.dtype == torch.float32
    assert abs(t.mean() - 0.5) < 0.01 and abs(t.var() - 1 / 12) < 0.003  # U(0, 1)
    again = sampler(20000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(sigma, again)


def test_logit_normal_t_sampling_contract():
    sampler = LogitNormalTSampling(loc=0.5, scale=0.8)
    assert sampler(1, rand=torch.zeros(1)).item() == pytest.approx(torch.tensor(0.5).exp().item(), rel=1e-5)
    t = sigma_to_t(sampler(20000, generator=torch.Generator().manual_seed(0)).double())
    logit = (t / (1 - t)).log()
    assert abs(logit.mean() - 0.5) < 0.03 and abs(logit.std() - 0.8) < 0.03
    assert t.min() >= 1e-4 - 1e-9 and t.max() <= 1 - 1e-4 + 1e-9
    with pytest.raises(ValueError, match="LogitNormalTSampling needs 0 < t_min < t_max < 1"):
        LogitNormalTSampling(t_max=1.0)


# ------------------------------------------------------------------------------ discretization, sampling
def test_uniform_t_discretization_contract():
    disc = RectifiedFlowDiscretization(t_max=0.8)
    want = torch.tensor([4.0, 1.5, 2 / 3, 0.25])  # t = 0.8, 0.6, 0.4, 0.2 as sigma = t / (1 - t)
    torch.testing.assert_close(disc(4), torch.cat([want, torch.zeros(1)]))
    torch.testing.assert_close(disc(4, do_append_zero=False), want)
    torch.testing.assert_close(disc(4, flip=True), torch.cat([torch.zeros(1), want.flip(0)]))
    t = sigma_to_t(RectifiedFlowDiscretization()(25).double())
    torch.testing.assert_close(t[:-1] - t[1:], torch.full((25,), (1 - 1e-4) / 25, dtype=torch.float64))  # uniform dt
    with pytest.raises(ValueError, match="RectifiedFlowDiscretization needs a number of steps"):
        disc(None)
    with pytest.raises(ValueError, match="0 < t_max < 1"):
        RectifiedFlowDiscretization(t_max=1.0)


def test_euler_sampler_on_the_uniform_t_grid_reaches_the_data_distribution():
    """EulerEDMSampler in sigma with RectifiedFlowScaling = Euler in t: noise -> N(m, s^2)."""
    m = 1.5
    sampler = instantiate_from_config(cfg("sampling.EulerEDMSampler", num_steps=50,
                                          discretization_config=cfg("discretizer.RectifiedFlowDiscretization")))
    denoiser = Denoiser(cfg("denoiser_scaling.RectifiedFlowScaling"))

    def network(x_t, c_noise, cond):  # F = v*, c_noise = t
        return exact_velocity(x_t, c_noise, m, S)

    x = sampler(lambda x, sigma, c: denoiser(network, x, sigma, c), torch.randn(4000, 2), {})
    assert abs(x.mean() - m) < 0.03 and abs(x.std() - S) < 0.02


def test_exact_flow_maps_noise_to_mean_plus_s_noise():
    x_1 = torch.randn(256, 3, dtype=torch.float64)
    exact = 2.0 + S * x_1

    def error(steps: int) -> float:
        x_0 = euler_t(lambda x, t: exact_velocity(x, t.expand(x.shape[0]), 2.0, S), x_1, steps)
        return float((x_0 - exact).abs().max())

    assert error(128) < 0.03 and error(256) < 0.6 * error(128)  # first-order convergence to m + s x_1


# ------------------------------------------------------------------------------ the probe on the toy
class GaussianFlowNet(nn.Module):
    """Planted velocity network for per-class Gaussian data (class read from the one-hot embedding)."""

    def __init__(self, means: torch.Tensor, scale: float = 1.0, use_class: bool = True):
        super().__init__()
        self.register_buffer("means", means)  # (10, 1, 8, 8) m_c
        self.scale = scale  # planted fault: v = scale * v*
        self.use_class = use_class  # planted fault: the class mean replaced by the mean over classes
        self.dummy = nn.Parameter(torch.zeros(()))  # something for the gradient probe to reach

    def forward(self, x, timesteps=None, context=None, y=None, **kwargs):
        m = self.means[y[:, :10].argmax(dim=1)] if self.use_class else self.means.mean(dim=0, keepdim=True)
        return self.scale * exact_velocity(x, timesteps, m, S) + self.dummy * x


def toy_engine(**net_params):
    torch.manual_seed(0)
    engine = instantiate_from_config(load_configs([FLOW_CONFIG], TINY).model)
    g = torch.Generator().manual_seed(1)
    means = 4.0 * (torch.randint(0, 2, (10, 1, 8, 8), generator=g).float() * 2 - 1)  # one pattern per class
    with torch.no_grad():
        engine.conditioner.embedders[0].embedding.weight.copy_(torch.eye(10, 128))  # y[:, :10] is one-hot
    engine.model.diffusion_model = GaussianFlowNet(means, **net_params)
    return engine


def toy_batch(engine, n: int = 256) -> dict:
    g = torch.Generator().manual_seed(2)
    cls = torch.randint(0, 10, (n,), generator=g)
    x0 = engine.model.diffusion_model.means[cls] + S * torch.randn(n, 1, 8, 8, generator=g)
    return {"jpg": x0, "cls": cls}


def as_series(metrics: dict) -> dict:
    return {k: [(step, float(v)) for step in (0, 1, 2)] for k, v in metrics.items()}


def judged(metrics: dict) -> dict[str, str]:
    return {v.subject: v.level for v in verdicts(as_series(metrics)) if v.subject.startswith("flow/")}


@pytest.fixture(scope="module")
def exact_metrics():
    engine = toy_engine()
    assert isinstance(make_probe(engine), FlowProbe)
    return FlowProbe(**QUICK)(engine, toy_batch(engine)).metrics


def test_exact_field_looks_healthy(exact_metrics):
    m = exact_metrics
    assert m["flow/cos"] > 0.95 and m["flow/nmse"] < 0.1
    assert m["flow/speed_ratio"] == pytest.approx(m["flow/cos"], abs=0.02)  # calibrated: speed_ratio ≈ cos
    assert m["flow/speed_ratio"] == pytest.approx(1.0, abs=0.05)
    assert m["flow/cond_gain_cos"] > 0.1
    assert {f"flow/cos_t{b}" for b in range(10)} <= set(m) and {f"flow/nmse_t{b}" for b in range(10)} <= set(m)
    rmse = [m[f"flow/endpt_rmse@{k}"] for k in (4, 8, 16)]
    assert rmse[0] > rmse[1] > rmse[2] > 0 and rmse[2] < 0.5 * rmse[0]  # Euler error ~ 1/K
    assert m["flow/endpt_std_ratio@32"] == pytest.approx(1.0, abs=0.15)  # endpoints spread like the data
    assert m["grad/diffusion"] > 0 and "loss/cond_gain" in m  # DiffusionProbe's metrics, once
    assert set(judged(m).values()) == {"OK"}, judged(m)


@pytest.mark.parametrize("net_params, subject, level", [
    ({"scale": 0.5}, "flow/speed_ratio", "FAULT"),  # v scaled: same direction, half the speed
    ({"scale": -1.0}, "flow/cos", "FAULT"),  # sign error: x0 - eps
    ({"use_class": False}, "flow/cond_gain_cos", "FAULT"),  # class ignored
])
def test_planted_faults_are_flagged(exact_metrics, net_params, subject, level):
    engine = toy_engine(**net_params)
    metrics = FlowProbe(endpoint_steps=(4,), endpoint_ref_steps=8, endpoint_rows=4)(engine, toy_batch(engine)).metrics
    assert judged(metrics).get(subject) == level, judged(metrics)
    if net_params.get("scale") == 0.5:
        assert metrics["flow/cos"] == pytest.approx(exact_metrics["flow/cos"], abs=1e-4)  # cos cannot see a scale
        assert metrics["flow/speed_ratio"] == pytest.approx(0.5 * exact_metrics["flow/speed_ratio"], abs=1e-4)


def test_flow_probe_leaves_the_global_rng_alone():
    engine = toy_engine()
    state = torch.get_rng_state()
    FlowProbe(endpoint_steps=(2,), endpoint_ref_steps=4, endpoint_rows=4)(engine, toy_batch(engine, 32))
    assert torch.equal(state, torch.get_rng_state())


def test_endpoint_and_boundary_rules_on_series():
    healthy = {"flow/cos": 0.9, "flow/speed_ratio": 0.9, "flow/endpt_rmse@8": 0.2, "flow/endpt_rmse@16": 0.1,
               "flow/endpt_rmse@64": 0.02, "flow/endpt_std_ratio@128": 1.0,
               **{f"flow/nmse_t{b}": 0.2 for b in range(10)}}
    assert set(judged(healthy).values()) == {"OK"}
    stalled = healthy | {"flow/endpt_rmse@16": 0.25, "flow/endpt_rmse@64": 0.3}  # does not fall with K
    text = [str(v) for v in verdicts(as_series(stalled))]
    assert any("flow/endpt_rmse" in t and "does not fall with K" in t for t in text), text
    assert judged(healthy | {"flow/endpt_std_ratio@128": 0.2})["flow/endpt_std_ratio"] == "WARN"
    edges = healthy | {"flow/nmse_t0": 1.2, "flow/nmse_t9": 0.9}  # 6x and 4.5x the middle
    assert {k: v for k, v in judged(edges).items() if "nmse" in k} == {"flow/nmse_t0": "WARN", "flow/nmse_t9": "WARN"}
    assert "flow/nmse_t0" not in judged(healthy | {"flow/nmse_t0": 0.6})  # 3x: within what the exact field does


# ------------------------------------------------------------------------------ callback, video
def test_probe_choice_follows_the_denoiser_scaling():
    edm_config = os.path.join(ROOT, "configs/example_training/toy/digits_cond.yaml")
    assert type(make_probe(instantiate_from_config(load_configs([edm_config], TINY).model))) is DiffusionProbe


def test_loss_diagnostics_writes_flow_metrics_to_the_csv_log(tmp_path):
    from pytorch_lightning.loggers import CSVLogger

    torch.manual_seed(0)
    engine = instantiate_from_config(load_configs([FLOW_CONFIG], TINY).model, learning_rate=1e-3)
    g = torch.Generator().manual_seed(0)
    batches = [{"jpg": torch.rand(16, 1, 8, 8, generator=g) * 2 - 1, "cls": torch.randint(0, 10, (16,), generator=g)}
               for _ in range(3)]
    callback = LossDiagnostics(every_n_steps=2, endpoint_steps=(2, 4), endpoint_ref_steps=8, endpoint_rows=4)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=3, logger=CSVLogger(str(tmp_path), name="csv"),
                         callbacks=[callback], enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(engine, DataLoader(batches, batch_size=None))
    series = read_metrics(str(tmp_path))
    for key in ("flow/cos", "flow/nmse", "flow/speed_ratio", "flow/cond_gain_cos", "flow/endpt_rmse@2",
                "flow/endpt_rmse@4", "flow/endpt_std_ratio@4", "flow/endpt_std_ratio@8", "grad/diffusion",
                "step/network_update_ratio"):
        assert [s for s, _ in series[key]] == [0, 2], key
    assert any(k.startswith("flow/nmse_t") for k in series) and any(k.startswith("flow/cos_t") for k in series)
    assert any(v.subject == "flow/cos" for v in verdicts(series))


def test_flow_probe_on_a_video_engine_integrates_whole_clips():
    from sgm.data.moving_digits import MovingDigitsDataModule

    flow = "sgm.modules.diffusionmodules"
    overrides = ["model.params.use_ema=False",
                 f"model.params.denoiser_config.params.scaling_config.target={flow}.denoiser_scaling.RectifiedFlowScaling",
                 f"model.params.loss_fn_config.params.loss_weighting_config.target={flow}.loss_weighting.RectifiedFlowWeighting",
                 f"model.params.loss_fn_config.params.sigma_sampler_config.target={flow}.sigma_sampling.UniformTSampling",
                 "model.params.loss_fn_config.params.sigma_sampler_config.params=null"]
    torch.manual_seed(0)
    engine = instantiate_from_config(load_configs([VIDEO_CONFIG], overrides).model)
    with torch.no_grad():  # the zero-initialised output layer would predict v = 0
        engine.model.diffusion_model.out[-1].weight.normal_(0.0, 0.1)
    data = MovingDigitsDataModule(batch_size=2, num_frames=8, size=16, channels=3)
    data.setup()
    batch = next(iter(data.train_dataloader()))
    calls = []
    engine.model.register_forward_hook(lambda module, args, out: calls.append(out.shape[0]))
    probe = make_probe(engine, endpoint_steps=(2,), endpoint_ref_steps=3, endpoint_rows=12)
    metrics = probe(engine, batch).metrics
    assert isinstance(probe, FlowProbe)
    assert calls[-5:] == [8] * 5  # 12 rows asked: one whole clip of 8 frames, 3 + 2 Euler steps
    for key in ("flow/cos", "flow/nmse", "flow/speed_ratio", "flow/cond_gain_cos", "flow/endpt_rmse@2",
                "flow/endpt_std_ratio@3", "grad/diffusion"):
        assert torch.isfinite(torch.tensor(metrics[key])), key
    assert 0 < metrics["flow/speed_ratio"] and metrics["flow/endpt_rmse@2"] > 0
