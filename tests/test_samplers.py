"""Samplers on a Gaussian toy with a known exact denoiser, plus single-step closed forms.

Data x0 ~ N(mu, s^2) per dimension: D(x; sigma) = mu + s^2 / (s^2 + sigma^2) (x - mu), and the
probability-flow ODE from sigma_max to 0 maps x_T to mu + s / sqrt(s^2 + sigma_max^2) (x_T - mu).
"""
import math

import pytest
import torch

from diffusion_helpers import GaussianData, cfg, golden_facts
from sgm.modules.diffusionmodules.sampling_utils import get_ancestral_step, linear_multistep_coeff, to_d
from sgm.util import instantiate_from_config

MU, S, SIGMA_MAX = 1.5, 0.5, 80.0
ROWS = 4000  # samples, each of 2 dims

DETERMINISTIC = ["EulerEDMSampler", "HeunEDMSampler", "DPMPP2MSampler", "LinearMultistepSampler"]
# (sampler, steps, tolerance on |std - s|): first-order methods need more steps.
DISTRIBUTION_CASES = [
    ("EulerEDMSampler", 100, 0.04),
    ("HeunEDMSampler", 40, 0.015),
    ("EulerAncestralSampler", 100, 0.04),
    ("DPMPP2SAncestralSampler", 40, 0.025),
    ("DPMPP2MSampler", 40, 0.015),
    ("LinearMultistepSampler", 40, 0.015),
]
MEAN_TOL = 0.03  # includes the s/sigma_max * mu ~ 0.01 bias of starting from mean-0 noise


def make_sampler(name: str, num_steps: int | None = None, sigma_max: float = SIGMA_MAX, **params):
    return instantiate_from_config(
        cfg(
            f"sampling.{name}",
            discretization_config=cfg("discretizer.EDMDiscretization", sigma_max=sigma_max),
            num_steps=num_steps,
            **params,
        )
    )


def unit_noise(rows: int = ROWS, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def exact_ode_endpoint(z: torch.Tensor) -> torch.Tensor:
    x_T = z * math.sqrt(1 + SIGMA_MAX**2)  # the samplers' initial scaling
    return MU + S / math.sqrt(S**2 + SIGMA_MAX**2) * (x_T - MU)


@pytest.mark.parametrize("name, steps, std_tol", DISTRIBUTION_CASES)
def test_reaches_data_distribution(name, steps, std_tol):
    torch.manual_seed(0)
    x = make_sampler(name, steps)(GaussianData(MU, S), unit_noise(), {})
    assert x.shape == (ROWS, 2)
    assert abs(x.mean().item() - MU) < MEAN_TOL
    assert abs(x.std().item() - S) < std_tol


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_deterministic_samplers_follow_the_ode(name):
    """Error against the exact ODE solution shrinks at the method's order when steps double."""
    z = unit_noise(200)
    exact = exact_ode_endpoint(z)
    errors = [(make_sampler(name, n)(GaussianData(MU, S), z, {}) - exact).abs().max().item() for n in (20, 40)]
    order = 1 if name == "EulerEDMSampler" else 2
    assert errors[0] / errors[1] > 0.9 * 2**order
    assert errors[1] < (0.15 if order == 1 else 0.025)


def test_initial_noise_scaling_golden():
    facts = golden_facts()
    z = torch.randn(3, 4)
    z_copy = z.clone()
    x, s_in, sigmas, num_sigmas, cond, uc = make_sampler("EulerEDMSampler", 25, sigma_max=700.0).prepare_sampling_loop(
        z, cond={"vector": torch.ones(3, 2)}
    )
    torch.testing.assert_close(z, z_copy)  # the caller's noise is not modified
    torch.testing.assert_close(x, z * facts["initial noise multiplier sqrt(1+700^2)"])
    torch.testing.assert_close(sigmas, torch.tensor(facts["EDMDiscretization(sigma_max=700) n=25"]), rtol=1e-5, atol=0)
    assert num_sigmas == 26 and uc is cond
    torch.testing.assert_close(s_in, torch.ones(3))


def test_device_argument_is_ignored():
    sampler = make_sampler("EulerEDMSampler", 3, device="cuda")  # upstream configs' default
    out = sampler(GaussianData(), unit_noise(4), {})
    assert out.device.type == "cpu"


def test_one_euler_step_is_the_denoiser():
    """sigmas [sigma_max, 0]: x_1 = x + (0 - sigma) (x - D) / sigma = D(x; sigma)."""
    data = GaussianData()
    z = unit_noise(8)
    sampler = make_sampler("EulerEDMSampler", 1)
    x_T = z * math.sqrt(1 + SIGMA_MAX**2)
    torch.testing.assert_close(sampler(data, z, {}), data(x_T, torch.full((8,), SIGMA_MAX), {}))


def test_heun_skips_correction_at_sigma_zero():
    data = GaussianData()
    make_sampler("HeunEDMSampler", 3)(data, unit_noise(8), {})
    assert data.calls == 2 * 3 - 1


def test_dpmpp2m_first_step_equals_euler():
    """DPM-Solver++(1) = DDIM = Euler in sigma: x' = sigma'/sigma x + (1 - sigma'/sigma) D."""
    data = GaussianData()
    x = unit_noise(8) * 10
    sigma, next_sigma = torch.full((8,), 10.0), torch.full((8,), 4.0)
    euler = make_sampler("EulerEDMSampler").sampler_step(sigma, next_sigma, data, x, {})
    dpm, denoised = make_sampler("DPMPP2MSampler").sampler_step(None, None, sigma, next_sigma, data, x, {})
    torch.testing.assert_close(dpm, euler)
    torch.testing.assert_close(euler, 0.4 * x + 0.6 * data(x, sigma, {}))
    torch.testing.assert_close(denoised, data(x, sigma, {}))


def test_euler_ancestral_with_eta_zero_is_euler():
    z = unit_noise(16)
    euler = make_sampler("EulerEDMSampler", 6)(GaussianData(), z, {})
    ancestral = make_sampler("EulerAncestralSampler", 6, eta=0.0)(GaussianData(), z, {})
    torch.testing.assert_close(ancestral, euler)


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_manual_steps_reproduce_call(name):
    """sampler_step carries no hidden state: driving it by hand gives the same result."""
    sampler, data, z = make_sampler(name, 5), GaussianData(), unit_noise(8)
    want = sampler(data, z, {})
    x, s_in, sigmas, num_sigmas, cond, uc = sampler.prepare_sampling_loop(z, {})
    history, old_denoised = [], None
    for i in range(num_sigmas - 1):
        sigma, next_sigma = s_in * sigmas[i], s_in * sigmas[i + 1]
        if name == "DPMPP2MSampler":
            previous = None if i == 0 else s_in * sigmas[i - 1]
            x, old_denoised = sampler.sampler_step(old_denoised, previous, sigma, next_sigma, data, x, cond, uc)
        elif name == "LinearMultistepSampler":
            x, history = sampler.sampler_step(history, sigmas, i, data, x, cond, uc)
        else:
            x = sampler.sampler_step(sigma, next_sigma, data, x, cond, uc)
    torch.testing.assert_close(x, want)


def test_num_steps_override_and_explicit_schedule():
    data = GaussianData()
    make_sampler("EulerEDMSampler", 10)(data, unit_noise(4), {}, num_steps=3)
    assert data.calls == 3
    explicit = instantiate_from_config(
        cfg(
            "sampling.EulerEDMSampler",
            discretization_config=cfg("discretizer.ExplicitDiscretization", sigmas=[80.0, 1.0]),
        )
    )
    data = GaussianData()
    explicit(data, unit_noise(4), {})
    assert data.calls == 2


def test_verbose_progress_bar(capsys):
    make_sampler("EulerEDMSampler", 2, verbose=True)(GaussianData(), unit_noise(4), {})
    assert "EulerEDMSampler" in capsys.readouterr().err


def test_churn_keeps_distribution():
    torch.manual_seed(0)
    x = make_sampler("HeunEDMSampler", 40, s_churn=20.0)(GaussianData(MU, S), unit_noise(), {})
    assert abs(x.mean().item() - MU) < MEAN_TOL and abs(x.std().item() - S) < 0.025


def test_samplers_are_plain_objects():
    assert not isinstance(make_sampler("EulerEDMSampler"), torch.nn.Module)


# ---- sampling_utils ----------------------------------------------------------------------------


def test_to_d():
    x, denoised, sigma = torch.ones(2, 3), torch.zeros(2, 3), torch.tensor([2.0, 4.0])
    torch.testing.assert_close(to_d(x, sigma, denoised), torch.tensor([[0.5] * 3, [0.25] * 3]))


def test_ancestral_step():
    sigma_from, sigma_to = torch.tensor([10.0, 2.0]), torch.tensor([5.0, 0.0])
    down, up = get_ancestral_step(sigma_from, sigma_to)
    torch.testing.assert_close(down**2 + up**2, sigma_to**2)
    torch.testing.assert_close(up, sigma_to * (1 - sigma_to**2 / sigma_from**2) ** 0.5)
    down0, up0 = get_ancestral_step(sigma_from, sigma_to, eta=0.0)
    torch.testing.assert_close(down0, sigma_to)
    torch.testing.assert_close(up0, torch.zeros(2))


def test_linear_multistep_coefficients():
    t = [10.0, 6.0, 3.0, 1.0, 0.0]
    assert linear_multistep_coeff(1, t, 0, 0) == pytest.approx(-4.0)  # order 1: Euler
    for order, i in [(2, 1), (3, 2), (4, 3)]:
        coeffs = [linear_multistep_coeff(order, t, i, j) for j in range(order)]
        assert sum(coeffs) == pytest.approx(t[i + 1] - t[i], rel=1e-6)  # the basis sums to 1
    # order 2, weight of the previous derivative: int_6^3 (tau - 6) / (10 - 6) dtau = 9/8
    assert linear_multistep_coeff(2, t, 1, 1) == pytest.approx(9 / 8, rel=1e-6)
    with pytest.raises(ValueError, match="too high"):
        linear_multistep_coeff(3, t, 1, 0)


# ---- parity with upstream: a full guided run on the tiny video U-Net ------------------------------


def test_golden_euler_edm_linear_guider_videounet_tiny():
    """Upstream's 4-step EulerEDMSampler (sigma_max 700) + LinearPredictionGuider(1.0 -> 2.5) run on
    the tiny random-weight VideoUNet, reproduced through our Denoiser, sampler and guider."""
    import json

    from diffusion_helpers import DATA

    video_model = pytest.importorskip("sgm.modules.diffusionmodules.video_model")
    wrappers = pytest.importorskip("sgm.modules.diffusionmodules.wrappers")
    safetensors = pytest.importorskip("safetensors.torch")
    weights_path = DATA / "golden" / "videounet_tiny.safetensors"
    if not weights_path.exists():
        pytest.skip("tests/data/golden/videounet_tiny.safetensors not present")
    entry = json.loads((DATA / "golden" / "golden.json").read_text())["videounet_tiny"]
    net = video_model.VideoUNet(**entry["config"]["params"])
    weights = safetensors.load_file(weights_path)
    net.load_state_dict({k[len("model.") :]: v for k, v in weights.items() if k.startswith("model.")})
    network = wrappers.OpenAIWrapper(net).eval()
    t = safetensors.load_file(DATA / "golden_sampler" / "euler_edm_4steps_linear_guider_videounet_tiny.safetensors")
    c = {k[len("in.c.") :]: v for k, v in t.items() if k.startswith("in.c.")}
    uc = {k[len("in.uc.") :]: v for k, v in t.items() if k.startswith("in.uc.")}

    scaling = cfg("denoiser_scaling.VScalingWithEDMcNoise")
    denoiser_module = instantiate_from_config(cfg("denoiser.Denoiser", scaling_config=scaling))
    sampler = make_sampler(
        "EulerEDMSampler",
        4,
        sigma_max=700.0,
        guider_config=cfg("guiders.LinearPredictionGuider", max_scale=2.5, min_scale=1.0, num_frames=3),
    )

    def denoiser(x, sigma, cond):
        kwargs = dict(num_video_frames=3, image_only_indicator=t["in.image_only_indicator"])
        return denoiser_module(network, x, sigma, cond, **kwargs)

    with torch.no_grad():
        out = sampler(denoiser, t["in.noise"], c, uc)
    relative_error = ((out - t["out"]).abs().max() / t["out"].abs().max()).item()
    assert relative_error < 1e-5
