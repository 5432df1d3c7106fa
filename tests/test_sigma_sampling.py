"""Training sigma samplers and loss weightings."""
import math

import pytest
import torch

from diffusion_helpers import cfg
from sgm.modules.diffusionmodules.discretizer import LegacyDDPMDiscretization
from sgm.modules.diffusionmodules.loss_weighting import EDMWeighting, EpsWeighting, UnitWeighting, VWeighting
from sgm.modules.diffusionmodules.sigma_sampling import DiscreteSampling, EDMSampling, ZeroSampler


def test_edm_sampling_uses_rand():
    rand = torch.tensor([-1.0, 0.0, 2.0])
    got = EDMSampling(p_mean=-1.2, p_std=1.2)(3, rand=rand)
    torch.testing.assert_close(got, torch.exp(-1.2 + 1.2 * rand))


def test_edm_sampling_is_log_normal():
    sigma = EDMSampling(p_mean=0.5, p_std=0.8)(20000, generator=torch.Generator().manual_seed(0))
    assert sigma.shape == (20000,) and torch.all(sigma > 0)
    log_sigma = sigma.log()
    assert log_sigma.mean().item() == pytest.approx(0.5, abs=0.03)  # 4 standard errors
    assert log_sigma.std().item() == pytest.approx(0.8, abs=0.02)


def test_generator_makes_draws_reproducible():
    a = EDMSampling()(5, generator=torch.Generator().manual_seed(3))
    b = EDMSampling()(5, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b)


def test_discrete_sampling():
    sampler = DiscreteSampling(cfg("discretizer.LegacyDDPMDiscretization"), num_idx=1000)
    table = LegacyDDPMDiscretization()(1000, do_append_zero=False, flip=True)
    torch.testing.assert_close(sampler(3, rand=torch.tensor([0, 5, 999])), table[[0, 5, 999]])
    sigma = sampler(4000, generator=torch.Generator().manual_seed(0))
    assert sigma.shape == (4000,)
    assert torch.isin(sigma, table).all()
    assert len(torch.unique(sigma)) > 900  # uniform over 1000 entries


def test_zero_sampler():
    torch.testing.assert_close(ZeroSampler()(4), torch.full((4,), 1e-5))
    assert ZeroSampler()(2, rand=torch.randn(3)).shape == (3,)


@pytest.mark.parametrize("sampler", [EDMSampling(), ZeroSampler()], ids=lambda s: type(s).__name__)
def test_device_argument(sampler):
    assert sampler(2).device.type == "cpu"
    assert sampler(2, device="meta").device.type == "meta"


def test_weightings():
    sigma = torch.tensor([0.1, 1.0, 7.0], dtype=torch.float64)
    torch.testing.assert_close(UnitWeighting()(sigma), torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(EpsWeighting()(sigma), 1 / sigma**2)
    sd = 0.5
    torch.testing.assert_close(EDMWeighting()(sigma), (sigma**2 + sd**2) / (sigma * sd) ** 2)
    torch.testing.assert_close(VWeighting()(sigma), (sigma**2 + 1) / sigma**2)
    assert EDMWeighting(sigma_data=2.0)(torch.tensor([2.0])).item() == pytest.approx(8 / 16)


def test_edm_weighting_is_inverse_c_out_squared():
    """lambda = 1 / c_out^2: the EDM loss has unit weight on the network's own target."""
    from sgm.modules.diffusionmodules.denoiser_scaling import EDMScaling

    sigma = torch.tensor([0.05, 0.5, 5.0], dtype=torch.float64)
    _, c_out, _, _ = EDMScaling()(sigma)
    torch.testing.assert_close(EDMWeighting()(sigma), 1 / c_out**2)
    assert math.isclose(VWeighting().sigma_data, 1.0)
