"""Analytic end-to-end check: distill an exact Gaussian-mixture teacher into a 1-step generator.

Teacher: 6 isotropic Gaussians (std 0.25) on a circle of radius 3 with unequal weights; its exact
denoiser E[x0 | x0 + sigma eps = x] is `toy.GaussianMixtureScore`. Generator: a ToyMLP under EDM
preconditioning, one step from sigma = 10. Critic: a ToyMLP denoiser trained from scratch on the
generator's samples (300 warm-up steps, then DMDEngine.critic_loss every step and
DMDEngine.generator_loss every 2nd). DMD-loss sigmas: uniform in sigma over 2%..98% of [0.002, 10]
(the EDM schedule with rho = 1).

Metrics on 4096 samples (thresholds, and what the run measured when they were set):
  occupancy  share of samples nearest to each mode: |share_k - w_k| < 0.05 for every k (max 0.014:
             0.308 0.200 0.138 0.152 0.087 0.114 for weights 0.3 0.2 0.15 0.15 0.1 0.1)
  near       share within 4 std of a mode centre: > 0.6 (0.76; the rest lies between modes)
  SW1        sliced Wasserstein-1 distance to 4096 teacher samples (64 projections): < 0.3 (0.16;
             0.04-0.09 between two teacher sample sets, 1.6 for the untrained generator)
About 17 s on one CPU thread.
"""
import math

import torch

from sgm.models.dmd import DMDEngine

M = "sgm.modules"
MEANS = [[3 * math.cos(2 * math.pi * k / 6), 3 * math.sin(2 * math.pi * k / 6)] for k in range(6)]
WEIGHTS = [0.3, 0.2, 0.15, 0.15, 0.1, 0.1]
STD = 0.25
SIGMA_MAX = 10.0
SIGMA_DATA = 2.0


def c(target: str, **params) -> dict:
    return {"target": target, "params": params}


def edm_denoiser() -> dict:
    return c(f"{M}.diffusionmodules.denoiser.Denoiser",
             scaling_config=c(f"{M}.diffusionmodules.denoiser_scaling.EDMScaling", sigma_data=SIGMA_DATA))


def mlp() -> dict:
    return c(f"{M}.distillation.toy.ToyMLP", dim=2, hidden=128, depth=3)


def build_engine() -> DMDEngine:
    return DMDEngine(
        network_config=mlp(),
        denoiser_config=edm_denoiser(),
        first_stage_config=c("sgm.models.autoencoder.IdentityFirstStage"),
        real_score_config=c(f"{M}.distillation.toy.GaussianMixtureScore", means=MEANS, weights=WEIGHTS, stds=STD),
        fake_score_config=c(f"{M}.distillation.roles.ScoreModel", network_config=mlp(),
                            denoiser_config=edm_denoiser(), trainable=True),
        sampler_config=c(f"{M}.distillation.sampler.FewStepSampler",
                         discretization_config=c(f"{M}.diffusionmodules.discretizer.ExplicitDiscretization",
                                                 sigmas=[SIGMA_MAX])),
        loss_fn_config=c(
            f"{M}.diffusionmodules.loss.StandardDiffusionLoss",
            sigma_sampler_config=c(f"{M}.diffusionmodules.sigma_sampling.EDMSampling", p_mean=-0.5, p_std=1.5),
            loss_weighting_config=c(f"{M}.diffusionmodules.loss_weighting.EDMWeighting", sigma_data=SIGMA_DATA)),
        dmd_sigma_sampler_config=c(
            f"{M}.distillation.losses.RestrictedDiscreteSampling",
            discretization_config=c(f"{M}.diffusionmodules.discretizer.EDMDiscretization",
                                    sigma_min=0.002, sigma_max=SIGMA_MAX, rho=1.0)),
        inputs={"latent_shape": [2]},  # data-free: the batch only says how many samples
        generator={"update_interval": 2},
    )


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, n_proj: int = 64, seed: int = 2) -> float:
    directions = torch.randn(n_proj, 2, generator=torch.Generator().manual_seed(seed))
    directions = directions / directions.norm(dim=1, keepdim=True)
    pa, pb = (a @ directions.T).sort(0).values, (b @ directions.T).sort(0).values
    return float((pa - pb).abs().mean())


def mode_statistics(x: torch.Tensor) -> tuple[torch.Tensor, float]:
    dist = torch.cdist(x, torch.tensor(MEANS))  # (n, K)
    nearest = dist.argmin(dim=1)
    occupancy = torch.stack([(nearest == k).float().mean() for k in range(len(MEANS))])
    near = float((dist.min(dim=1).values < 4 * STD).float().mean())
    return occupancy, near


def test_one_step_generator_matches_the_mixture(one_thread):
    torch.manual_seed(0)
    engine = build_engine()
    opt_g = torch.optim.Adam(engine.generator_parameters(), lr=2e-3, betas=(0.0, 0.99))
    opt_c = torch.optim.Adam(engine.critic_parameters(), lr=1e-3, betas=(0.0, 0.99))
    iters, warmup = 3000, 300
    decay = torch.optim.lr_scheduler.LambdaLR(opt_g, lambda k: max(0.05, 1 - 2 * k / iters))
    batch = {"rows": torch.zeros(256)}

    def step(opt, loss_fn):
        loss, log = loss_fn(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return log

    for _ in range(warmup):  # the critic first learns the untrained generator's distribution
        step(opt_c, engine.critic_loss)
    for i in range(iters):
        if i % engine.generator_update_interval == 0:
            log = step(opt_g, engine.generator_loss)
            decay.step()
            assert {"loss/dmd", "dmd/normalizer", "dmd/grad_abs_mean"} <= set(log)
        step(opt_c, engine.critic_loss)

    with torch.no_grad():
        samples = engine.sample({}, batch_size=4096, shape=(2,))
    teacher = engine.real_score.sample(4096, torch.Generator().manual_seed(1))
    occupancy, near = mode_statistics(samples)
    distance = sliced_wasserstein(samples, teacher)
    message = f"occupancy {occupancy.tolist()} vs {WEIGHTS}, near {near:.3f}, SW1 {distance:.3f}"
    assert float((occupancy - torch.tensor(WEIGHTS)).abs().max()) < 0.05, message
    assert near > 0.6, message
    assert distance < 0.3, message
