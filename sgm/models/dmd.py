"""`DMDEngine`: DMD2 distillation of a diffusion teacher into a few-step generator.

Roles:

    generator    self.model + self.denoiser (the engine's own network: sample(), log_images() and the
                 samplers run the student), trainable, with EMA
    real_score   the teacher, frozen, from `real_score_config`          (`real_score.*` in the state dict)
    fake_score   the critic, trainable, from `fake_score_config`        (`fake_score.*`)
    conditioner, first_stage_model: built once, shared, frozen

What DMDEngine shares with its base, DiffusionEngine, means the same for both: `loss_fn_config` is the
denoising loss (the base fits its network with it, DMD its critic, on generated samples; its
`batch2model_keys` name the batch entries every network gets), and `optimizer_config`,
`scheduler_config` and `learning_rate` train the engine's own network, here the generator. The critic's
optimisation is `critic: {learning_rate, optimizer_config, scheduler_config, grad_clip}`.

Loss terms (sgm/modules/distillation/terms.py): the DMD loss (weight `dmd_weight`) and the critic's
denoising loss are the engine's own; optional terms (GAN, regression, semantic, ...) are objects under
`terms: {name: {target, params}}`, each with its own weights; `balance` (off by default) rescales the
generator's terms toward target gradient ratios (sgm/modules/distillation/balance.py).
`generator_loss_terms(batch)` and `critic_loss_terms(batch)` return every loss unweighted, with graph,
so the diagnostics read each term's gradient from one forward pass.

`chain` (ChainOptions, sgm/modules/distillation/chain.py; None: off) is Self-Forcing for chained
image-to-video generation: each loss trains on chunk k (drawn) of the generator's own chain, conditioned
on the last frame of chunk k-1, with teacher and critic conditioned alike (`training_chunk`).

`teacher_ckpt_path` (one file, e.g. a released SVD checkpoint or a digits teacher's last.ckpt)
initialises every role that has no file of its own: the teacher, the critic (unless
`init.critic_from_teacher: False`), the generator (unless `ckpt_path` names another file), the
conditioner and the first stage. When the file holds EMA weights (`model_ema.*`) they are used.

Training is manual optimisation, one batch = one iteration = one global step:
    every `generator.update_interval` steps   generator_loss -> generator optimiser (+ EMA update)
    every step                                critic_loss    -> critic optimiser
With `critic.reuse_generator_sample` (DMD2's behaviour) the critic step after a generator step trains
on that step's sample, detached, instead of rolling out the generator again.
`global_step` counts iterations: the critic optimiser's steps go through Lightning's counter, the
generator's through the strategy directly (precision plugin included) so they are not counted
twice. Both optimisers and LR schedulers, the EMA, all roles, the step counter and the data order are
in the checkpoint, and every step's random draws come from (seed, rank, step) (sgm.rng.seed_step, run
by main.py's StepSeed callback), so `-r` continues the run exactly.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import nn

from sgm.io.checkpoint import load_weights, read_state_dict, select_prefix
from sgm.models.diffusion import DiffusionEngine
from sgm.modules.diffusionmodules.loss import frames_per_clip, per_clip_sigmas
from sgm.data.video_batch import recondition_video_batch
from sgm.modules.distillation.balance import GradientBalancer
from sgm.modules.distillation.chain import ChainOptions, chain_recondition, draw_chunk, given_frame_mask, run_chain
from sgm.modules.distillation.lora import AdaptersOff, LoRAOptions, add_lora
from sgm.modules.distillation.guard import NonFiniteGuard
from sgm.modules.distillation.losses import dmd_loss
from sgm.modules.distillation.roles import ema_network_weights
from sgm.modules.distillation.rollout import STREAM_CRITIC, STREAM_GENERATOR, backward_simulation, draw_exit_step
from sgm.modules.distillation.sampler import FewStepSampler
from sgm.modules.distillation.terms import CriticStep, DMDInputs, DMDTerm, GeneratorStep, LossTerms
from sgm.modules.ema import LitEma
from sgm.strategies import clip_grad_norm, full_parameters
from sgm.util import (
    ConfigError,
    append_dims,
    broadcast_cond_to_rows,
    default,
    fold_frames,
    freeze,
    instantiate_from_config,
)

DEFAULT_OPTIMIZER = {"target": "torch.optim.AdamW", "params": {"betas": [0.0, 0.999], "weight_decay": 0.0}}
DEFAULT_DMD_SIGMAS = {  # the teacher's EDM schedule, indices 2%..98% (losses.RestrictedDiscreteSampling)
    "target": "sgm.modules.distillation.losses.RestrictedDiscreteSampling",
    "params": {"discretization_config": {"target": "sgm.modules.diffusionmodules.discretizer.EDMDiscretization"}},
}
NETWORK_PREFIX = "model.diffusion_model."
MOVED = {  # earlier flat keys of model.params -> where they live now
    "critic_loss_config": "loss_fn_config",
    "generator_optimizer_config": "optimizer_config",
    "generator_scheduler_config": "scheduler_config",
    "generator_learning_rate": "model.base_learning_rate (the generator's LR)",
    "critic_learning_rate": "critic.learning_rate",
    "critic_optimizer_config": "critic.optimizer_config",
    "critic_scheduler_config": "critic.scheduler_config",
    "critic_grad_clip": "critic.grad_clip",
    "gan_head_config": "terms.gan.params.head_config (with terms.gan.target: sgm.modules.distillation.terms.GANTerm)",
    "gan_generator_weight": "terms.gan.params.generator_weight",
    "gan_critic_weight": "terms.gan.params.critic_weight",
    "regression_weight": "terms.regression.params.weight (with terms.regression.target: "
                         "sgm.modules.distillation.terms.RegressionTerm)",
    "regression_keys": "terms.regression.params.keys",
    "critic_init_from_teacher": "init.critic_from_teacher",
    "generator_update_interval": "generator.update_interval",
    "generator_grad_clip": "generator.grad_clip",
    "critic_reuses_generator_sample": "critic.reuse_generator_sample",
    "init_from_ema": "init.from_ema",
    "allow_random_teacher": "init.allow_random_teacher",
    "save_teacher_weights": "init.save_teacher_weights",
    "uc_keys": "inputs.uc_keys",
    "latent_shape": "inputs.latent_shape",
    "mask_key": "inputs.mask_key",
    "batch2model_keys": "loss_fn_config.params.batch2model_keys (one list for every network)",
}


@dataclass
class CriticOptions:
    """How the critic (fake_score and the terms' critic heads) is optimised, and on what."""

    learning_rate: float | None = None  # default: the engine's learning_rate
    optimizer_config: dict | None = None  # default DEFAULT_OPTIMIZER, AdamW(betas=(0, 0.999))
    scheduler_config: dict | None = None  # .schedule(critic step) -> LR factor; None: constant
    grad_clip: float | None = None  # max grad norm (None: off)
    reuse_generator_sample: bool = True  # after a generator step: its detached x0, no new rollout (docs/critic_reuse.md)

    def __post_init__(self) -> None:
        check_clip("critic.grad_clip", self.grad_clip)
        if not isinstance(self.reuse_generator_sample, bool):
            raise ConfigError(f"model.params.critic.reuse_generator_sample must be bool, got {self.reuse_generator_sample!r}")


@dataclass
class GeneratorOptions:
    """When and how the generator is updated (its optimiser is the engine's own)."""

    update_interval: int = 5  # generator steps at global steps 0, k, 2k, ... (DMD2: 5)
    grad_clip: float | None = None  # max grad norm (None: off)

    def __post_init__(self) -> None:
        if isinstance(self.update_interval, bool) or not isinstance(self.update_interval, int):
            raise ConfigError(f"model.params.generator.update_interval must be int, got {self.update_interval!r}")
        if self.update_interval < 1:
            raise ConfigError(f"model.params.generator.update_interval must be >= 1, got {self.update_interval}")
        check_clip("generator.grad_clip", self.grad_clip)


def check_clip(key: str, clip) -> None:
    """A gradient-norm clip must be a positive number or None (0 would zero every gradient: a run that never learns)."""
    if clip is None:
        return
    if isinstance(clip, bool) or not isinstance(clip, (int, float)):
        raise ConfigError(f"model.params.{key} must be float or null, got {clip!r}")
    if not float(clip) > 0:
        raise ConfigError(f"model.params.{key} must be > 0 or null (no clipping), got {clip}")


@dataclass
class InitOptions:
    """Where the roles' weights come from, and what checkpoints keep."""

    critic_from_teacher: bool = True  # False: the critic keeps its own init / own file
    from_ema: bool = True  # use a file's EMA weights (model_ema.*) when it has them
    allow_random_teacher: bool = False  # permit a ScoreModel teacher without weights (tests)
    save_teacher_weights: bool = True  # False: real_score.* left out of checkpoints, reloaded


@dataclass
class InputOptions:
    """How a batch becomes the generator's latents and the teacher's conditions."""

    latent_shape: list | None = None  # per-row latent shape; None: encode batch[input_key]
    uc_keys: list | None = None  # inputs zeroed in the teacher's uc; default all (SVD: the cond frames)
    mask_key: str = "dmd_mask"  # batch key of the frame mask (1 = in the DMD loss), if present


def options(cls: type, value: Any, key: str):
    """`cls` from a mapping (None: defaults); an unknown field is a ConfigError naming model.params.<key>."""
    if isinstance(value, cls):
        return value
    given = dict(value or {})
    known = [f.name for f in fields(cls)]
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise ConfigError(f"model.params.{key}: unknown option(s) {unknown}; known: {known}")
    return cls(**given)


class DMDEngine(DiffusionEngine):
    def __init__(
        self,
        network_config: dict,  # generator network (the student; same architecture as the teacher)
        denoiser_config: dict,  # generator denoiser (scaling)
        first_stage_config: dict,  # autoencoder (shared, frozen)
        real_score_config: dict,  # {target, params}: teacher role, e.g. roles.ScoreModel with a guider
        fake_score_config: dict,  # {target, params}: critic role (trainable)
        sampler_config: dict,  # FewStepSampler: its discretization is the generator's schedule
        dmd_sigma_sampler_config: dict | None = None,  # DMD-loss sigmas; default DEFAULT_DMD_SIGMAS
        teacher_ckpt_path: str | None = None,  # file that initialises the roles (see module doc)
        ckpt_path: str | None = None,  # generator init file (engine layout); None: the teacher
        generator: dict | GeneratorOptions | None = None,  # GeneratorOptions: update interval, grad clip
        max_non_finite_steps: int = 10,  # this many skipped (NaN/inf) steps of one role in a row stop the run
        dmd_weight: float = 1.0,  # weight of the DMD loss
        terms: dict | None = None,  # {name: {target, params}}: optional loss terms (terms.py)
        critic: dict | CriticOptions | None = None,  # CriticOptions
        init: dict | InitOptions | None = None,  # InitOptions
        inputs: dict | InputOptions | None = None,  # InputOptions
        balance: dict | None = None,  # balance.GradientBalancer params ({targets: {term: ratio}, ...}); None: off
        lora: dict | None = None,  # {generator: LoRAOptions, critic: LoRAOptions} (lora.py); None: full weights
        chain: dict | ChainOptions | None = None,  # ChainOptions (chain.py): Self-Forcing's chained rollout; None: off
        seed: int = 0,  # seeds the exit-step draws (with the global step)
        **engine_kwargs: Any,  # DiffusionEngine's: loss_fn_config (the critic's), optimizer_config, ...
    ):
        moved = sorted(set(engine_kwargs) & set(MOVED))
        if moved:
            raise ConfigError("DMDEngine: " + "; ".join(f"model.params.{k} is now model.params.{MOVED[k]}"
                                                         for k in moved))
        engine_kwargs["optimizer_config"] = default(engine_kwargs.get("optimizer_config"), DEFAULT_OPTIMIZER)
        super().__init__(network_config, denoiser_config, first_stage_config, sampler_config=sampler_config,
                         **engine_kwargs)
        self.automatic_optimization = False
        if not isinstance(self.sampler, FewStepSampler):
            raise ConfigError("DMDEngine needs sampler_config to be a FewStepSampler (the generator's "
                              f"schedule), got {type(self.sampler).__name__}")
        if self.loss_fn is None:
            raise ConfigError("DMDEngine needs model.params.loss_fn_config: the critic's denoising loss "
                              "(e.g. the teacher's StandardDiffusionLoss)")
        self.conditioner = freeze(self.conditioner)
        self.real_score = freeze(instantiate_from_config(real_score_config))
        self.critic_on_teacher = bool((lora or {}).get("critic_on_teacher", False))
        self.fake_score = self._build_critic(fake_score_config, lora or {})
        self.dmd_sigma_sampler = instantiate_from_config(default(dmd_sigma_sampler_config, DEFAULT_DMD_SIGMAS))
        self.terms = nn.ModuleDict({name: _term(name, cfg) for name, cfg in (terms or {}).items() if cfg is not None})
        self.critic_options = options(CriticOptions, critic, "critic")
        self.init_options = options(InitOptions, init, "init")
        self.input_options = options(InputOptions, inputs, "inputs")
        self.chain_options = options(ChainOptions, chain, "chain") if chain is not None else None
        self.balancer = _balancer(balance)
        self.generator_options = options(GeneratorOptions, generator, "generator")
        self.non_finite_guard = NonFiniteGuard(max_non_finite_steps)
        self.dmd_weight = dmd_weight
        self.seed = seed
        if not _on_meta(self):  # --dry-run builds on the meta device: nothing to load
            self._init_weights(teacher_ckpt_path, ckpt_path)
        self.lora_options = self._add_lora(lora or {})

    # ------------------------------------------------------------------ weights
    def _init_weights(self, teacher: str | None, own: str | None) -> None:
        opts = self.init_options
        teacher_sd = self._read(teacher, opts.from_ema) if teacher is not None else None
        if teacher_sd is not None:
            for name in ("conditioner", "first_stage_model"):
                report = load_weights(getattr(self, name), select_prefix(teacher_sd, name + "."), teacher, ())
                print(f"[DMDEngine] {name}: {report.summary()}")
            critic_wanted = opts.critic_from_teacher and not self.critic_on_teacher  # shared: loaded as the teacher
            for role, wanted in ((self.real_score, True), (self.fake_score, critic_wanted)):
                if wanted and _wants_weights(role):
                    role.load_network_weights(teacher_sd, path=teacher)
        generator_sd = self._read(own, opts.from_ema) if own is not None else teacher_sd
        if generator_sd is not None:
            load_weights(self.model, select_prefix(generator_sd, "model."), own or teacher, ("diffusion_model.",))
        if _wants_weights(self.real_score) and teacher_sd is None and not opts.allow_random_teacher:
            raise ConfigError("the teacher has no weights: set model.params.teacher_ckpt_path=<file> "
                              "(or real_score_config.params.ckpt_path)")
        if self.use_ema:  # the shadow starts from the initialised student
            self.model_ema = LitEma(self.model, decay=float(self.model_ema.decay))

    def _build_critic(self, config: dict, lora: dict) -> nn.Module:
        """The critic role. With lora.critic_on_teacher it is built around the teacher's own wrapped network
        (`network=`), so no second U-Net is built or loaded; `_add_lora` gives it its adapters."""
        if not self.critic_on_teacher:
            critic = instantiate_from_config(config)
            if not any(p.requires_grad for p in critic.parameters()):
                raise ConfigError("fake_score has no trainable parameters: set fake_score_config.params.trainable: True")
            return critic
        if lora.get("critic") is None or getattr(self.real_score, "dtype_name", None) != "float32":
            raise ConfigError("model.params.lora.critic_on_teacher needs lora.critic options and a float32 "
                              "teacher (real_score_config.params.dtype: float32)")
        return instantiate_from_config(config, network=self.real_score.model)

    def _add_lora(self, lora: dict) -> dict[str, LoRAOptions]:
        """Adapters on the loaded generator / critic networks (their other weights frozen), EMA over the adapters."""
        lora = dict(lora)
        lora.pop("critic_on_teacher", None)  # read in __init__ (self.critic_on_teacher), before the critic is built
        unknown = sorted(set(lora) - {"generator", "critic"})
        if unknown:
            raise ConfigError(f"model.params.lora: unknown role(s) {unknown}; known: ['critic', 'critic_on_teacher', "
                              "'generator']")
        chosen = {role: options(LoRAOptions, cfg, f"lora.{role}") for role, cfg in lora.items() if cfg is not None}
        if self.critic_on_teacher:  # one U-Net (shared since _build_critic): W0 frozen, the adapters are the critic
            add_lora(self.real_score.model.diffusion_model, chosen.pop("critic"), "critic", seed=self.seed + 1)
            self.real_score = AdaptersOff(self.real_score)  # the teacher sees W0 alone
        if "generator" in chosen:
            add_lora(self.model.diffusion_model, chosen["generator"], "generator", seed=self.seed)
            if self.use_ema:  # the shadow follows the trainable (adapter) weights
                self.model_ema = LitEma(self.model, decay=float(self.model_ema.decay))
        if "critic" in chosen:
            add_lora(self.fake_score.model.diffusion_model, chosen["critic"], "critic", seed=self.seed + 1)
        return chosen

    def _read(self, path: str, use_ema: bool) -> dict[str, torch.Tensor]:
        state_dict = read_state_dict(path)
        ema = ema_network_weights(state_dict) if use_ema else None
        return {**state_dict, **ema} if ema is not None else state_dict

    # ------------------------------------------------------------------ inputs, rollout, noising
    def prepare_inputs(self, batch: dict, latent_shape: tuple | None = None) -> DMDInputs:
        """Conditions and latent shape of a batch. latent_shape: per row; None: inputs.latent_shape, else
        the encoded batch[input_key]. The frozen conditioner passes on only gradients the batch carries."""
        wants_grad = any(isinstance(v, torch.Tensor) and v.requires_grad for v in batch.values())
        with torch.set_grad_enabled(torch.is_grad_enabled() and wants_grad):
            c, uc = self.conditioner.get_unconditional_conditioning(
                batch, force_uc_zero_embeddings=default(self.input_options.uc_keys, self._embedder_input_keys()))
        latent_shape = default(latent_shape, self.input_options.latent_shape)
        if latent_shape is not None:
            rows = max(v.shape[0] for v in batch.values() if isinstance(v, torch.Tensor) and v.ndim > 0)
            shape = (rows, *latent_shape)
        else:
            shape = tuple(self.input_latents(batch).shape)
        num_frames = frames_per_clip(batch, shape[0])
        return DMDInputs(broadcast_cond_to_rows(c, shape[0]), broadcast_cond_to_rows(uc, shape[0]),
                         self.loss_fn.model_inputs(batch), shape, num_frames)

    def generator_fn(self, inputs: DMDInputs):
        """G(x, sigma) -> x0_hat, the student's denoiser."""
        return lambda x, sigma: self.denoise(x, sigma, inputs.cond, **inputs.model_kwargs)

    def rollout(self, inputs: DMDInputs, stream: int) -> tuple[torch.Tensor, int]:
        """Backward simulation -> (x0 (N, ...), exit step); grad only through the exit step."""
        sigmas = self.sampler.generator_sigmas(device=self.device)  # (K,)
        exit_step = draw_exit_step(len(sigmas), self.global_step, self.seed, stream)
        noise = torch.randn(inputs.shape, device=self.device)  # (N, ...)
        return backward_simulation(self.generator_fn(inputs), sigmas, noise, exit_step), exit_step

    def sample_chunk(self, batch: dict, latent_shape: tuple) -> torch.Tensor:
        """One chunk of the generator's chain: its full few-step sampling with the training weights, decoded
        -> frames (b, t, C, H, W). Only the last step can carry a gradient (when grad is enabled)."""
        inputs = self.prepare_inputs(batch, latent_shape)
        sigmas = self.sampler.generator_sigmas(device=self.device)  # (K,)
        noise = torch.randn(inputs.shape, device=self.device)  # (N, ...)
        x0 = backward_simulation(self.generator_fn(inputs), sigmas, noise, len(sigmas) - 1)  # (N, ...)
        frames = self.decode_first_stage(x0, num_video_frames=inputs.num_frames)  # (N, C, H, W)
        return fold_frames(frames, inputs.num_frames)  # (b, t, C, H, W)

    def training_chunk(self, batch: dict, stream: int) -> tuple[dict, DMDInputs, int]:
        """The batch and inputs a loss trains on, and the chunk's index: the data's own (0), or with `chain`
        chunk k of the generator's own chain (k drawn per step and loss; chain.py), its given frames masked."""
        inputs = self.prepare_inputs(batch)
        chain = self.chain_options
        if chain is None or not chain.enabled:
            return batch, inputs, 0
        k = draw_chunk(chain.num_chunks, self.global_step, self.seed, stream)
        num_frames, latent_shape = default(chain.chunk_frames, inputs.num_frames), inputs.shape[1:]
        first = batch
        if num_frames != inputs.num_frames:  # chunk 0 from the data's conditioning frame, at the chunk length
            first = recondition_video_batch(batch, batch["cond_frames_without_noise"], num_frames)

        def sample(chunk: dict, index: int) -> torch.Tensor:  # chunks 0..k-1; grad only into chunk k's frame
            with torch.set_grad_enabled(torch.is_grad_enabled() and chain.grad_into_cond and index == k - 1):
                return self.sample_chunk(chunk, latent_shape)

        _, chunk = run_chain(sample, first, k, chain_recondition(chain.conditioning, num_frames))
        mask_key = self.input_options.mask_key
        clips = inputs.shape[0] // inputs.num_frames  # b (SV4D: rows b t v, num_frames t v)
        mask = given_frame_mask(clips, num_frames, chain.given_frames, chunk.get(mask_key))  # ((b t),)
        if chunk is batch:  # the data's own chunk: its conditions as they are
            return {**chunk, mask_key: mask.to(self.device)}, inputs, k
        chunk = {**chunk, mask_key: mask.to(self.device)}
        return chunk, self.prepare_inputs(chunk, latent_shape), k

    def noised(self, x0: torch.Tensor, inputs: DMDInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """x_t = x0 + sigma * eps with one DMD-loss sigma per clip -> (x_t, sigma (N,))."""
        sigma = per_clip_sigmas(self.dmd_sigma_sampler, x0.shape[0], inputs.num_frames, x0.device)  # (N,)
        return x0 + append_dims(sigma, x0.ndim) * torch.randn_like(x0), sigma  # x_t = x0 + sigma eps

    def critic_features(self, x0: torch.Tensor, inputs: DMDInputs) -> torch.Tensor:
        """The critic's bottleneck features h_mid at x0 noised with the critic's own draw (its loss_fn)."""
        sigma, noise = self.loss_fn.draw(x0, inputs.num_frames)  # (N,), (N, ...)
        x_t = x0 + append_dims(sigma, x0.ndim) * noise
        _, h_mid = self.fake_score(x_t, sigma, inputs.cond, return_features=True, **inputs.model_kwargs)
        return h_mid

    def real_latents(self, batch: dict, needed_by: str) -> torch.Tensor:
        """Latents of the batch's real data (N, ...); a ConfigError naming `needed_by` when it has none."""
        if self.input_key not in batch:
            raise ConfigError(f"{needed_by} needs real data: the batch has no '{self.input_key}' "
                              f"(keys: {sorted(batch)}); use a data module that yields target frames")
        return self.input_latents(batch)

    # ------------------------------------------------------------------ the two losses
    def generator_loss_terms(self, batch: dict) -> LossTerms:
        """DMD (eq. 7-8) and every term's generator loss, unweighted, with graph. No grad reaches the critic."""
        chunk, inputs, chunk_index = self.training_chunk(batch, STREAM_GENERATOR)
        x0, exit_step = self.rollout(inputs, STREAM_GENERATOR)  # (N, ...) with grad
        x_t, sigma = self.noised(x0.detach(), inputs)
        with torch.no_grad():  # teacher and critic under the chunk's own (self-generated) conditioning
            pred_real = self.real_score(x_t, sigma, inputs.cond, uc=inputs.uc, **inputs.model_kwargs)
            pred_fake = self.fake_score(x_t, sigma, inputs.cond, **inputs.model_kwargs)
        loss_dmd, stats = dmd_loss(x0, pred_real, pred_fake, inputs.num_frames, chunk.get(self.input_options.mask_key))
        step = GeneratorStep(batch, inputs, x0, exit_step, x_t, sigma, pred_real, pred_fake)
        log = {"loss/dmd": loss_dmd.mean().detach(), "dmd/normalizer": stats.normalizer.mean(),
               "dmd/grad_abs_mean": stats.grad.abs().mean(), "dmd/gap": (pred_real - pred_fake).abs().mean(),
               "dmd/sigma_mean": sigma.mean(), "dmd/exit_step": float(exit_step),
               "gen/x0_mean": x0.detach().mean(), "gen/x0_std": x0.detach().std()}
        if self.chain_options is not None:
            log["chain/chunk"] = float(chunk_index)
        terms = LossTerms({"dmd": loss_dmd.mean()}, {"dmd": self.dmd_weight}, log, step)
        for term in self.terms.values():
            _add(terms, *term.generator_losses(self, step), term.generator_weights)
        if self.balancer is not None:  # gradient-share multipliers on the configured weights
            terms.weights = self.balancer.apply(terms.weights)
        terms.log["loss/generator"] = terms.total().detach()
        return terms

    def critic_loss_terms(self, batch: dict, generated: GeneratorStep | None = None) -> LossTerms:
        """The critic's denoising loss on generated samples and every term's critic loss, unweighted.

        `generated`: a generator step on this batch whose sample (detached) the critic trains on (DMD2);
        None: a rollout of its own."""
        if generated is not None:
            inputs, x0, exit_step = generated.inputs, generated.x0.detach(), generated.exit_step  # (N, ...)
        else:
            with torch.no_grad():  # (with `chain`: chunk k of the generator's own chain, k drawn for the critic)
                _, inputs, _ = self.training_chunk(batch, STREAM_CRITIC)
                x0, exit_step = self.rollout(inputs, STREAM_CRITIC)  # (N, ...)
        sigma, noise = self.loss_fn.draw(x0, inputs.num_frames)  # (N,), (N, ...)
        loss_rows = self.loss_fn.loss(self.fake_score, x0, sigma, noise, inputs.cond, **inputs.model_kwargs)
        step = CriticStep(batch, inputs, x0, exit_step, sigma, noise, loss_rows)
        log = {"loss/critic": loss_rows.mean().detach(), "critic/exit_step": float(exit_step)}
        terms = LossTerms({"critic_denoise": loss_rows.mean()}, {"critic_denoise": 1.0}, log, step)
        for term in self.terms.values():
            _add(terms, *term.critic_losses(self, step), term.critic_weights)
        return terms

    def generator_step_terms(self, batch: dict) -> LossTerms:
        """`generator_loss_terms`, and the balancer's update on its steps: what one training step optimises."""
        terms = self.generator_loss_terms(batch)
        if self.balancer is not None and (self.global_step // self.generator_update_interval) % self.balancer.every == 0:
            terms.log |= self.balancer.update(terms.losses, terms.weights, self.generator_parameters())
        return terms

    def generator_loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        terms = self.generator_step_terms(batch)
        return terms.total(), terms.log

    def critic_loss(self, batch: dict, generated: GeneratorStep | None = None) -> tuple[torch.Tensor, dict]:
        terms = self.critic_loss_terms(batch, generated)
        return terms.total(), terms.log

    # ------------------------------------------------------------------ optimisation
    def generator_parameters(self) -> list[nn.Parameter]:
        heads = [p for term in self.terms.values() for p in term.generator_parameters()]
        return [p for p in self.model.parameters() if p.requires_grad] + heads

    def critic_parameters(self) -> list[nn.Parameter]:
        heads = [p for term in self.terms.values() for p in term.critic_parameters()]
        return [p for p in self.fake_score.parameters() if p.requires_grad] + heads

    def configure_optimizers(self):
        critic = self.critic_options
        optimizers = [
            self.instantiate_optimizer_from_config(self.generator_parameters(), self.learning_rate, self.optimizer_config),
            self.instantiate_optimizer_from_config(self.critic_parameters(), default(critic.learning_rate, self.learning_rate),
                                                   default(critic.optimizer_config, DEFAULT_OPTIMIZER)),
        ]
        schedulers = []
        for opt, cfg in zip(optimizers, (self.scheduler_config, critic.scheduler_config)):
            factor = instantiate_from_config(cfg).schedule if cfg is not None else _constant
            schedulers.append({"scheduler": torch.optim.lr_scheduler.LambdaLR(opt, factor), "interval": "step"})
        return optimizers, schedulers

    @property
    def generator_update_interval(self) -> int:
        return self.generator_options.update_interval

    def is_generator_step(self) -> bool:
        return self.global_step % self.generator_update_interval == 0

    def training_step(self, batch: dict, batch_idx: int) -> None:
        generator_opt, critic_opt = self.optimizers()
        generator_sched, critic_sched = self.lr_schedulers()
        step, generator_step = self.global_step, self.is_generator_step()
        log, generated = {}, None
        if generator_step:
            generated = self._update("generator", self.generator_step_terms, batch, generator_opt, generator_sched)
            log |= generated.log
            for term in self.terms.values():
                term.after_generator_step()
            if self.use_ema and not self.non_finite_guard.was_skipped("generator"):
                with full_parameters(self.model, self.trainer.strategy) as params:  # gathered from shards (FSDP)
                    self.model_ema.update(params.items())
        reused = generated.step if generated is not None and self.critic_options.reuse_generator_sample else None
        log |= self._update("critic", lambda b: self.critic_loss_terms(b, reused), batch, critic_opt, critic_sched).log
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

    def _update(self, role: str, terms_fn, batch: dict, opt, sched) -> LossTerms:
        """One optimiser step of `role` on `terms_fn(batch)`, skipped (weights and optimiser state untouched)
        when the loss or the gradient norm is not finite; `log["skipped/<role>"]` counts the skipped steps."""
        with self.toggled_optimizer(opt):
            terms = terms_fn(batch)
            loss, log = terms.total(), terms.log
            opt.zero_grad()
            self.manual_backward(loss)
            params = self.generator_parameters() if role == "generator" else self.critic_parameters()
            clip = (self.generator_options if role == "generator" else self.critic_options).grad_clip
            max_norm = default(clip, float("inf"))
            log[f"grad/{role}"] = clip_grad_norm(params, max_norm, self.trainer.strategy)  # global norm under FSDP
            culprit = self.non_finite_guard.culprit(log, float(log[f"grad/{role}"]))
            if culprit is not None:  # gradients are all-reduced: every rank skips alike
                opt.zero_grad(set_to_none=True)  # optimisers pass over parameters without gradients
            if role == "generator":  # not counted: global_step counts iterations (critic steps)
                if culprit is None:
                    self.trainer.strategy.optimizer_step(opt.optimizer, closure=_no_closure)
            else:
                opt.step()  # counts the iteration even when skipped (no parameter has a gradient)
        sched.step()
        log[f"skipped/{role}"] = self.non_finite_guard.record(role, culprit, self.global_step)
        return terms

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["non_finite_guard"] = self.non_finite_guard.state_dict()  # skipped/<role> goes on counting
        if not self.init_options.save_teacher_weights:
            for key in [k for k in checkpoint["state_dict"] if k.startswith("real_score.")]:
                del checkpoint["state_dict"][key]

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "non_finite_guard" in checkpoint:  # absent from checkpoints written before the counts were saved
            self.non_finite_guard.load_state_dict(checkpoint["non_finite_guard"])
        for key, value in self.real_score.state_dict().items():  # reloaded from the teacher file
            checkpoint["state_dict"].setdefault("real_score." + key, value)

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def log_images(self, batch: dict, N: int = 8, sample: bool = True, **kwargs: Any) -> dict:
        """As DiffusionEngine; data-free batches (no input_key) log samples only."""
        if self.input_key in batch or self.input_options.latent_shape is None:
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


def _balancer(balance: dict | None) -> GradientBalancer | None:
    if not balance:
        return None
    try:
        return GradientBalancer(**dict(balance))
    except TypeError as error:
        raise ConfigError(f"model.params.balance: {error}") from error


def _term(name: str, config: dict) -> DMDTerm:
    term = instantiate_from_config(config)
    if not isinstance(term, DMDTerm):
        raise ConfigError(f"model.params.terms.{name}: {type(term).__name__} is not a "
                          "sgm.modules.distillation.terms.DMDTerm")
    return term


def _add(terms: LossTerms, losses: dict, log: dict, weights: dict) -> None:
    """A term's losses, weights (also of losses switched off) and log into the step's LossTerms."""
    clash = set(weights) & set(terms.weights)
    if clash:
        raise ConfigError(f"two loss terms are both called {sorted(clash)}")
    terms.losses.update(losses)
    terms.weights.update({name: float(weight) for name, weight in weights.items()})
    terms.log.update(log)


__all__ = ["ChainOptions", "CriticOptions", "DMDEngine", "DMDInputs", "InitOptions", "InputOptions"]
