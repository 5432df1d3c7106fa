"""`DMDEngine`: DMD2 distillation of a diffusion teacher into a few-step generator.

Roles (DESIGN.md, "DMD extension"):

    generator    self.model + self.denoiser (the engine's own network: sample(), log_images() and the
                 samplers run the student), trainable, with EMA
    real_score   the teacher, frozen, from `real_score_config`          (`real_score.*` in the state dict)
    fake_score   the critic, trainable, from `fake_score_config`        (`fake_score.*`)
    conditioner, first_stage_model: built once, shared, frozen

`teacher_ckpt_path` (one file, e.g. a released SVD checkpoint or a digits teacher's last.ckpt)
initialises every role that has no file of its own: the teacher, the critic (unless
`critic_init_from_teacher: False`), the generator (unless `ckpt_path` names another file), the
conditioner and the first stage. When the file holds EMA weights (`model_ema.*`) they are used.

Training is manual optimisation, one batch = one iteration = one global step:
    every `generator_update_interval` steps   generator_loss -> generator optimiser (+ EMA update)
    every step                                critic_loss    -> critic optimiser
`global_step` counts iterations: the critic optimiser's steps go through Lightning's counter, the
generator's through the strategy directly (precision plugin included) so they are not counted
twice. Both optimisers and LR schedulers, the EMA, all roles, the step counter and the RNG state are
in the checkpoint; `-r` continues the run.
"""
from __future__ import annotations

import random
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from sgm.models.checkpoint import load_weights, read_state_dict, select_prefix
from sgm.models.diffusion import DiffusionEngine
from sgm.modules.diffusionmodules.loss import frames_per_clip
from sgm.modules.distillation.losses import (
    clip_sigmas,
    dmd_loss,
    gan_critic_loss,
    gan_generator_loss,
    regression_loss,
)
from sgm.modules.distillation.roles import ema_network_weights
from sgm.modules.distillation.rollout import (
    STREAM_CRITIC,
    STREAM_GENERATOR,
    backward_simulation,
    draw_exit_step,
    initial_noise,
)
from sgm.modules.distillation.sampler import FewStepSampler
from sgm.modules.ema import LitEma
from sgm.util import ConfigError, append_dims, broadcast_cond_to_rows, default, freeze, instantiate_from_config

DEFAULT_OPTIMIZER = {"target": "torch.optim.AdamW", "params": {"betas": [0.0, 0.999], "weight_decay": 0.0}}
DEFAULT_DMD_SIGMAS = {  # the teacher's EDM schedule, indices 2%..98% (losses.RestrictedDiscreteSampling)
    "target": "sgm.modules.distillation.losses.RestrictedDiscreteSampling",
    "params": {"discretization_config": {"target": "sgm.modules.diffusionmodules.discretizer.EDMDiscretization"}},
}
NETWORK_PREFIX = "model.diffusion_model."
REJECTED = ("optimizer_config", "scheduler_config", "loss_fn_config")


@dataclass
class DMDInputs:
    """What both losses need from a batch."""

    cond: dict  # conditioner output, one row per latent row
    uc: dict  # unconditional conditioning for the teacher's CFG
    model_kwargs: dict  # batch entries passed to every network (num_video_frames, ...)
    shape: tuple  # (N, ...) shape of the generated latent, N = B*T
    num_frames: int  # T


class DMDEngine(DiffusionEngine):
    def __init__(
        self,
        network_config: dict,  # generator network (the student; same architecture as the teacher)
        denoiser_config: dict,  # generator denoiser (scaling)
        first_stage_config: dict,  # autoencoder (shared, frozen)
        real_score_config: dict,  # {target, params}: teacher role, e.g. roles.ScoreModel with a guider
        fake_score_config: dict,  # {target, params}: critic role (trainable)
        sampler_config: dict,  # FewStepSampler: its discretization is the generator's schedule
        critic_loss_config: dict,  # StandardDiffusionLoss: the critic's sigmas and weighting
        conditioner_config: dict | None = None,  # shared conditioner (frozen); None = unconditional
        dmd_sigma_sampler_config: dict | None = None,  # DMD-loss sigmas; default DEFAULT_DMD_SIGMAS
        teacher_ckpt_path: str | None = None,  # file that initialises the roles (see module doc)
        ckpt_path: str | None = None,  # generator init file (engine layout); None: the teacher
        critic_init_from_teacher: bool = True,  # False: the critic keeps its own init / own file
        init_from_ema: bool = True,  # use a file's EMA weights (model_ema.*) when it has them
        learning_rate: float = 1.0e-5,  # base LR (main.py passes model.base_learning_rate)
        generator_learning_rate: float | None = None,  # default learning_rate
        critic_learning_rate: float | None = None,  # default learning_rate
        generator_optimizer_config: dict | None = None,  # default AdamW(betas=(0, 0.999))
        critic_optimizer_config: dict | None = None,  # default AdamW(betas=(0, 0.999))
        generator_scheduler_config: dict | None = None,  # .schedule(generator step) -> LR factor
        critic_scheduler_config: dict | None = None,  # .schedule(critic step) -> LR factor
        generator_update_interval: int = 5,  # generator steps at global steps 0, k, 2k, ...
        generator_grad_clip: float | None = None,  # max grad norm of the generator (None: off)
        critic_grad_clip: float | None = None,  # max grad norm of the critic (+ GAN head)
        dmd_weight: float = 1.0,  # weight of the DMD loss
        gan_head_config: dict | None = None,  # e.g. losses.BottleneckClassifier; None: no GAN term
        gan_generator_weight: float = 1.0e-3,  # weight of the generator's GAN term
        gan_critic_weight: float = 1.0e-2,  # weight of the discriminator term in the critic loss
        regression_weight: float = 0.0,  # > 0: regression on teacher ODE pairs from the batch
        regression_keys: tuple = ("ode_noise", "ode_x0"),  # batch keys (noise, teacher x0) of the pairs
        uc_keys: list | None = None,  # inputs zeroed in the teacher's uc; default all (SVD: the cond frames)
        mask_key: str = "dmd_mask",  # batch key of the frame mask (1 = in the DMD loss), if present
        latent_shape: list | None = None,  # per-row latent shape; None: encode batch[input_key]
        batch2model_keys: list | None = None,  # batch entries passed to the networks
        seed: int = 0,  # seeds the exit-step draws (with the global step)
        allow_random_teacher: bool = False,  # permit a ScoreModel teacher without weights (tests)
        save_teacher_weights: bool = True,  # False: real_score.* left out of checkpoints, reloaded
        **engine_kwargs: Any,  # DiffusionEngine's other params: use_ema, input_key, scale_factor, ...
    ):
        for key in REJECTED:
            if engine_kwargs.pop(key, None) is not None:
                raise ConfigError(f"DMDEngine does not use {key}: see generator_/critic_ optimizer, "
                                  "scheduler and critic_loss_config")
        super().__init__(network_config, denoiser_config, first_stage_config, conditioner_config,
                         sampler_config=sampler_config, learning_rate=learning_rate, **engine_kwargs)
        self.automatic_optimization = False
        if not isinstance(self.sampler, FewStepSampler):
            raise ConfigError("DMDEngine needs sampler_config to be a FewStepSampler (the generator's "
                              f"schedule), got {type(self.sampler).__name__}")
        self.conditioner = freeze(self.conditioner)
        self.real_score = freeze(instantiate_from_config(real_score_config))
        self.fake_score = instantiate_from_config(fake_score_config)
        if not any(p.requires_grad for p in self.fake_score.parameters()):
            raise ConfigError("fake_score has no trainable parameters: set fake_score_config.params.trainable: True")
        self.critic_loss_fn = instantiate_from_config(critic_loss_config)
        self.dmd_sigma_sampler = instantiate_from_config(default(dmd_sigma_sampler_config, DEFAULT_DMD_SIGMAS))
        self.gan_head = instantiate_from_config(gan_head_config) if gan_head_config is not None else None
        self.generator_lr = default(generator_learning_rate, learning_rate)
        self.critic_lr = default(critic_learning_rate, learning_rate)
        self.optimizer_configs = (default(generator_optimizer_config, DEFAULT_OPTIMIZER),
                                  default(critic_optimizer_config, DEFAULT_OPTIMIZER))
        self.scheduler_configs = (generator_scheduler_config, critic_scheduler_config)
        if generator_update_interval < 1:
            raise ConfigError(f"generator_update_interval must be >= 1, got {generator_update_interval}")
        self.generator_update_interval = generator_update_interval
        self.grad_clips = {"generator": generator_grad_clip, "critic": critic_grad_clip}
        self.dmd_weight = dmd_weight
        self.gan_generator_weight = gan_generator_weight
        self.gan_critic_weight = gan_critic_weight
        self.regression_weight = regression_weight
        self.regression_keys = tuple(regression_keys)
        self.uc_keys = uc_keys
        self.mask_key = mask_key
        self.latent_shape = tuple(latent_shape) if latent_shape is not None else None
        self.batch2model_keys = list(default(batch2model_keys, []))
        self.seed = seed
        self.save_teacher_weights = save_teacher_weights
        self._pending_rng: dict | None = None
        if not _on_meta(self):  # --dry-run builds on the meta device: nothing to load
            self._init_weights(teacher_ckpt_path, ckpt_path, critic_init_from_teacher, init_from_ema,
                               allow_random_teacher)

    # ------------------------------------------------------------------ weights
    def _init_weights(self, teacher: str | None, own: str | None, critic_from_teacher: bool, use_ema: bool,
                      allow_random_teacher: bool) -> None:
        teacher_sd = self._read(teacher, use_ema) if teacher is not None else None
        if teacher_sd is not None:
            for name in ("conditioner", "first_stage_model"):
                report = load_weights(getattr(self, name), select_prefix(teacher_sd, name + "."), teacher, ())
                print(f"[DMDEngine] {name}: {report.summary()}")
            for role, wanted in ((self.real_score, True), (self.fake_score, critic_from_teacher)):
                if wanted and _wants_weights(role):
                    role.load_network_weights(teacher_sd, path=teacher)
        generator_sd = self._read(own, use_ema) if own is not None else teacher_sd
        if generator_sd is not None:
            load_weights(self.model, select_prefix(generator_sd, "model."), own or teacher, ("diffusion_model.",))
        if _wants_weights(self.real_score) and teacher_sd is None and not allow_random_teacher:
            raise ConfigError("the teacher has no weights: set model.params.teacher_ckpt_path=<file> "
                              "(or real_score_config.params.ckpt_path)")
        if self.use_ema:  # the shadow starts from the initialised student
            self.model_ema = LitEma(self.model, decay=float(self.model_ema.decay))

    def _read(self, path: str, use_ema: bool) -> dict[str, torch.Tensor]:
        state_dict = read_state_dict(path)
        ema = ema_network_weights(state_dict) if use_ema else None
        return {**state_dict, **ema} if ema is not None else state_dict

    # ------------------------------------------------------------------ inputs and rollout
    def prepare_inputs(self, batch: dict) -> DMDInputs:
        with torch.no_grad():
            c, uc = self.conditioner.get_unconditional_conditioning(
                batch, force_uc_zero_embeddings=default(self.uc_keys, self._embedder_input_keys()))
        if self.latent_shape is not None:
            rows = max(v.shape[0] for v in batch.values() if isinstance(v, torch.Tensor) and v.ndim > 0)
            shape = (rows, *self.latent_shape)
        else:
            shape = tuple(self.encode_first_stage(self.get_input(batch)).shape)
        num_frames = frames_per_clip(batch, shape[0])
        model_kwargs = {k: batch[k] for k in self.batch2model_keys if k in batch}
        return DMDInputs(broadcast_cond_to_rows(c, shape[0]), broadcast_cond_to_rows(uc, shape[0]),
                         model_kwargs, shape, num_frames)

    def generator_fn(self, inputs: DMDInputs):
        """G(x, sigma) -> x0_hat, the student's denoiser."""
        return lambda x, sigma: self.denoiser(self.model, x, sigma, inputs.cond, **inputs.model_kwargs)

    def rollout(self, inputs: DMDInputs, stream: int) -> tuple[torch.Tensor, int]:
        """Backward simulation -> (x0 (N, ...), exit step); grad only through the exit step."""
        sigmas = self.sampler.generator_sigmas(device=self.device)  # (K,)
        exit_step = draw_exit_step(len(sigmas), self.global_step, self.seed, stream)
        noise = torch.randn(inputs.shape, device=self.device)  # (N, ...)
        return backward_simulation(self.generator_fn(inputs), sigmas, noise, exit_step), exit_step

    def noised(self, x0: torch.Tensor, sampler, inputs: DMDInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """x_t = x0 + sigma * eps with one sigma per clip from `sampler` -> (x_t, sigma (N,))."""
        sigma = clip_sigmas(sampler, x0.shape[0], inputs.num_frames, x0.device)  # (N,) one per clip
        return x0 + append_dims(sigma, x0.ndim) * torch.randn_like(x0), sigma  # x_t = x0 + sigma eps

    def gan_logits(self, x0: torch.Tensor, inputs: DMDInputs) -> torch.Tensor:
        """Classifier logits (N,) on the critic's bottleneck at x0 + sigma eps (critic sigmas)."""
        x_t, sigma = self.noised(x0, self.critic_loss_fn.sigma_sampler, inputs)
        _, h_mid = self.fake_score(x_t, sigma, inputs.cond, return_features=True, **inputs.model_kwargs)
        return self.gan_head(h_mid)

    # ------------------------------------------------------------------ the two losses
    def generator_loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        """DESIGN.md steps 1-5: DMD (+ GAN, + regression). The critic gets no gradient from it."""
        inputs = self.prepare_inputs(batch)
        x0, exit_step = self.rollout(inputs, STREAM_GENERATOR)  # (N, ...) with grad
        x_t, sigma = self.noised(x0.detach(), self.dmd_sigma_sampler, inputs)
        with torch.no_grad():
            pred_real = self.real_score(x_t, sigma, inputs.cond, uc=inputs.uc, **inputs.model_kwargs)
            pred_fake = self.fake_score(x_t, sigma, inputs.cond, **inputs.model_kwargs)
        loss_dmd, stats = dmd_loss(x0, pred_real, pred_fake, inputs.num_frames, batch.get(self.mask_key))
        loss = self.dmd_weight * loss_dmd.mean()
        log = {"loss/dmd": loss_dmd.mean().detach(), "dmd/normalizer": stats.normalizer.mean(),
               "dmd/grad_abs_mean": stats.grad.abs().mean(), "dmd/gap": (pred_real - pred_fake).abs().mean(),
               "dmd/sigma_mean": sigma.mean(), "dmd/exit_step": float(exit_step),
               "gen/x0_mean": x0.detach().mean(), "gen/x0_std": x0.detach().std()}
        if self.gan_head is not None and self.gan_generator_weight > 0:
            with _no_param_grads(self.fake_score, self.gan_head):
                loss_gan = gan_generator_loss(self.gan_logits(x0, inputs)).mean()
            loss = loss + self.gan_generator_weight * loss_gan
            log["loss/gan_generator"] = loss_gan.detach()
        if self.regression_weight > 0:
            loss_reg = self.regression_term(batch, inputs)
            loss = loss + self.regression_weight * loss_reg
            log["loss/regression"] = loss_reg.detach()
        log["loss/generator"] = loss.detach()
        return loss, log

    def regression_term(self, batch: dict, inputs: DMDInputs) -> torch.Tensor:
        """||G(x_0) - x0_teacher||^2 with x_0 = sqrt(1 + sigma_0^2) * noise of a teacher ODE pair."""
        noise, x0_teacher = (batch[k] for k in self.regression_keys)
        sigma_0 = self.sampler.generator_sigmas(device=self.device)[0]
        s_in = noise.new_ones([noise.shape[0]]) * sigma_0  # (N,)
        x0 = self.generator_fn(inputs)(initial_noise(noise.float(), sigma_0), s_in)
        return regression_loss(x0, x0_teacher, inputs.num_frames).mean()

    def critic_loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        """Denoising loss of fake_score on generated samples (+ GAN discriminator term)."""
        inputs = self.prepare_inputs(batch)
        with torch.no_grad():
            x0, exit_step = self.rollout(inputs, STREAM_CRITIC)  # (N, ...)

        def critic_denoiser(network, x, sigma, cond, **kwargs):
            return self.fake_score(x, sigma, cond, **kwargs)

        loss = self.critic_loss_fn._forward(None, critic_denoiser, inputs.cond, x0, batch).mean()
        log = {"loss/critic": loss.detach(), "critic/exit_step": float(exit_step)}
        if self.gan_head is not None:
            if self.input_key not in batch:
                raise ConfigError(f"the GAN term needs real data: the batch has no '{self.input_key}' "
                                  f"(keys: {sorted(batch)}); use a data module that yields target frames")
            x_real = self.encode_first_stage(self.get_input(batch))
            logits_real, logits_fake = self.gan_logits(x_real, inputs), self.gan_logits(x0, inputs)
            loss_gan = gan_critic_loss(logits_real, logits_fake)
            loss = loss + self.gan_critic_weight * loss_gan
            log |= {"loss/gan_critic": loss_gan.detach(), "gan/logits_real": logits_real.detach().mean(),
                    "gan/logits_fake": logits_fake.detach().mean()}
        return loss, log

    # ------------------------------------------------------------------ optimisation
    def generator_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def critic_parameters(self) -> list[nn.Parameter]:
        heads = [self.fake_score] + ([self.gan_head] if self.gan_head is not None else [])
        return [p for m in heads for p in m.parameters() if p.requires_grad]

    def configure_optimizers(self):
        groups = (self.generator_parameters(), self.critic_parameters())
        lrs = (self.generator_lr, self.critic_lr)
        optimizers = [self.instantiate_optimizer_from_config(p, lr, cfg)
                      for p, lr, cfg in zip(groups, lrs, self.optimizer_configs)]
        schedulers = []
        for opt, cfg in zip(optimizers, self.scheduler_configs):
            factor = instantiate_from_config(cfg).schedule if cfg is not None else _constant
            schedulers.append({"scheduler": torch.optim.lr_scheduler.LambdaLR(opt, factor), "interval": "step"})
        return optimizers, schedulers

    def is_generator_step(self) -> bool:
        return self.global_step % self.generator_update_interval == 0

    def training_step(self, batch: dict, batch_idx: int) -> None:
        generator_opt, critic_opt = self.optimizers()
        generator_sched, critic_sched = self.lr_schedulers()
        step, generator_step = self.global_step, self.is_generator_step()
        log = {}
        if generator_step:
            log |= self._update("generator", self.generator_loss, batch, generator_opt, generator_sched)
            if self.use_ema:
                self.model_ema(self.model)
        log |= self._update("critic", self.critic_loss, batch, critic_opt, critic_sched)
        log |= {"lr/generator": generator_opt.param_groups[0]["lr"], "lr/critic": critic_opt.param_groups[0]["lr"]}
        self.log("loss/critic", log["loss/critic"], prog_bar=True, logger=False)
        if generator_step or (step + 1) % self.trainer.log_every_n_steps == 0:
            self._log_metrics(log, step)

    def _log_metrics(self, metrics: dict, step: int) -> None:
        """One flat dict straight to the loggers, at every generator step and every log_every_n_steps.

        (Through self.log, Lightning would repeat the generator's last values on critic-only steps.)
        """
        values = {key: float(value) for key, value in metrics.items()}
        for logger in self.loggers:
            logger.log_metrics(values, step=step)

    def _update(self, role: str, loss_fn, batch: dict, opt, sched) -> dict:
        with self.toggled_optimizer(opt):
            loss, log = loss_fn(batch)
            opt.zero_grad()
            self.manual_backward(loss)
            params = self.generator_parameters() if role == "generator" else self.critic_parameters()
            max_norm = default(self.grad_clips[role], float("inf"))
            log[f"grad/{role}"] = torch.nn.utils.clip_grad_norm_(params, max_norm)
            if role == "generator":  # not counted: global_step counts iterations (critic steps)
                self.trainer.strategy.optimizer_step(opt.optimizer, closure=_no_closure)
            else:
                opt.step()
        sched.step()
        return log

    def on_train_start(self) -> None:
        """Nothing to check beyond the constructor (the base class requires loss_fn_config)."""

    def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
        """The EMA is updated after generator steps only (in training_step)."""

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["rng_states"] = _capture_rng()
        if not self.save_teacher_weights:
            for key in [k for k in checkpoint["state_dict"] if k.startswith("real_score.")]:
                del checkpoint["state_dict"][key]

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        for key, value in self.real_score.state_dict().items():  # reloaded from the teacher file
            checkpoint["state_dict"].setdefault("real_score." + key, value)
        self._pending_rng = checkpoint.get("rng_states")

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """The first batch after a resume continues the saved RNG streams."""
        if self._pending_rng is None:
            return
        _restore_rng(self._pending_rng)
        self._pending_rng = None
        if self.trainer.world_size > 1:  # rank 0's state was saved: give every rank its own stream
            torch.manual_seed(int(torch.randint(2**62, (1,))) + self.trainer.global_rank)

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def log_images(self, batch: dict, N: int = 8, sample: bool = True, **kwargs: Any) -> dict:
        """As DiffusionEngine; data-free batches (no input_key) log samples only."""
        if self.input_key in batch or self.latent_shape is None:
            return super().log_images(batch, N=N, sample=sample, **kwargs)
        inputs = self.prepare_inputs({k: v[:N] if isinstance(v, torch.Tensor) else v for k, v in batch.items()})
        with self.ema_scope("log_images"):
            z = self.sample(inputs.cond, uc=inputs.uc, batch_size=inputs.shape[0], shape=inputs.shape[1:],
                            **inputs.model_kwargs)
        return {"samples": self.decode_first_stage(z, num_video_frames=batch.get("num_video_frames"))}


def _on_meta(module: nn.Module) -> bool:
    return any(p.is_meta for p in module.parameters())


def _wants_weights(role: nn.Module) -> bool:
    """A role that loads network weights (ScoreModel) and has no file of its own."""
    return hasattr(role, "load_network_weights") and getattr(role, "ckpt_path", None) is None


def _constant(step: int) -> float:
    return 1.0


def _no_closure() -> None:
    return None


@contextmanager
def _no_param_grads(*modules: nn.Module) -> Iterator[None]:
    """Gradients flow through the modules to their inputs, never into their parameters."""
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def _capture_rng() -> dict:
    """RNG states as tensors and plain Python values (loadable with torch.load(weights_only=True))."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


__all__ = ["DMDEngine", "DMDInputs"]
