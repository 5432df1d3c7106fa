"""DINO-style semantic supervision of the generator, as a DMDEngine term (`dino`).

A frozen feature encoder f (config) maps images to features; two projection heads map features to K
prototype logits. The student head g_s sees the generator's samples, the teacher head g_t (an EMA of
g_s, never trained by gradient) sees a target image of the same condition; the loss is the
cross-entropy of the teacher's centred, sharpened softmax against the student's log-softmax:

    P_t = softmax((g_t(f(x_target)) - c) / T_t)        no grad; c = EMA of the batch mean of g_t(f(.))
    P_s = log_softmax(g_s(f(x0)) / T_s)                 grad into x0 (the generator) and g_s
    L_dino = -mean_rows sum_k P_t[k] * P_s[k]

The target is the batch's real data when it has it (`target: auto` or `real`), else the teacher's x0
estimate pred_real at the DMD loss's noisy sample (`pred_real`). After each generator step the
teacher head moves toward the student head (`teacher_momentum`) and the centre toward the batch mean
(`center_momentum`). The student head is trained by the generator's optimiser.

Logged (and read by the diagnostics, sgm/diagnostics/rules.py `dino_verdicts`):
    ent/teacher, ent/student   mean entropy (nats) of P_t and of softmax(g_s / T_s); log K = uniform
    loss/dino                  the unweighted loss
Encoders: `sgm.metrics.digits.DigitFeatures` (the digit classifier's 128-d penultimate features) for
digits (`encoder_config`); for SVD-family models the CLIP image tower the engine's conditioner already
holds (`conditioner_key: cond_frames_without_noise`, no second copy), fed with pixels: the latents are
decoded by the engine's frozen first stage with the gradient passing through (`decode`, on by default
with `conditioner_key`; full-size SVD then backpropagates through the VAE decoder: memory). Rows are
images: a video batch's frames are encoded one by one.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from sgm.modules.distillation.terms import DMDTerm, GeneratorStep
from sgm.util import instantiate_from_config

TARGETS = ("auto", "real", "pred_real")


class ProjectionHead(nn.Module):
    """features (N, D) -> prototype logits (N, K): MLP, l2-normalised bottleneck, linear prototypes."""

    def __init__(
        self,
        in_dim: int,  # D, encoder feature width
        num_prototypes: int = 64,  # K
        hidden_dim: int = 256,  # MLP width
        bottleneck_dim: int = 64,  # width before the prototypes
    ) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, bottleneck_dim))
        self.prototypes = nn.Linear(bottleneck_dim, num_prototypes, bias=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        z = F.normalize(self.mlp(features.float()), dim=-1)  # (N, bottleneck) on the unit sphere
        return self.prototypes(z)  # (N, K)


def entropy(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean entropy (nats) of softmax(logits / T) over rows."""
    log_p = F.log_softmax(logits.float() / temperature, dim=-1)  # (N, K)
    return -(log_p.exp() * log_p).sum(dim=-1).mean()


class SemanticTerm(DMDTerm):
    weight_params = {"weight": ("generator", "dino")}

    def __init__(
        self,
        feature_dim: int,  # D
        encoder_config: dict | None = None,  # {target, params}: frozen encoder, images (N, ...) -> features (N, D)
        conditioner_key: str | None = None,  # or: the engine conditioner's embedder of this batch key as the encoder
        decode: bool | None = None,  # decode latents to pixels first (engine's first stage); None: with conditioner_key
        num_prototypes: int = 64,  # K
        hidden_dim: int = 256,  # head MLP width
        student_temperature: float = 0.1,  # T_s
        teacher_temperature: float = 0.04,  # T_t (< T_s: sharper targets)
        teacher_momentum: float = 0.99,  # EMA of the teacher head toward the student head, per generator step
        center_momentum: float = 0.9,  # EMA of the centre c
        weight: float = 1.0,  # weight of `dino` in the generator loss
        target: str = "auto",  # auto: real data when the batch has it, else pred_real; or real / pred_real
        train_head: bool = True,  # False: the student head stays at its init (a planted fault in tests)
    ) -> None:
        super().__init__()
        if target not in TARGETS:
            raise ValueError(f"SemanticTerm.target must be one of {TARGETS}, got {target!r}")
        if student_temperature <= 0 or teacher_temperature <= 0:
            raise ValueError(f"temperatures must be > 0, got T_s={student_temperature}, T_t={teacher_temperature}")
        if (encoder_config is None) == (conditioner_key is None):
            raise ValueError("SemanticTerm needs exactly one of encoder_config (its own frozen encoder) and "
                             "conditioner_key (the engine conditioner's embedder of that batch key)")
        self.encoder = instantiate_from_config(encoder_config) if encoder_config is not None else None
        if self.encoder is not None:
            self.encoder.eval().requires_grad_(False)
        self.conditioner_key = conditioner_key
        self.decode = conditioner_key is not None if decode is None else decode
        self.student_head = ProjectionHead(feature_dim, num_prototypes, hidden_dim)
        self.student_head.requires_grad_(train_head)
        self.teacher_head = copy.deepcopy(self.student_head).requires_grad_(False)
        self.register_buffer("center", torch.zeros(num_prototypes))
        self.T_s, self.T_t = student_temperature, teacher_temperature
        self.teacher_momentum, self.center_momentum = teacher_momentum, center_momentum
        self.target = target
        self.generator_weights = {"dino": weight}
        self._batch_center: torch.Tensor | None = None  # (K,) of the last generator loss, for the centre EMA

    def train(self, mode: bool = True) -> "SemanticTerm":
        super().train(mode)
        if self.encoder is not None:
            self.encoder.eval()  # frozen: batch statistics never move
        return self

    def frames(self, step: GeneratorStep) -> int | None:
        return step.inputs.num_frames if self.decode else None  # the video decoder's T

    def features(self, engine, latents: torch.Tensor, num_frames: int | None) -> torch.Tensor:
        """Latents (N, ...) -> encoder features (N, D); the gradient reaches the latents, never the encoder."""
        images = engine.decode_first_stage(latents, num_video_frames=num_frames) if self.decode else latents
        encoder = self.encoder if self.encoder is not None else engine.conditioner.embedder(self.conditioner_key)
        return encoder(images.float()).reshape(images.shape[0], -1)  # (N, D)

    def target_images(self, engine, step: GeneratorStep) -> torch.Tensor:
        use_real = self.target == "real" or (self.target == "auto" and engine.input_key in step.batch)
        return engine.real_latents(step.batch, "SemanticTerm(target=real)") if use_real else step.pred_real

    def generator_losses(self, engine, step: GeneratorStep):
        if not self.is_on("dino"):
            return {}, {}
        with torch.no_grad():
            target = self.features(engine, self.target_images(engine, step), self.frames(step))
            teacher_logits = self.teacher_head(target)  # (N, K)
            p_t = F.softmax((teacher_logits - self.center) / self.T_t, dim=-1)  # (N, K)
            self._batch_center = teacher_logits.mean(dim=0)
        student_logits = self.student_head(self.features(engine, step.x0, self.frames(step)))  # (N, K), grad into x0, g_s
        loss = -(p_t * F.log_softmax(student_logits / self.T_s, dim=-1)).sum(dim=-1).mean()
        ent_t = -(p_t * p_t.clamp_min(1e-12).log()).sum(dim=-1).mean()
        log = {"loss/dino": loss.detach(), "ent/teacher": ent_t, "ent/student": entropy(student_logits.detach(), self.T_s),
               "semantic/entropy_max": math.log(p_t.shape[-1])}
        return {"dino": loss}, log

    def generator_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.student_head.parameters() if p.requires_grad]

    @torch.no_grad()
    def after_generator_step(self) -> None:
        """Teacher head <- EMA of the student head; centre <- EMA of the last batch's teacher logits."""
        for t, s in zip(self.teacher_head.parameters(), self.student_head.parameters()):
            t.mul_(self.teacher_momentum).add_(s.detach(), alpha=1.0 - self.teacher_momentum)
        if self._batch_center is not None:
            self.center.mul_(self.center_momentum).add_(self._batch_center, alpha=1.0 - self.center_momentum)
            self._batch_center = None

    def parameter_groups(self) -> dict[str, str]:
        return {"dino_head": "student_head."}


__all__ = ["ProjectionHead", "SemanticTerm", "entropy"]
