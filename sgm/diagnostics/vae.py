"""`VAEProbe`: what `LossDiagnostics` measures on a KL autoencoder (TrainableAutoencodingEngine).

Names (section B of the loss-debugging notes):
    grad/rec, grad/kl (each weighted term alone), grad/<term>_ratio, grad/<term>_detached,
    grad/autoencoder_total, grad/total
    mu/abs_mean, mu/rms, mu/active_fraction, logvar/mean, std/mean, std/min, std/max,
    z_init/mean, z_init/var, z_init/std_per_dim_mean, kl/per_dim

Expected trends with the KL on (and their absence in a kl_weight=0 ablation): mu/abs_mean falls,
std/mean -> 1, logvar/mean -> 0, z_init/mean -> 0 and z_init/var -> 1. Everything is measured in the
autoencoder's own, unscaled latent space (a diffusion model's scale_factor is not applied).
"""
from __future__ import annotations

import torch

from sgm.diagnostics.base import Probe, ProbeResult, grad_metrics, role_grads
from sgm.modules.distributions.distributions import DiagonalGaussianDistribution

ACTIVE_VAR = 0.01  # a latent element is active when Var_x[mu] exceeds this (Burda et al. 2016)


@torch.no_grad()
def posterior_stats(posterior: DiagonalGaussianDistribution, z: torch.Tensor) -> dict[str, float]:
    """Statistics of q(z|x) = N(mu, sigma^2) over a batch and of the latent z given to the decoder."""
    mu, logvar, std = posterior.mean.float(), posterior.logvar.float(), posterior.std.float()  # (N, z, h, w)
    z_rows = z.float().flatten(1)  # (N, z·h·w)
    kl_rows = posterior.kl().float()  # (N,) nats per row
    return {
        "mu/abs_mean": float(mu.abs().mean()),
        "mu/rms": float(mu.pow(2).mean().sqrt()),
        "mu/active_fraction": float((mu.flatten(1).var(dim=0, unbiased=False) > ACTIVE_VAR).float().mean()),
        "logvar/mean": float(logvar.mean()),
        "std/mean": float(std.mean()),
        "std/min": float(std.min()),
        "std/max": float(std.max()),
        "z_init/mean": float(z_rows.mean()),
        "z_init/var": float(z_rows.var(unbiased=False)),
        "z_init/std_per_dim_mean": float(z_rows.std(dim=0, unbiased=False).mean()),
        "kl/per_dim": float(kl_rows.mean() / z_rows.shape[1]),  # nats per latent element
    }


class VAEProbe(Probe):
    """Reconstruction and KL terms of a TrainableAutoencodingEngine, isolated, plus posterior statistics.

    `engine.reconstruct(batch)` runs from the training step's RNG state (the callback preserves it), so
    the probe sees the step's own posterior sample. Each term is differentiated alone as it enters the loss (weight included), so a
    term weighted 0 has a zero gradient; the KL reaches only the encoder.
    """

    default_groups = {"encoder": "encoder.", "decoder": "decoder."}
    # term -> (role, its weight's key under model.params), for scripts/ablate.py
    term_weights = {"kl": ("autoencoder", "loss_config.params.kl_weight")}

    def measure(self, engine, batch: dict, want_images: bool = False) -> ProbeResult:
        out = engine.reconstruct(batch)
        terms = engine.loss.terms(out.x, out.x_rec, out.posterior)  # unweighted scalars
        grads = role_grads("autoencoder", terms, engine.loss.weights(), engine.trainable_parameters())
        metrics = grad_metrics([grads])
        metrics |= posterior_stats(out.posterior, out.z)
        return ProbeResult(metrics)


__all__ = ["VAEProbe", "posterior_stats"]
