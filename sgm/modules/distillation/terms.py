"""DMDEngine's loss terms as objects: what one generator / critic step computed, and the optional terms.

The engine computes its core losses (the DMD loss for the generator, the denoising loss for the
critic) and hands the step to each configured term:

    model:
      params:
        terms:
          gan: {target: sgm.modules.distillation.terms.GANTerm, params: {head_config: ..., generator_weight: 0.1}}
          regression: {target: sgm.modules.distillation.terms.RegressionTerm, params: {weight: 0.25}}

A term owns its weights and any trainable head. It returns *unweighted* scalar losses, with graph,
under names of its own (`generator_losses` / `critic_losses`); the engine multiplies by the term's
`weights[name]` and sums. A name whose weight is 0 is not computed. Because every loss of a step is
returned separately, the diagnostics differentiate each one on its own from a single forward pass.

What a term may ask of the engine (public methods of `sgm.models.dmd.DMDEngine`): `generator_fn`,
`critic_features`, `real_latents`, `sampler`, `device`.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import nn

from sgm.modules.diffusionmodules.sampling_utils import initial_noise
from sgm.modules.distillation.losses import gan_critic_loss, gan_generator_loss, regression_loss
from sgm.util import instantiate_from_config


@dataclass
class DMDInputs:
    """What both losses need from a batch."""

    cond: dict  # conditioner output, one row per latent row
    uc: dict  # unconditional conditioning for the teacher's CFG
    model_kwargs: dict  # batch entries passed to every network (num_video_frames, ...)
    shape: tuple  # (N, ...) shape of the generated latent, N = B*T
    num_frames: int  # T


@dataclass
class GeneratorStep:
    """One generator step: the rollout and the DMD loss's noising and score estimates."""

    batch: dict
    inputs: DMDInputs
    x0: torch.Tensor  # (N, ...) generator output, with grad through the exit step
    exit_step: int  # k of the backward simulation
    x_t: torch.Tensor  # (N, ...) x0 (detached) + sigma * eps
    sigma: torch.Tensor  # (N,) DMD-loss sigmas, one per clip
    pred_real: torch.Tensor  # (N, ...) teacher's x0 estimate at x_t (with CFG), no grad
    pred_fake: torch.Tensor  # (N, ...) critic's x0 estimate at x_t, no grad


@dataclass
class CriticStep:
    """One critic step: the generated samples and the denoising loss's draws."""

    batch: dict
    inputs: DMDInputs
    x0: torch.Tensor  # (N, ...) generator output, no grad
    exit_step: int
    sigma: torch.Tensor  # (N,) the denoising loss's sigmas
    noise: torch.Tensor  # (N, ...) its eps
    loss_rows: torch.Tensor  # (N,) the critic's denoising loss per row, with graph


@dataclass
class LossTerms:
    """Every loss of one step, unweighted and with graph, their weights, and what was logged."""

    losses: dict[str, torch.Tensor]  # name -> scalar (the terms that ran)
    weights: dict[str, float]  # name -> weight in the role's total (also the terms switched off by weight 0)
    log: dict[str, Any]  # detached statistics
    step: GeneratorStep | CriticStep

    def weighted(self, name: str) -> torch.Tensor:
        return self.weights[name] * self.losses[name]

    def total(self) -> torch.Tensor:
        return sum(self.weighted(name) for name in self.losses)


class DMDTerm(nn.Module):
    """Base of the optional terms: no losses, no parameters, nothing to do after a step.

    `generator_weights` / `critic_weights`: {loss name: weight} of the losses the term adds to each role.
    `weight_params`: {constructor parameter: (role, loss name)} of the parameters that are those weights
    (scripts/ablate.py zeroes them by their config key).
    """

    generator_weights: dict[str, float] = {}
    critic_weights: dict[str, float] = {}
    weight_params: dict[str, tuple[str, str]] = {}

    def generator_losses(self, engine, step: GeneratorStep) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """-> ({name: unweighted scalar loss with graph}, {log key: detached value})."""
        return {}, {}

    def critic_losses(self, engine, step: CriticStep) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        return {}, {}

    def generator_parameters(self) -> list[nn.Parameter]:
        """Parameters the generator's optimiser trains (e.g. a projection head)."""
        return []

    def critic_parameters(self) -> list[nn.Parameter]:
        """Parameters the critic's optimiser trains (e.g. a discriminator head)."""
        return []

    def after_generator_step(self) -> None:
        """Called after each generator optimiser step (e.g. an EMA of a head)."""

    def parameter_groups(self) -> dict[str, str]:
        """{group name: parameter-name prefix inside this term} whose update ratio the diagnostics log."""
        return {}

    def is_on(self, name: str) -> bool:
        return {**self.generator_weights, **self.critic_weights}.get(name, 0.0) != 0.0


@contextmanager
def no_param_grads(*modules: nn.Module) -> Iterator[None]:
    """Gradients flow through the modules to their inputs, never into their parameters."""
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


class GANTerm(DMDTerm):
    """DMD2 sec. 4.3: a real/fake classifier on the critic's bottleneck features at noised samples.

    Generator: non-saturating softplus(-D(G(z))) (`gan`), through the critic without training it.
    Critic: softplus(-D(x)) + softplus(D(G(z))) (`gan_critic`) on real latents from the batch; the
    head is trained with the critic.
    """

    weight_params = {"generator_weight": ("generator", "gan"), "critic_weight": ("critic", "gan_critic")}

    def __init__(
        self,
        head_config: dict,  # {target, params}, e.g. losses.BottleneckClassifier
        generator_weight: float = 1.0e-3,  # weight of `gan` in the generator loss
        critic_weight: float = 1.0e-2,  # weight of `gan_critic` in the critic loss
    ) -> None:
        super().__init__()
        self.head = instantiate_from_config(head_config)
        self.generator_weights = {"gan": generator_weight}
        self.critic_weights = {"gan_critic": critic_weight}

    def logits(self, engine, x0: torch.Tensor, inputs: DMDInputs) -> torch.Tensor:
        """Classifier logits (N,) on the critic's bottleneck at x0 noised with the critic's sigmas."""
        return self.head(engine.critic_features(x0, inputs))

    def generator_losses(self, engine, step: GeneratorStep):
        if not self.is_on("gan"):
            return {}, {}
        with no_param_grads(engine.fake_score, self.head):
            loss = gan_generator_loss(self.logits(engine, step.x0, step.inputs)).mean()
        return {"gan": loss}, {"loss/gan_generator": loss.detach()}

    def critic_losses(self, engine, step: CriticStep):
        if not self.is_on("gan_critic"):
            return {}, {}
        x_real = engine.real_latents(step.batch, "the GAN term")  # (N, ...)
        logits_real = self.logits(engine, x_real, step.inputs)
        logits_fake = self.logits(engine, step.x0, step.inputs)
        loss = gan_critic_loss(logits_real, logits_fake)
        return {"gan_critic": loss}, {"loss/gan_critic": loss.detach(), "gan/logits_real": logits_real.detach().mean(),
                                      "gan/logits_fake": logits_fake.detach().mean()}

    def critic_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.head.parameters() if p.requires_grad]

    def parameter_groups(self) -> dict[str, str]:
        return {"gan_head": "head."}


class RegressionTerm(DMDTerm):
    """DMD1 sec. 3.3: ||G(x_0) - x0_teacher||^2 on teacher ODE pairs from the batch (`regression`).

    x_0 = sqrt(1 + sigma_0^2) * noise, the samplers' start, at the generator's first sigma.
    """

    weight_params = {"weight": ("generator", "regression")}

    def __init__(
        self,
        weight: float = 0.25,  # weight of `regression` in the generator loss
        keys: tuple = ("ode_noise", "ode_x0"),  # batch keys of the pairs (noise, teacher x0)
    ) -> None:
        super().__init__()
        self.generator_weights = {"regression": weight}
        self.keys = tuple(keys)

    def generator_losses(self, engine, step: GeneratorStep):
        if not self.is_on("regression"):
            return {}, {}
        noise, x0_teacher = (step.batch[k] for k in self.keys)
        sigma_0 = engine.sampler.generator_sigmas(device=engine.device)[0]
        s_in = noise.new_ones([noise.shape[0]]) * sigma_0  # (N,)
        x0 = engine.generator_fn(step.inputs)(initial_noise(noise.float(), sigma_0), s_in)  # (N, ...)
        loss = regression_loss(x0, x0_teacher, step.inputs.num_frames).mean()
        return {"regression": loss}, {"loss/regression": loss.detach()}


__all__ = ["CriticStep", "DMDInputs", "DMDTerm", "GANTerm", "GeneratorStep", "LossTerms", "RegressionTerm",
           "no_param_grads"]
