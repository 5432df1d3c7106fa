"""What `LossDiagnostics` measures on one sampled step, per engine type.

Every probe reruns the engine's own loss computation through its public methods, starting from the
RNG state the training step will start from (`preserved_rng`), so the diagnostic losses use the
training step's own sigmas and noise, and the training step afterwards sees an untouched RNG.

Gradient norms ("look at gradients, not scalars"): each loss term is isolated and differentiated
alone with `torch.autograd.grad` on the trainable parameters of its role; parameters it does not
reach count as zero. A term whose value has no gradient path is reported as detached.

Names (one flat dict, `/`-separated):
    grad/<term>, grad/<term>_ratio (of its role's total), grad/<term>_detached (1 if no grad path),
    grad/<role>_total, grad/total (all roles together)
    loss/sigma_<lo>-<hi>, loss/cond_gain                          DiffusionEngine
    flow/...                                                       DiffusionEngine with RectifiedFlowScaling
                                                                   (FlowProbe, sgm/diagnostics/flow.py)
    critic/loss_sigma_<lo>-<hi>, critic/cond_gain                  DMDEngine, critic
    dmd/normalizer_{mean,min}, dmd/grad_abs_{mean,max}, dmd/gap, dmd/gap_sigma_<lo>-<hi>,
    dmd/gen_{mean,std}, dmd/teacher_{mean,std}, dmd/gen_mean_drift, dmd/gen_std_ratio,
    dmd/cond_gain (teacher's denoising loss on generated samples, shuffled vs true conditions)
    grad/rec, grad/kl, mu/..., logvar/..., std/..., z_init/..., kl/per_dim    TrainableAutoencodingEngine
                                                                              (sgm/diagnostics/vae.py)
"""
from __future__ import annotations

import random
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from sgm.util import append_dims, broadcast_cond_to_rows

DEFAULT_SIGMA_BINS = (0.0, 0.1, 0.5, 2.0, 10.0, 1000.0)  # edges; a row is in [lo, hi)


# ---------------------------------------------------------------------------------- RNG
@contextmanager
def preserved_rng() -> Iterator[None]:
    """Everything inside draws from, and leaves behind, the RNG state found on entry."""
    torch_state = torch.get_rng_state()
    cuda_state = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        yield
    finally:
        torch.set_rng_state(torch_state)
        if cuda_state is not None:
            torch.cuda.set_rng_state_all(cuda_state)
        np.random.set_state(np_state)
        random.setstate(py_state)


# ---------------------------------------------------------------------------------- gradients
@dataclass
class TermGrad:
    """The gradient of one isolated loss term on its role's parameters (None entries = no path)."""

    grads: list[torch.Tensor | None]
    detached: bool = False  # the value had no gradient path at all

    @property
    def norm(self) -> float:
        squares = [g.float().pow(2).sum() for g in self.grads if g is not None]
        return float(torch.stack(squares).sum().sqrt()) if squares else 0.0

    def __sub__(self, other: "TermGrad") -> "TermGrad":
        diff = [a if b is None else (-b if a is None else a - b) for a, b in zip(self.grads, other.grads)]
        return TermGrad(diff, detached=self.detached)


def term_grad(loss: torch.Tensor | None, params: Sequence[nn.Parameter], retain_graph: bool = False) -> TermGrad:
    """d loss / d params; None (term switched off) -> zero gradient; no grad path -> flagged."""
    if loss is None:
        return TermGrad([None] * len(params))
    if not loss.requires_grad:
        return TermGrad([None] * len(params), detached=True)
    grads = torch.autograd.grad(loss, list(params), retain_graph=retain_graph, allow_unused=True)
    return TermGrad(list(grads))


@dataclass
class RoleGrads:
    """The isolated terms of one role (generator, critic, network) and the role's total loss."""

    role: str
    total: TermGrad
    terms: dict[str, TermGrad] = field(default_factory=dict)


def grad_metrics(roles: Sequence[RoleGrads]) -> dict[str, float]:
    out: dict[str, float] = {}
    squares = 0.0
    for role in roles:
        total = role.total.norm
        squares += total**2
        out[f"grad/{role.role}_total"] = total
        for name, grad in role.terms.items():
            norm = grad.norm
            out[f"grad/{name}"] = norm
            out[f"grad/{name}_ratio"] = norm / total if total > 0 else 0.0
            out[f"grad/{name}_detached"] = float(grad.detached)
    out["grad/total"] = squares**0.5
    return out


# ---------------------------------------------------------------------------------- helpers
def bin_name(lo: float, hi: float) -> str:
    return f"sigma_{lo:g}-{hi:g}"


def per_bin(values: torch.Tensor, sigma: torch.Tensor, edges: Sequence[float], prefix: str) -> dict[str, float]:
    """Mean of per-row `values` (N,) in each sigma bin [lo, hi); empty bins are left out."""
    values, sigma = values.detach().float().cpu(), sigma.detach().float().cpu()
    out = {}
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (sigma >= lo) & (sigma < hi)
        if inside.any():
            out[f"{prefix}{bin_name(lo, hi)}"] = float(values[inside].mean())
    return out


def shuffled_cond(cond: dict, rows: int, num_frames: int = 1) -> dict:
    """Conditions permuted across the batch: clip b gets clip b+1's (a roll, so no RNG is used)."""
    cond = broadcast_cond_to_rows(cond, rows)
    return {k: torch.roll(v, num_frames, dims=0) if isinstance(v, torch.Tensor) and v.ndim > 0 and v.shape[0] == rows
            else v for k, v in cond.items()}


def row_mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.float() - b.float()).pow(2).flatten(1).mean(dim=1)  # (N,)


@contextmanager
def set_attrs(obj, **values) -> Iterator[None]:
    """Temporarily set public attributes (loss weights) of an engine."""
    saved = {k: getattr(obj, k) for k in values}
    try:
        for k, v in values.items():
            setattr(obj, k, v)
        yield
    finally:
        for k, v in saved.items():
            setattr(obj, k, v)


@dataclass
class ProbeResult:
    metrics: dict[str, float]
    images: dict[str, torch.Tensor] = field(default_factory=dict)  # (N, C, H, W) in the latent space
    num_frames: int = 1


# ---------------------------------------------------------------------------------- DiffusionEngine
@dataclass
class DiffusionDraws:
    """One training step's draws, in StandardDiffusionLoss.forward's order, and the batch's conditions."""

    x0: torch.Tensor  # (N, ...) clean latents
    sigma: torch.Tensor  # (N,) noise levels
    noise: torch.Tensor  # (N, ...) eps
    cond: dict  # the step's conditions (CFG dropout applied), N rows
    clean: dict  # the batch's conditions without dropout, N rows
    extra: dict  # batch entries passed to the network (num_video_frames, image_only_indicator, ...)
    num_frames: int  # frames per clip (1: images)

    @property
    def x_noisy(self) -> torch.Tensor:
        return self.x0 + append_dims(self.sigma, self.x0.ndim) * self.noise  # x = x0 + sigma * eps


class DiffusionProbe:
    """StandardDiffusionLoss of a DiffusionEngine: one term, `diffusion`."""

    default_groups = {"network": "model."}

    def __init__(self, sigma_bins: Sequence[float] = DEFAULT_SIGMA_BINS, **unused) -> None:
        self.sigma_bins = tuple(sigma_bins)

    def __call__(self, engine, batch: dict, want_images: bool = False) -> ProbeResult:
        draws = self.draw(engine, batch)
        metrics, _ = self.diffusion_metrics(engine, draws)
        return ProbeResult(metrics, num_frames=draws.num_frames)

    def draw(self, engine, batch: dict) -> DiffusionDraws:
        from sgm.modules.diffusionmodules.loss import frames_per_clip

        loss_fn = engine.loss_fn
        with preserved_rng():  # the draws of StandardDiffusionLoss.forward, in its order
            x0 = engine.encode_first_stage(engine.get_input(batch))  # (N, ...)
            rows, num_frames = x0.shape[0], frames_per_clip(batch, x0.shape[0])
            cond = broadcast_cond_to_rows(engine.conditioner(batch), rows)
            sigma = loss_fn.sample_sigmas(x0, num_frames)  # (N,)
            noise = loss_fn.sample_noise(x0, num_frames)  # (N, ...)
        with torch.no_grad(), preserved_rng():
            clean, _ = engine.conditioner.get_unconditional_conditioning(batch, force_uc_zero_embeddings=[])
        extra = {k: batch[k] for k in loss_fn.batch2model_keys if k in batch}
        return DiffusionDraws(x0, sigma, noise, cond, broadcast_cond_to_rows(clean, rows), extra, num_frames)

    def diffusion_metrics(self, engine, draws: DiffusionDraws) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
        """Gradient, per-sigma-bin loss and condition gain; and the denoiser outputs (N, ...) with the
        batch's conditions ("true") and shuffled ones ("shuffled"), for probes that build on these."""
        loss_fn, x0, sigma = engine.loss_fn, draws.x0, draws.sigma
        x_noisy = draws.x_noisy
        w = append_dims(loss_fn.loss_weighting(sigma), x0.ndim)

        def denoise(c: dict) -> torch.Tensor:  # (N, ...)
            return engine.denoiser(engine.model, x_noisy, sigma, c, **draws.extra)

        loss_rows = loss_fn.get_loss(denoise(draws.cond), x0, w)  # (N,)
        term = term_grad(loss_rows.mean(), engine.trainable_parameters())
        metrics = grad_metrics([RoleGrads("network", term, {"diffusion": term})])
        metrics |= per_bin(loss_rows, sigma, self.sigma_bins, "loss/")
        with torch.no_grad(), preserved_rng():
            rows = x0.shape[0]
            denoised = {"true": denoise(draws.clean),
                        "shuffled": denoise(shuffled_cond(draws.clean, rows, draws.num_frames))}
        true = loss_fn.get_loss(denoised["true"], x0, w).mean()
        shuffled = loss_fn.get_loss(denoised["shuffled"], x0, w).mean()
        metrics["loss/cond_gain"] = float(shuffled - true)
        metrics["loss/cond_true"] = float(true)
        return metrics, denoised


# ---------------------------------------------------------------------------------- DMDEngine
class DMDProbe:
    """DMDEngine: generator terms (dmd, gan, regression), critic terms, DMD statistics, images.

    Terms are isolated by setting the other terms' weights to 0 for one call of the engine's own
    `generator_loss` / `critic_loss` (each call starts from the same RNG state); a term that cannot be
    zeroed (the critic's denoising loss) is obtained by subtraction, gradients being linear.
    """

    default_groups = {"generator": "model.", "critic": "fake_score."}
    # term -> (role, the engine attribute weighting it = its key under model.params), for scripts/ablate.py
    term_weights = {"dmd": ("generator", "dmd_weight"), "gan": ("generator", "gan_generator_weight"),
                    "regression": ("generator", "regression_weight"), "gan_critic": ("critic", "gan_critic_weight")}

    def __init__(
        self,
        sigma_bins: Sequence[float] = DEFAULT_SIGMA_BINS,  # edges of the sigma bins
        teacher_steps: int = 8,  # Euler steps of the teacher's reference samples
        teacher_samples: int = 64,  # rows of the teacher's reference (cond cycled from the first batch)
        **unused,
    ) -> None:
        self.sigma_bins = tuple(sigma_bins)
        self.teacher_steps = teacher_steps
        self.teacher_samples = teacher_samples
        self.teacher_stats: tuple[float, float] | None = None

    def __call__(self, engine, batch: dict, want_images: bool = False) -> ProbeResult:
        metrics = grad_metrics([self.generator_grads(engine, batch), self.critic_grads(engine, batch)])
        with torch.no_grad():
            metrics |= self.critic_stats(engine, batch)
            stats, images, num_frames = self.dmd_stats(engine, batch)
        return ProbeResult(metrics | stats, images if want_images else {}, num_frames)

    # -- gradients
    def generator_grads(self, engine, batch: dict) -> RoleGrads:
        params = engine.generator_parameters()
        on = {term: attr for term, (role, attr) in self.term_weights.items() if role == "generator"}
        off = {attr: 0.0 for attr in on.values()}
        names = ["dmd"] + (["gan"] if engine.gan_head is not None else [])
        names += ["regression"] if engine.regression_weight > 0 else []

        def loss_with(**weights) -> torch.Tensor:
            with preserved_rng(), set_attrs(engine, **weights):
                return engine.generator_loss(batch)[0]

        total = term_grad(loss_with(), params)
        terms = {}
        for name in names:
            weight = getattr(engine, on[name])
            if weight == 0:  # switched off by its weight: zero by definition, never "detached"
                terms[name] = term_grad(None, params)
                continue
            grad = term_grad(loss_with(**{**off, on[name]: weight}), params)
            # on, yet exactly zero (e.g. 0 * dmd + w * detached gan): no gradient path either
            grad.detached = grad.detached or grad.norm == 0.0
            terms[name] = grad
        return RoleGrads("generator", total, terms)

    def critic_grads(self, engine, batch: dict) -> RoleGrads:
        params = engine.critic_parameters()

        def loss_with(**weights) -> torch.Tensor:
            with preserved_rng(), set_attrs(engine, **weights):
                return engine.critic_loss(batch)[0]

        total = term_grad(loss_with(), params)
        if engine.gan_head is None:
            return RoleGrads("critic", total, {"critic_denoise": total})
        denoise = term_grad(loss_with(gan_critic_weight=0.0), params)
        gan = total - denoise if engine.gan_critic_weight != 0 else term_grad(None, params)
        return RoleGrads("critic", total, {"critic_denoise": denoise, "gan_critic": gan})

    # -- statistics
    def critic_stats(self, engine, batch: dict) -> dict[str, float]:
        """The critic's denoising loss per sigma bin, and its use of the conditioning."""
        from sgm.modules.distillation.rollout import STREAM_CRITIC

        loss_fn = engine.critic_loss_fn
        with preserved_rng():
            inputs = engine.prepare_inputs(batch)
            x0, _ = engine.rollout(inputs, STREAM_CRITIC)  # (N, ...)
            sigma = loss_fn.sample_sigmas(x0, inputs.num_frames)  # (N,)
            noise = loss_fn.sample_noise(x0, inputs.num_frames)
        x_noisy = x0 + append_dims(sigma, x0.ndim) * noise
        w = append_dims(loss_fn.loss_weighting(sigma), x0.ndim)

        def row_loss(c: dict) -> torch.Tensor:
            return loss_fn.get_loss(engine.fake_score(x_noisy, sigma, c, **inputs.model_kwargs), x0, w)

        true = row_loss(inputs.cond)
        shuffled = row_loss(shuffled_cond(inputs.cond, x0.shape[0], inputs.num_frames))
        out = per_bin(true, sigma, self.sigma_bins, "critic/loss_")
        out["critic/cond_gain"] = float(shuffled.mean() - true.mean())
        return out

    def dmd_stats(self, engine, batch: dict) -> tuple[dict[str, float], dict[str, torch.Tensor], int]:
        from sgm.modules.distillation.losses import dmd_loss
        from sgm.modules.distillation.rollout import STREAM_GENERATOR

        with preserved_rng():  # the generator step's own x0, sigmas and noise
            inputs = engine.prepare_inputs(batch)
            x0, _ = engine.rollout(inputs, STREAM_GENERATOR)  # (N, ...)
            x_t, sigma = engine.noised(x0, engine.dmd_sigma_sampler, inputs)  # the engine's own noising
        kwargs = inputs.model_kwargs
        pred_real = engine.real_score(x_t, sigma, inputs.cond, uc=inputs.uc, **kwargs)  # (N, ...)
        pred_fake = engine.fake_score(x_t, sigma, inputs.cond, **kwargs)
        _, stats = dmd_loss(x0, pred_real, pred_fake, inputs.num_frames)  # DMD eq. 7-8
        gap = (pred_real - pred_fake).abs().flatten(1).mean(dim=1)  # (N,)
        out = {"dmd/normalizer_mean": float(stats.normalizer.mean()), "dmd/normalizer_min": float(stats.normalizer.min()),
               "dmd/grad_abs_mean": float(stats.grad.abs().mean()), "dmd/grad_abs_max": float(stats.grad.abs().max()),
               "dmd/gap": float(gap.mean())}
        out |= per_bin(gap, sigma, self.sigma_bins, "dmd/gap_")
        # does the generator's output depend on its condition? (the teacher tells, unguided)
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
        return out, images, inputs.num_frames

    def teacher_reference(self, engine, inputs) -> tuple[float, float]:
        """Mean / std of teacher samples (Euler, `teacher_steps`, the teacher's CFG), computed once."""
        if self.teacher_stats is None:
            rows = inputs.shape[0]
            index = torch.arange(self.teacher_samples) % rows
            if inputs.num_frames > 1:  # whole clips only
                clips = max(1, self.teacher_samples // inputs.num_frames)
                index = (torch.arange(clips) % (rows // inputs.num_frames)).repeat_interleave(inputs.num_frames)
                index = index * inputs.num_frames + torch.arange(inputs.num_frames).repeat(clips)
            take = lambda d: {k: v[index.to(v.device)] if isinstance(v, torch.Tensor) and v.ndim > 0 and v.shape[0] == rows
                              else v for k, v in d.items()}
            kwargs = inputs.model_kwargs
            sigmas = teacher_sigmas(engine, self.teacher_steps).to(engine.device)
            gen = torch.Generator().manual_seed(0)  # its own stream: the global RNG is not used
            x = torch.randn((len(index), *inputs.shape[1:]), generator=gen).to(engine.device) * sigmas[0]
            denoise = lambda x, s: engine.real_score(x, s.expand(x.shape[0]), take(inputs.cond), uc=take(inputs.uc),
                                                     **kwargs)
            x = euler(denoise, x, sigmas)
            self.teacher_stats = (float(x.mean()), float(x.float().std()))
        return self.teacher_stats


def teacher_sigmas(engine, steps: int) -> torch.Tensor:
    """`steps` sigmas spread over the DMD sampler's (the teacher's) schedule, then 0 -> (steps + 1,)."""
    full = getattr(engine.dmd_sigma_sampler, "sigmas", None)
    if full is None:
        from sgm.modules.diffusionmodules.discretizer import EDMDiscretization

        full = EDMDiscretization()(1000, do_append_zero=False)
    full = torch.as_tensor(full, dtype=torch.float32)
    index = torch.linspace(0, len(full) - 1, steps).round().long()
    return torch.cat([full[index], full.new_zeros(1)])


def euler(denoise: Callable, x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """EDM Algorithm 1 without the Heun correction: x <- x + (s_next - s) (x - D(x; s)) / s."""
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
        d_cur = (x - denoise(x, sigma)) / sigma
        x = x + (sigma_next - sigma) * d_cur
    return x


# ---------------------------------------------------------------------------------- choice
def probe_class_for(engine_class: type) -> type | None:
    """The probe class of an engine class (the most specific class first); None: update ratios only."""
    from sgm.diagnostics.vae import VAEProbe
    from sgm.models.autoencoder_training import TrainableAutoencodingEngine
    from sgm.models.diffusion import DiffusionEngine
    from sgm.models.dmd import DMDEngine

    choices = ((DMDEngine, DMDProbe), (DiffusionEngine, DiffusionProbe), (TrainableAutoencodingEngine, VAEProbe))
    for cls, probe in choices:
        if issubclass(engine_class, cls):
            return probe
    return None


def probe_for(engine, **params):
    """The probe of an engine (the most specific class first); None: update ratios only.

    A DiffusionEngine whose denoiser has `RectifiedFlowScaling` gets `FlowProbe` (sgm/diagnostics/flow.py).
    """
    from sgm.diagnostics.flow import FlowProbe
    from sgm.diagnostics.vae import VAEProbe
    from sgm.models.autoencoder_training import TrainableAutoencodingEngine
    from sgm.models.diffusion import DiffusionEngine
    from sgm.models.dmd import DMDEngine
    from sgm.modules.diffusionmodules.denoiser_scaling import RectifiedFlowScaling

    choices = (  # (engine class, denoiser scaling class or None for any, probe)
        (DMDEngine, None, DMDProbe),
        (DiffusionEngine, RectifiedFlowScaling, FlowProbe),
        (DiffusionEngine, None, DiffusionProbe),
        (TrainableAutoencodingEngine, None, VAEProbe),
    )
    for engine_cls, scaling_cls, probe in choices:
        scaling = getattr(getattr(engine, "denoiser", None), "scaling", None)
        if isinstance(engine, engine_cls) and (scaling_cls is None or isinstance(scaling, scaling_cls)):
            return probe(**params)
    return None
