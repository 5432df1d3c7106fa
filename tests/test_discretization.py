"""Sigma schedules: endpoints, upstream's tables, flags, errors."""
import math

import pytest
import torch

from diffusion_helpers import golden_facts
from sgm.modules.diffusionmodules.discretizer import (
    EDMDiscretization,
    ExplicitDiscretization,
    LegacyDDPMDiscretization,
)


@pytest.mark.parametrize("n", [2, 5, 25])
def test_edm_endpoints_and_order(n):
    sigmas = EDMDiscretization()(n)
    assert sigmas.shape == (n + 1,) and sigmas.dtype == torch.float32
    assert sigmas[0].item() == pytest.approx(80.0, rel=1e-6)
    assert sigmas[-2].item() == pytest.approx(0.002, rel=1e-5)
    assert sigmas[-1].item() == 0.0
    assert torch.all(sigmas[1:] < sigmas[:-1])


def test_edm_formula():
    """sigma_i^(1/rho) is linear in i."""
    rho = 7.0
    sigmas = EDMDiscretization(sigma_min=0.01, sigma_max=10.0, rho=rho)(6, do_append_zero=False).double()
    roots = sigmas ** (1 / rho)
    torch.testing.assert_close(roots, torch.linspace(10.0 ** (1 / rho), 0.01 ** (1 / rho), 6, dtype=torch.float64))


@pytest.mark.parametrize("n", [25, 30, 50])
def test_edm_golden_tables(n):
    want = torch.tensor(golden_facts()[f"EDMDiscretization(sigma_max=700) n={n}"])
    got = EDMDiscretization(sigma_max=700.0)(n)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=0.0)


def test_flip_and_append_zero():
    disc = EDMDiscretization()
    base = disc(4, do_append_zero=False)
    assert base.shape == (4,) and base[-1] > 0
    torch.testing.assert_close(disc(4, flip=True), torch.cat([torch.zeros(1), base.flip(0)]))
    torch.testing.assert_close(disc(4, do_append_zero=False, flip=True), base.flip(0))


def test_legacy_ddpm_full_table():
    disc = LegacyDDPMDiscretization()
    sigmas = disc(1000, do_append_zero=False)  # n = num_timesteps: the whole table
    assert sigmas.shape == (1000,)
    assert torch.all(sigmas[1:] < sigmas[:-1])
    # closed form at both ends: abar_0 = 1 - beta_0, abar_999 = prod (1 - beta_k)
    beta0 = 0.00085
    assert sigmas[-1].item() == pytest.approx(math.sqrt(beta0 / (1 - beta0)), rel=1e-5)
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    abar = torch.prod(1 - betas).item()
    assert sigmas[0].item() == pytest.approx(math.sqrt((1 - abar) / abar), rel=1e-5)
    assert sigmas[0].item() == pytest.approx(14.6146, abs=1e-3)  # SD's well-known sigma_max


def test_legacy_ddpm_subsampled():
    disc = LegacyDDPMDiscretization()
    full = disc(1000, do_append_zero=False)
    sub = disc(50)
    assert sub.shape == (51,) and sub[-1] == 0
    assert torch.all(sub[1:] < sub[:-1])
    assert sub[0] == full[0]  # always starts at timestep 999
    steps = disc.timesteps(50)
    assert steps[0] == 999 and steps[-1] == 19
    torch.testing.assert_close(sub[:-1], full[999 - steps])
    spacing = -steps.diff()
    assert spacing.min() >= 19 and spacing.max() <= 21  # roughly even


def test_legacy_ddpm_too_many_steps():
    with pytest.raises(ValueError, match="1000 timesteps"):
        LegacyDDPMDiscretization()(1001)


def test_edm_needs_n():
    with pytest.raises(ValueError, match="num_steps"):
        EDMDiscretization()(None)


def test_explicit_discretization():
    disc = ExplicitDiscretization([80.0, 2.5, 0.3])
    torch.testing.assert_close(disc(3), torch.tensor([80.0, 2.5, 0.3, 0.0]))
    torch.testing.assert_close(disc(None, do_append_zero=False), torch.tensor([80.0, 2.5, 0.3]))


def test_explicit_wrong_n_names_both_numbers():
    with pytest.raises(ValueError, match=r"has 3 sigmas but 4 steps"):
        ExplicitDiscretization([80.0, 2.5, 0.3])(4)


@pytest.mark.parametrize(
    "sigmas, match",
    [
        ([80.0, 80.0, 1.0], "strictly descending"),
        ([1.0, 2.0], "strictly descending"),
        ([5.0, 0.0], "positive"),
        ([], "at least one"),
    ],
)
def test_explicit_constructor_checks(sigmas, match):
    with pytest.raises(ValueError, match=match):
        ExplicitDiscretization(sigmas)
