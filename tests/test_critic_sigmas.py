"""The critic's sigma law overlay (configs/dmd/critic_sigmas_grid.yaml): DMD2's uniform draw over the
teacher's whole schedule, so the critic is trained where the DMD loss queries it."""
import os

import torch

import sgm  # noqa: F401
from sgm.config import load_configs
from sgm.util import instantiate_from_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def critic_and_dmd_samplers(*configs):
    cfg = load_configs([os.path.join(ROOT, c) for c in configs])
    params = cfg.model.params
    critic = instantiate_from_config(params.loss_fn_config.params.sigma_sampler_config)
    dmd = instantiate_from_config(params.dmd_sigma_sampler_config)
    return critic, dmd


def share_above(sampler, threshold: float, n: int = 20000) -> float:
    torch.manual_seed(0)
    return (sampler(n) > threshold).float().mean().item()


def test_grid_overlay_trains_the_critic_where_the_dmd_loss_queries_it():
    for base in ("configs/dmd/digits_dmd.yaml", "configs/dmd/moving_digits_dmd.yaml"):
        critic, dmd = critic_and_dmd_samplers(base)
        grid, _ = critic_and_dmd_samplers(base, "configs/dmd/critic_sigmas_grid.yaml")
        dmd_share = share_above(dmd, 5.0)
        assert abs(share_above(grid, 5.0) - dmd_share) < 0.02, base  # ~0.42 both
        assert share_above(critic, 5.0) < 0.5 * dmd_share, base  # the teacher's law: far fewer
        sigmas = grid(5000)
        assert sigmas.max() <= 80.0 + 1e-4 and sigmas.min() > 0, base
