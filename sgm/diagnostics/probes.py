"""Probes of the denoising engines: `DiffusionProbe` (DiffusionEngine) and `DMDProbe` (DMDEngine).

A probe calls the engine's own public loss methods once, under `preserved_rng` (base.Probe), so it
sees the training step's own draws (the engine draws them in one place) and leaves the training step
an untouched RNG: `DiffusionEngine.training_inputs` + `loss_fn.loss` for the denoising loss,
`DMDEngine.generator_loss_terms` / `critic_loss_terms` for DMD. Every term's gradient is read from that
one forward pass (sgm/diagnostics/base.py).

Names besides the gradients of base.py:
    loss/sigma_<lo>-<hi>, loss/cond_gain, loss/cond_true                 DiffusionEngine
    critic/loss_sigma_<lo>-<hi>, critic/cond_gain                         DMDEngine, critic
    dmd/normalizer_{mean,min}, dmd/grad_abs_{mean,max}, dmd/gap, dmd/gap_sigma_<lo>-<hi>,
    dmd/gen_{mean,std}, dmd/teacher_{mean,std}, dmd/gen_mean_drift, dmd/gen_std_ratio,
    dmd/cond_gain (teacher's denoising loss on generated samples, shuffled vs true conditions)
    ent/..., <term>/...                                                   statistics a DMD term reports
"""
from __future__ import annotations

from typing import Sequence

import torch

from sgm.diagnostics.base import (
    DEFAULT_SIGMA_BINS,
    Probe,
    ProbeResult,
    grad_metrics,
    per_bin,
    role_grads,
    row_mse,
    shuffled_cond,
)
from sgm.rng import preserved_rng
from sgm.util import broadcast_cond_to_rows

TERM_STATISTICS = ("ent/", "semantic/")  # log keys of DMD terms that the probe reports as diagnostics


# ---------------------------------------------------------------------------------- DiffusionEngine
class DiffusionProbe(Probe):
    """StandardDiffusionLoss of a DiffusionEngine: one term, `diffusion`."""

    default_groups = {"network": "model."}

    def __init__(
        self,
        sigma_bins: Sequence[float] = DEFAULT_SIGMA_BINS,  # edges of the sigma bins of loss/sigma_*
    ) -> None:
        self.sigma_bins = tuple(sigma_bins)

    def measure(self, engine, batch: dict, want_images: bool = False) -> ProbeResult:
        inputs = engine.training_inputs(batch)
        metrics, _, _ = self.diffusion_metrics(engine, batch, inputs)
        return ProbeResult(metrics, num_frames=inputs.num_frames)

    def diffusion_metrics(self, engine, batch: dict, inputs) -> tuple[dict[str, float], dict[str, torch.Tensor], dict]:
        """Gradient, per-sigma-bin loss and condition gain; for probes that build on these, the denoiser
        outputs (N, ...) with the batch's conditions without CFG dropout ("true") and shuffled ones
        ("shuffled"), and those conditions (N rows)."""
        loss_rows = engine(inputs)  # (N,) the training step's loss
        metrics = grad_metrics([role_grads("network", {"diffusion": loss_rows.mean()}, {"diffusion": 1.0},
                                           engine.trainable_parameters())])
        metrics |= per_bin(loss_rows, inputs.sigma, self.sigma_bins, "loss/")
        with torch.no_grad(), preserved_rng():  # the batch's conditions without CFG dropout
            clean, _ = engine.conditioner.get_unconditional_conditioning(batch, force_uc_zero_embeddings=[])
        rows = inputs.x0.shape[0]
        clean = broadcast_cond_to_rows(clean, rows)
        denoised, losses = {}, {}
        with torch.no_grad():
            for kind, cond in (("true", clean), ("shuffled", shuffled_cond(clean, rows, inputs.num_frames))):
                denoised[kind], losses[kind] = denoised_and_loss(engine, inputs, cond)
        metrics["loss/cond_gain"] = float(losses["shuffled"] - losses["true"])
        metrics["loss/cond_true"] = float(losses["true"])
        return metrics, denoised, clean


def denoised_and_loss(engine, inputs, cond: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The denoiser output (N, ...) at the step's own x_noisy with conditions `cond` (N rows), and the
    mean denoising loss of that output (through the engine's loss_fn.loss)."""
    out: dict[str, torch.Tensor] = {}

    def denoise(x: torch.Tensor, sigma: torch.Tensor, c: dict, **kwargs) -> torch.Tensor:
        out["D"] = engine.denoise(x, sigma, c, **kwargs)
        return out["D"]

    loss = engine.loss_fn.loss(denoise, inputs.x0, inputs.sigma, inputs.noise, cond, **inputs.model_kwargs)
    return out["D"], loss.mean()


# ---------------------------------------------------------------------------------- DMDEngine
class DMDProbe(Probe):
    """DMDEngine: generator terms (dmd and the configured terms), critic terms, DMD statistics, images."""

    default_groups = {"generator": "model.", "critic": "fake_score."}
    term_weights = {"dmd": ("generator", "dmd_weight")}  # the terms under model.params.terms declare theirs

    def __init__(
        self,
        sigma_bins: Sequence[float] = DEFAULT_SIGMA_BINS,  # edges of the sigma bins
        teacher_steps: int = 8,  # Euler steps of the teacher's reference samples
        teacher_samples: int = 64,  # rows of the teacher's reference (cond cycled from the first batch)
    ) -> None:
        self.sigma_bins = tuple(sigma_bins)
        self.teacher_steps = teacher_steps
        self.teacher_samples = teacher_samples
        self.teacher_stats: tuple[float, float] | None = None

    def groups(self, engine) -> dict[str, str]:
        """The generator, the critic, and every head a term declares (terms.<name>.<prefix>)."""
        out = dict(self.default_groups)
        for name, term in engine.terms.items():
            out |= {group: f"terms.{name}.{prefix}" for group, prefix in term.parameter_groups().items()}
        return out

    def measure(self, engine, batch: dict, want_images: bool = False) -> ProbeResult:
        generator = engine.generator_loss_terms(batch)
        critic = engine.critic_loss_terms(batch)
        metrics = grad_metrics([
            role_grads("generator", generator.losses, generator.weights, engine.generator_parameters()),
            role_grads("critic", critic.losses, critic.weights, engine.critic_parameters()),
        ])
        metrics |= {k: float(v) for k, v in generator.log.items() if k.startswith(TERM_STATISTICS)}
        with torch.no_grad():
            metrics |= self.critic_stats(engine, critic.step)
            stats, images = self.dmd_stats(engine, generator.step)
        return ProbeResult(metrics | stats, images if want_images else {}, generator.step.inputs.num_frames)

    # -- statistics
    def critic_stats(self, engine, step) -> dict[str, float]:
        """The critic's denoising loss per sigma bin, and its use of the conditioning."""
        inputs = step.inputs
        shuffled_c = shuffled_cond(inputs.cond, step.x0.shape[0], inputs.num_frames)
        shuffled = engine.loss_fn.loss(engine.fake_score, step.x0, step.sigma, step.noise, shuffled_c,
                                       **inputs.model_kwargs)  # (N,) same draws, shuffled conditions
        out = per_bin(step.loss_rows, step.sigma, self.sigma_bins, "critic/loss_")
        out["critic/cond_gain"] = float(shuffled.mean() - step.loss_rows.mean())
        return out

    def dmd_stats(self, engine, step) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
        from sgm.modules.distillation.losses import dmd_loss

        inputs, x0, x_t, sigma = step.inputs, step.x0.detach(), step.x_t, step.sigma
        pred_real, pred_fake = step.pred_real, step.pred_fake
        _, stats = dmd_loss(x0, pred_real, pred_fake, inputs.num_frames)  # DMD eq. 7-8, no mask
        gap = (pred_real - pred_fake).abs().flatten(1).mean(dim=1)  # (N,)
        out = {"dmd/normalizer_mean": float(stats.normalizer.mean()), "dmd/normalizer_min": float(stats.normalizer.min()),
               "dmd/grad_abs_mean": float(stats.grad.abs().mean()), "dmd/grad_abs_max": float(stats.grad.abs().max()),
               "dmd/gap": float(gap.mean())}
        out |= per_bin(gap, sigma, self.sigma_bins, "dmd/gap_")
        # does the generator's output depend on its condition? (the teacher tells, unguided)
        kwargs = inputs.model_kwargs
        true = row_mse(engine.real_score.denoise(x_t, sigma, inputs.cond, **kwargs), x0)
        shuffled_c = shuffled_cond(inputs.cond, x0.shape[0], inputs.num_frames)
        shuffled = row_mse(engine.real_score.denoise(x_t, sigma, shuffled_c, **kwargs), x0)
        out["dmd/cond_gain"] = float(shuffled.mean() - true.mean())
        gen_mean, gen_std = float(x0.mean()), float(x0.float().std())
        teacher_mean, teacher_std = self.teacher_reference(engine, inputs)
        out |= {"dmd/gen_mean": gen_mean, "dmd/gen_std": gen_std, "dmd/teacher_mean": teacher_mean,
                "dmd/teacher_std": teacher_std, "dmd/gen_mean_drift": gen_mean - teacher_mean,
                "dmd/gen_std_ratio": gen_std / teacher_std if teacher_std > 0 else 0.0}
        images = {"generator": x0, "pred_real": pred_real, "pred_fake": pred_fake, "real_minus_fake": pred_real - pred_fake}
        return out, images

    def teacher_reference(self, engine, inputs) -> tuple[float, float]:
        """Mean / std of teacher samples (EulerEDMSampler, `teacher_steps`, the teacher's CFG), computed once."""
        if self.teacher_stats is None:
            from sgm.modules.diffusionmodules.sampling import EulerEDMSampler

            rows = inputs.shape[0]
            index = torch.arange(self.teacher_samples) % rows
            if inputs.num_frames > 1:  # whole clips only
                clips = max(1, self.teacher_samples // inputs.num_frames)
                index = (torch.arange(clips) % (rows // inputs.num_frames)).repeat_interleave(inputs.num_frames)
                index = index * inputs.num_frames + torch.arange(inputs.num_frames).repeat(clips)
            take = lambda d: {k: v[index.to(v.device)] if isinstance(v, torch.Tensor) and v.ndim > 0 and v.shape[0] == rows
                              else v for k, v in d.items()}
            cond, uc = take(inputs.cond), take(inputs.uc)
            sampler = EulerEDMSampler({"target": "sgm.modules.diffusionmodules.discretizer.ExplicitDiscretization",
                                       "params": {"sigmas": teacher_sigmas(engine, self.teacher_steps).tolist()}})
            gen = torch.Generator().manual_seed(0)  # its own stream: the global RNG is not used
            noise = torch.randn((len(index), *inputs.shape[1:]), generator=gen).to(engine.device)
            x = sampler(lambda x, s, c: engine.real_score(x, s, c, uc=uc, **inputs.model_kwargs), noise, cond)
            self.teacher_stats = (float(x.mean()), float(x.float().std()))
        return self.teacher_stats


def teacher_sigmas(engine, steps: int) -> torch.Tensor:
    """`steps` sigmas spread over the DMD sampler's (the teacher's) schedule -> (steps,) descending."""
    full = getattr(engine.dmd_sigma_sampler, "sigmas", None)
    if full is None:
        from sgm.modules.diffusionmodules.discretizer import EDMDiscretization

        full = EDMDiscretization()(1000, do_append_zero=False)
    full = torch.as_tensor(full, dtype=torch.float32)
    index = torch.linspace(0, len(full) - 1, steps).round().long()
    return full[index].unique_consecutive()


__all__ = ["DMDProbe", "DiffusionProbe", "teacher_sigmas"]
