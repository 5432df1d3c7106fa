"""The critic's sigma law: by default (configs/dmd/critic_sigmas.yaml, included by every DMD config)
DMD2's uniform draw over the teacher's whole schedule, so the critic is trained where the DMD loss
queries it; configs/dmd/critic_sigmas_teacher.yaml restores the teacher's training law."""
import os

import pytest
import torch

import sgm  # noqa: F401
from sgm.config import load_configs
from sgm.modules.diffusionmodules.sigma_sampling import EDMSampling
from sgm.modules.distillation.losses import RestrictedDiscreteSampling
from sgm.util import instantiate_from_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DMD_CONFIGS = ["configs/dmd/digits_dmd.yaml", "configs/dmd/moving_digits_dmd.yaml", "configs/dmd/multiview_digits_dmd.yaml",
               "configs/dmd/dmd_svd.yaml", "configs/dmd/dmd_sv4d2.yaml", "configs/dmd/dmd_svd_xt.yaml",
               "configs/dmd/digits_dmd_gan.yaml", "configs/dmd/moving_digits_dmd_gan.yaml"]
TEACHER_LAWS = {  # config -> (p_mean, p_std) of the teacher's training law, a high sigma for its schedule
    "configs/dmd/digits_dmd.yaml": (-1.0, 1.4, 5.0),
    "configs/dmd/moving_digits_dmd.yaml": (0.0, 1.6, 5.0),
    "configs/dmd/multiview_digits_dmd.yaml": (0.0, 1.6, 5.0),
    "configs/dmd/dmd_svd.yaml": (1.0, 1.6, 80.0),  # sigma_max 700: 31% of DMD draws above 80
    "configs/dmd/dmd_sv4d2.yaml": (1.0, 1.6, 80.0),
}


def critic_and_dmd_samplers(*configs):
    cfg = load_configs([os.path.join(ROOT, c) for c in configs])
    params = cfg.model.params
    critic = instantiate_from_config(params.loss_fn_config.params.sigma_sampler_config)
    dmd = instantiate_from_config(params.dmd_sigma_sampler_config)
    return critic, dmd


def share_above(sampler, threshold: float, n: int = 20000) -> float:
    torch.manual_seed(0)
    return (sampler(n) > threshold).float().mean().item()


@pytest.mark.parametrize("config", DMD_CONFIGS)
def test_every_dmd_config_trains_its_critic_uniformly_over_the_teachers_schedule(config):
    critic, dmd = critic_and_dmd_samplers(config)
    assert isinstance(critic, RestrictedDiscreteSampling)
    assert (critic.lo, critic.hi) == (0, len(critic.sigmas) - 1)  # the whole schedule
    torch.testing.assert_close(critic.sigmas, dmd.sigmas)  # the same 1000-point schedule
    threshold = float(dmd.sigmas.median())
    assert abs(share_above(critic, threshold) - share_above(dmd, threshold)) < 0.03


@pytest.mark.parametrize("config", sorted(TEACHER_LAWS))
def test_teacher_overlay_restores_the_teachers_training_law(config):
    critic, dmd = critic_and_dmd_samplers(config, "configs/dmd/critic_sigmas_teacher.yaml")
    assert isinstance(critic, EDMSampling)
    p_mean, p_std, threshold = TEACHER_LAWS[config]
    assert (critic.p_mean, critic.p_std) == (p_mean, p_std)
    assert share_above(critic, threshold) < 0.5 * share_above(dmd, threshold)  # far fewer high sigmas


@pytest.mark.parametrize("config, teacher", [
    ("configs/dmd/digits_dmd.yaml", "configs/example_training/toy/digits_cond.yaml"),
    ("configs/dmd/moving_digits_dmd.yaml", "configs/example_training/toy/moving_digits_svd.yaml"),
    ("configs/dmd/multiview_digits_dmd.yaml", "configs/example_training/toy/multiview_digits_sv4d2.yaml"),
])
def test_teacher_sigmas_is_the_toy_teachers_own_training_law(config, teacher):
    from omegaconf import OmegaConf

    law = load_configs([os.path.join(ROOT, teacher)]).model.params.loss_fn_config.params.sigma_sampler_config
    named = load_configs([os.path.join(ROOT, config)]).teacher_sigmas
    assert OmegaConf.to_container(law, resolve=True) == OmegaConf.to_container(named, resolve=True)
