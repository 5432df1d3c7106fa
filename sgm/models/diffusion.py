"""`DiffusionEngine`: the LightningModule that trains and samples an sgm diffusion model.

Layout of the state dict (upstream-compatible): `model.diffusion_model.*` (network inside its
wrapper), `conditioner.embedders.<i>.*`, `first_stage_model.*`, optionally `model_ema.*` and
`denoiser.*` (discrete denoisers only).

Video batches follow upstream's flattened layout: `batch[input_key]` is `((b t), c, h, w)` and the
batch holds the int `num_video_frames` = t.
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Iterator

import pytorch_lightning as pl
import torch
from torch import nn

from sgm.io.checkpoint import load_weights, read_state_dict
from sgm.modules import UNCONDITIONAL_CONFIG
from sgm.modules.diffusionmodules.loss import frames_per_clip
from sgm.modules.encoders.modules import CACHED_SUFFIX
from sgm.modules.ema import LitEma
from sgm.modules.diffusionmodules.wrappers import DEFAULT_WRAPPER
from sgm.util import (
    ConfigError,
    append_dims,
    broadcast_cond_to_rows,
    default,
    freeze,
    get_obj_from_str,
    instantiate_from_config,
)



@dataclass
class DenoisingInputs:
    """What the denoising loss of one training step sees."""

    x0: torch.Tensor  # (N, ...) clean latents
    cond: dict  # conditions, N rows (CFG dropout applied)
    sigma: torch.Tensor  # (N,) one per clip
    noise: torch.Tensor  # (N, ...) eps
    model_kwargs: dict  # batch entries passed to the network (num_video_frames, ...)
    num_frames: int  # T, frames per clip (1: images)

    @property
    def x_noisy(self) -> torch.Tensor:
        return self.x0 + append_dims(self.sigma, self.x0.ndim) * self.noise  # x = x0 + sigma * eps


class DiffusionEngine(pl.LightningModule):
    def __init__(
        self,
        network_config: dict,  # the denoiser network, e.g. openaimodel.UNetModel
        denoiser_config: dict,  # Denoiser / DiscreteDenoiser with a scaling
        first_stage_config: dict,  # autoencoder (frozen) or IdentityFirstStage
        conditioner_config: dict | None = None,  # GeneralConditioner; None = unconditional
        sampler_config: dict | None = None,  # sampler used by sample() / log_images()
        optimizer_config: dict | None = None,  # default torch.optim.AdamW
        scheduler_config: dict | None = None,  # object with .schedule(step) -> LR multiplier
        loss_fn_config: dict | None = None,  # e.g. StandardDiffusionLoss
        network_wrapper: str | None = None,  # dotted path of the wrapper class
        ckpt_path: str | None = None,  # .safetensors or Lightning .ckpt to initialise from
        learning_rate: float = 1.0e-4,  # base LR (main.py passes model.base_learning_rate)
        use_ema: bool = False,  # keep an EMA of the network
        ema_decay_rate: float = 0.9999,  # EMA decay
        scale_factor: float = 1.0,  # latent scale
        disable_first_stage_autocast: bool = False,  # run the VAE in fp32 under autocast
        input_key: str = "jpg",  # batch key of the data tensor
        log_keys: list | None = None,  # unused by the image logger; accepted for upstream configs
        no_cond_log: bool = False,  # accepted for upstream configs (conditionings are not rendered)
        compile_model: bool = False,  # torch.compile the network
        en_and_decode_n_samples_a_time: int | None = None,  # VAE chunk size (None = all rows)
    ):
        super().__init__()
        self.input_key = input_key
        self.learning_rate = learning_rate
        self.optimizer_config = default(optimizer_config, {"target": "torch.optim.AdamW"})
        self.scheduler_config = scheduler_config
        wrapper_cls = get_obj_from_str(default(network_wrapper, DEFAULT_WRAPPER))
        self.model = wrapper_cls(instantiate_from_config(network_config), compile_model=compile_model)
        self.denoiser = instantiate_from_config(denoiser_config)
        self.sampler = instantiate_from_config(sampler_config) if sampler_config is not None else None
        self.conditioner = instantiate_from_config(default(conditioner_config, UNCONDITIONAL_CONFIG))
        self.first_stage_model = freeze(instantiate_from_config(first_stage_config))
        self.loss_fn = instantiate_from_config(loss_fn_config) if loss_fn_config is not None else None
        self.use_ema = use_ema
        if use_ema:
            if not 0.0 <= float(ema_decay_rate) <= 1.0:
                raise ConfigError(f"model.params.ema_decay_rate must be in [0, 1], got {ema_decay_rate}")
            self.model_ema = LitEma(self.model, decay=ema_decay_rate)
        self.scale_factor = scale_factor
        self.disable_first_stage_autocast = disable_first_stage_autocast
        self.log_keys = log_keys
        self.no_cond_log = no_cond_log
        if ckpt_path is not None:
            self.init_from_ckpt(ckpt_path)
        self.en_and_decode_n_samples_a_time = en_and_decode_n_samples_a_time

    # ------------------------------------------------------------------ weights
    def init_from_ckpt(self, path: str) -> None:
        """Load weights; missing network keys are an error, other gaps are reported by name."""
        report = load_weights(
            self, read_state_dict(path), path=path, required_prefixes=("model.diffusion_model.",)
        )
        print(f"[{type(self).__name__}] {report.summary()}")

    # ------------------------------------------------------------------ data
    def get_input(self, batch: dict) -> torch.Tensor:
        if self.input_key not in batch:
            raise KeyError(f"batch has no key '{self.input_key}' (model.params.input_key); "
                           f"batch keys: {sorted(batch)}")
        return batch[self.input_key]

    def input_latents(self, batch: dict) -> torch.Tensor:
        """x0 of batch[input_key] ((b t), C, h, w): scale_factor * the first stage's encoding, which a batch from a
        conditioning cache carries precomputed as `<input_key>__cached` (sgm.data.conditioning_cache); then
        the VAE encoder does not run."""
        cached = batch.get(self.input_key + CACHED_SUFFIX)
        if cached is None:
            return self.encode_first_stage(self.get_input(batch))
        return self.scale_factor * cached.to(self.device)

    def _first_stage_autocast(self):
        if not self.disable_first_stage_autocast:
            return nullcontext()
        return torch.autocast(self.device.type, enabled=False)

    def _chunks(self, rows: int, num_video_frames: int | None) -> int:
        """Chunk size for the VAE: whole clips per chunk, so temporal layers never mix clips."""
        size = default(self.en_and_decode_n_samples_a_time, rows)
        if num_video_frames:
            size = max(num_video_frames, size // num_video_frames * num_video_frames)
        return max(1, size)

    @torch.no_grad()
    def encode_first_stage(self, x: torch.Tensor) -> torch.Tensor:
        size = self._chunks(x.shape[0], None)
        with self._first_stage_autocast():
            z = torch.cat([self.first_stage_model.encode(c) for c in x.split(size)])
        return self.scale_factor * z

    def decode_first_stage(self, z: torch.Tensor, num_video_frames: int | None = None) -> torch.Tensor:
        """Latents -> pixels. The decoder is frozen: a graph is built only when z carries a gradient (a DMD
        chain's conditioning frame with chain.grad_into_cond), and that gradient reaches z alone."""
        z = z / self.scale_factor
        size = self._chunks(z.shape[0], num_video_frames)
        with self._first_stage_autocast():
            return torch.cat([
                self.first_stage_model.decode(c, num_video_frames=num_video_frames)
                for c in z.split(size)
            ])

    # ------------------------------------------------------------------ training
    def training_inputs(self, batch: dict) -> DenoisingInputs:
        """One training step's x0, conditions (CFG dropout applied) and loss draws, in that order."""
        x0 = self.input_latents(batch)  # (N, ...)
        rows = x0.shape[0]
        cond = broadcast_cond_to_rows(self.conditioner(batch), rows)
        num_frames = frames_per_clip(batch, rows)
        sigma, noise = self.loss_fn.draw(x0, num_frames)  # (N,), (N, ...)
        return DenoisingInputs(x0, cond, sigma, noise, self.loss_fn.model_inputs(batch), num_frames)

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, cond: dict, **model_kwargs: Any) -> torch.Tensor:
        """D(x; sigma, cond) of the engine's own network -> x0 estimate (N, ...)."""
        return self.denoiser(self.model, x, sigma, cond, **model_kwargs)

    def forward(self, inputs: DenoisingInputs) -> torch.Tensor:
        """The denoising loss per row (N,) of `training_inputs`."""
        return self.loss_fn.loss(self.denoise, inputs.x0, inputs.sigma, inputs.noise, inputs.cond,
                                 **inputs.model_kwargs)

    def shared_step(self, batch: dict) -> tuple[torch.Tensor, dict]:
        batch["global_step"] = self.global_step
        loss_mean = self(self.training_inputs(batch)).mean()
        return loss_mean, {"loss": loss_mean}

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, loss_dict = self.shared_step(batch)
        self.log_dict(loss_dict, prog_bar=True, logger=True, on_step=True, on_epoch=False)
        self.log("global_step", float(self.global_step), prog_bar=False, logger=True, on_step=True,
                 on_epoch=False)
        if self.scheduler_config is not None:
            lr = self.optimizers().param_groups[0]["lr"]
            self.log("lr_abs", lr, prog_bar=True, logger=True, on_step=True, on_epoch=False)
        return loss

    def on_train_start(self) -> None:
        if self.loss_fn is None:
            raise ConfigError("training needs model.params.loss_fn_config (e.g. StandardDiffusionLoss)")

    def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
        """EMA after the optimiser step; an engine with manual optimisation updates it after its own steps."""
        if self.use_ema and self.automatic_optimization:
            self.model_ema(self.model)

    @contextmanager
    def ema_scope(self, context: str | None = None) -> Iterator[None]:
        """Inside the block the network holds its EMA weights (no-op without EMA)."""
        if not self.use_ema:
            yield
            return
        with self.model_ema.average_parameters(self.model):
            if context is not None:
                print(f"{context}: switched to EMA weights")
            yield

    def trainable_parameters(self) -> list[nn.Parameter]:
        params = [p for p in self.model.parameters() if p.requires_grad]
        for embedder in self.conditioner.embedders:
            if embedder.is_trainable:
                params += [p for p in embedder.parameters() if p.requires_grad]
        return params

    def instantiate_optimizer_from_config(self, params, lr: float, cfg: dict) -> torch.optim.Optimizer:
        kwargs = dict(cfg.get("params", None) or {})
        if "lr" in kwargs:
            raise ConfigError("set the learning rate with model.base_learning_rate, "
                              "not optimizer_config.params.lr")
        return get_obj_from_str(cfg["target"])(params, lr=lr, **kwargs)

    def configure_optimizers(self):
        opt = self.instantiate_optimizer_from_config(
            self.trainable_parameters(), self.learning_rate, self.optimizer_config
        )
        if self.scheduler_config is None:
            return opt
        scheduler = instantiate_from_config(self.scheduler_config)
        lr_scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda=scheduler.schedule)
        return [opt], [{"scheduler": lr_scheduler, "interval": "step", "frequency": 1}]

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(
        self,
        cond: dict,  # conditioning (rows = batch_size)
        uc: dict | None = None,  # unconditional conditioning for CFG
        batch_size: int = 16,  # rows of noise (frames for video)
        shape: tuple | None = None,  # per-row latent shape (C, H, W)
        num_steps: int | None = None,  # override the sampler's step count
        **kwargs: Any,  # extra network inputs (num_video_frames, image_only_indicator, ...)
    ) -> torch.Tensor:
        if self.sampler is None:
            raise ConfigError("sampling needs model.params.sampler_config")
        randn = torch.randn(batch_size, *shape, device=self.device)
        cond = broadcast_cond_to_rows(cond, batch_size)
        uc = broadcast_cond_to_rows(uc, batch_size) if uc is not None else None

        def denoiser(x, sigma, c):
            return self.denoise(x, sigma, c, **kwargs)

        return self.sampler(denoiser, randn, cond, uc=uc, num_steps=num_steps)

    @torch.no_grad()
    def log_images(
        self,
        batch: dict,
        N: int = 8,  # clips (video) or images to log
        sample: bool = True,
        ucg_keys: list[str] | None = None,  # conditioner inputs zeroed for uc (default: all)
        num_steps: int | None = None,  # override the sampler's step count
        **kwargs: Any,  # ImageLogger extras (split, n_rows, use_ema_scope) are ignored
    ) -> dict[str, torch.Tensor]:
        """Inputs, reconstructions and samples in [-1, 1], rows in the batch's own layout."""
        T = batch.get("num_video_frames")
        frames = T or 1
        x = self.get_input(batch)
        clips = x.shape[0] // frames
        rows = min(x.shape[0], N * frames)
        x = x[:rows].to(self.device)
        log = {"inputs": x}
        z = self.encode_first_stage(x)
        log["reconstructions"] = self.decode_first_stage(z, num_video_frames=T)
        if not sample or self.sampler is None:
            return log
        ucg_keys = ucg_keys if ucg_keys is not None else self._embedder_input_keys()
        c, uc = self.conditioner.get_unconditional_conditioning(
            batch, force_uc_zero_embeddings=list(ucg_keys)
        )
        c, uc = (truncate_cond(d, rows, frames, clips) for d in (c, uc))
        # image_only_indicator is left to the network's default (all frames are video frames):
        # a batch's (b, t) indicator would not match the guider's doubled batch.
        extra = {"num_video_frames": T} if T else {}
        with self.ema_scope("log_images"):
            samples = self.sample(c, uc=uc, batch_size=rows, shape=z.shape[1:], num_steps=num_steps,
                                  **extra)
        log["samples"] = self.decode_first_stage(samples, num_video_frames=T)
        return log

    def _embedder_input_keys(self) -> list[str]:
        keys = []
        for embedder in self.conditioner.embedders:
            if embedder.input_key is not None:
                keys.append(embedder.input_key)
            keys += list(getattr(embedder, "input_keys", None) or [])
        return keys


def truncate_cond(cond: dict, rows: int, frames: int, clips: int) -> dict:
    """Conditioning of the first `rows` input rows; per-clip tensors (`clips` rows) keep whole clips."""
    out = {}
    for key, value in cond.items():
        if isinstance(value, torch.Tensor):
            per_clip = frames > 1 and value.shape[0] == clips
            out[key] = value[: rows // frames] if per_clip else value[:rows]
        else:
            out[key] = value
    return out

