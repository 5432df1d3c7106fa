"""Scalings, Denoiser and DiscreteDenoiser against closed forms and upstream's numbers."""
import math

import pytest
import torch

from diffusion_helpers import cfg, golden_facts, identity_network
from sgm.modules.diffusionmodules.denoiser import Denoiser, DiscreteDenoiser
from sgm.modules.diffusionmodules.denoiser_scaling import (
    EDMScaling,
    EpsScaling,
    RectifiedFlowScaling,
    VScaling,
    VScalingWithEDMcNoise,
)
from sgm.modules.diffusionmodules.discretizer import LegacyDDPMDiscretization
from sgm.util import instantiate_from_config

SIGMAS = [0.002, 0.1, 0.5, 1.0, 3.0, 80.0, 700.0]


def closed_form(name: str, s: float) -> tuple[float, float, float, float]:
    """(c_skip, c_out, c_in, c_noise) written out in float64."""
    if name == "EDMScaling":
        sd = 0.5
        return sd**2 / (s**2 + sd**2), s * sd / math.sqrt(s**2 + sd**2), 1 / math.sqrt(s**2 + sd**2), math.log(s) / 4
    if name == "EpsScaling":
        return 1.0, -s, 1 / math.sqrt(s**2 + 1), s
    if name == "VScaling":
        return 1 / (s**2 + 1), -s / math.sqrt(s**2 + 1), 1 / math.sqrt(s**2 + 1), s
    if name == "VScalingWithEDMcNoise":
        return 1 / (s**2 + 1), -s / math.sqrt(s**2 + 1), 1 / math.sqrt(s**2 + 1), math.log(s) / 4
    if name == "RectifiedFlowScaling":
        t = s / (1 + s)
        return 1 - t, -t, 1 - t, t
    raise KeyError(name)


SCALINGS = [EDMScaling(), EpsScaling(), VScaling(), VScalingWithEDMcNoise(), RectifiedFlowScaling()]


@pytest.mark.parametrize("scaling", SCALINGS, ids=lambda s: type(s).__name__)
def test_scaling_matches_closed_form(scaling):
    sigma = torch.tensor(SIGMAS, dtype=torch.float64)
    got = scaling(sigma)
    for k, s in enumerate(SIGMAS):
        want = closed_form(type(scaling).__name__, s)
        for name, g, w in zip(("c_skip", "c_out", "c_in", "c_noise"), got, want):
            assert g[k].item() == pytest.approx(w, rel=1e-12, abs=1e-15), (name, s)


@pytest.mark.parametrize("scaling", SCALINGS, ids=lambda s: type(s).__name__)
def test_scaling_keeps_shape(scaling):
    sigma = torch.rand(3, 1, 1, 1) + 0.1
    assert all(c.shape == sigma.shape for c in scaling(sigma))


def test_edm_scaling_sigma_data():
    c_skip, c_out, c_in, _ = EDMScaling(sigma_data=1.0)(torch.tensor([1.0]))
    assert (c_skip.item(), c_out.item(), c_in.item()) == pytest.approx((0.5, 0.5**0.5, 0.5**0.5))


def test_vscaling_with_edm_c_noise_golden():
    facts = golden_facts()["VScalingWithEDMcNoise"]
    sigma = torch.tensor(facts["sigma"], dtype=torch.float32)
    for name, got in zip(("c_skip", "c_out", "c_in", "c_noise"), VScalingWithEDMcNoise()(sigma)):
        torch.testing.assert_close(got, torch.tensor(facts[name]), rtol=1e-6, atol=1e-7, msg=name)


def test_rectified_flow_round_trip():
    """A network that returns the exact velocity v = eps - x0 makes the denoiser return x0."""
    torch.manual_seed(1)
    x0 = torch.randn(5, 3, 4, 4, dtype=torch.float64)
    eps = torch.randn_like(x0)
    sigma = torch.tensor([0.01, 0.3, 1.0, 9.0, 700.0], dtype=torch.float64)
    x = x0 + sigma.view(-1, 1, 1, 1) * eps
    t_scale = 1000.0
    seen = {}

    def flow_network(x_t, c_noise, cond):
        t = c_noise / t_scale  # (N,)
        seen["x_t"], seen["t"] = x_t, t
        return eps - x0

    denoiser = Denoiser(cfg("denoiser_scaling.RectifiedFlowScaling", t_scale=t_scale))
    torch.testing.assert_close(denoiser(flow_network, x, sigma, {}), x0)
    t = sigma / (1 + sigma)
    torch.testing.assert_close(seen["t"], t)
    torch.testing.assert_close(seen["x_t"], (1 - t).view(-1, 1, 1, 1) * x0 + t.view(-1, 1, 1, 1) * eps)


def test_denoiser_identity_network_closed_form():
    """F(x_in) = x_in  =>  D = (c_skip + c_out * c_in) x; for EDM this is (sd^2 + s sd) / (s^2 + sd^2) x."""
    denoiser = Denoiser(cfg("denoiser_scaling.EDMScaling", sigma_data=0.5))
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    sigma = torch.tensor([0.1, 0.5, 2.0, 10.0], dtype=torch.float64)
    factor = (0.25 + 0.5 * sigma) / (sigma**2 + 0.25)
    torch.testing.assert_close(denoiser(identity_network, x, sigma, {}), factor.view(-1, 1, 1) * x)


def test_denoiser_passes_c_noise_cond_and_kwargs():
    seen = {}

    def network(x_in, c_noise, cond, **kwargs):
        seen.update(c_noise=c_noise, cond=cond, kwargs=kwargs)
        return torch.zeros_like(x_in)

    denoiser = Denoiser(cfg("denoiser_scaling.VScalingWithEDMcNoise"))
    sigma = torch.tensor([1.0, math.e**4])
    cond = {"vector": torch.ones(2, 3)}
    out = denoiser(network, torch.ones(2, 4, 5, 5), sigma, cond, num_video_frames=2)
    assert seen["c_noise"].shape == (2,)
    torch.testing.assert_close(seen["c_noise"], torch.tensor([0.0, 1.0]))
    assert seen["cond"] is cond and seen["kwargs"] == {"num_video_frames": 2}
    torch.testing.assert_close(out[:, 0, 0, 0], 1 / (sigma**2 + 1))  # c_skip * x


def make_discrete_denoiser(**params) -> DiscreteDenoiser:
    return DiscreteDenoiser(
        scaling_config=cfg("denoiser_scaling.EpsScaling"),
        num_idx=1000,
        discretization_config=cfg("discretizer.LegacyDDPMDiscretization"),
        **params,
    )


def test_discrete_denoiser_table_and_buffer():
    denoiser = make_discrete_denoiser()
    table = LegacyDDPMDiscretization()(1000, do_append_zero=False, flip=True)
    torch.testing.assert_close(denoiser.sigmas, table)
    assert torch.all(denoiser.sigmas[1:] > denoiser.sigmas[:-1])  # index 0 = smallest
    assert "sigmas" in denoiser.state_dict()  # persistent, as in upstream checkpoints


def test_discrete_denoiser_snaps_sigma_and_feeds_index():
    denoiser = make_discrete_denoiser()
    table = denoiser.sigmas
    idx = torch.tensor([0, 10, 500, 999])
    nudged = table[idx] * torch.tensor([1.001, 0.999, 1.0005, 1.01])  # near but not on the table
    torch.testing.assert_close(denoiser.sigma_to_idx(nudged), idx)
    torch.testing.assert_close(denoiser.idx_to_sigma(idx), table[idx])
    seen = {}

    def network(x_in, c_noise, cond):
        seen["c_noise"], seen["x_in"] = c_noise, x_in
        return torch.zeros_like(x_in)

    x = torch.ones(4, 1, 2, 2)
    denoiser(network, x, nudged, {})
    assert seen["c_noise"].dtype == torch.int64
    torch.testing.assert_close(seen["c_noise"], idx)
    # c_in uses the snapped sigma
    torch.testing.assert_close(seen["x_in"][:, 0, 0, 0], 1 / (table[idx] ** 2 + 1) ** 0.5)


def test_discrete_denoiser_without_c_noise_quantization():
    denoiser = make_discrete_denoiser(quantize_c_noise=False)
    seen = {}

    def network(x_in, c_noise, cond):
        seen["c_noise"] = c_noise
        return x_in

    sigma = denoiser.sigmas[[3, 700]] * 1.0001
    denoiser(network, torch.ones(2, 3), sigma, {})
    torch.testing.assert_close(seen["c_noise"], denoiser.sigmas[[3, 700]])  # Eps c_noise = snapped sigma


def test_denoiser_from_config():
    denoiser = instantiate_from_config(
        cfg("denoiser.Denoiser", scaling_config=cfg("denoiser_scaling.VScalingWithEDMcNoise"))
    )
    assert isinstance(denoiser.scaling, VScalingWithEDMcNoise)
    assert len(denoiser.state_dict()) == 0
