"""First-stage autoencoders: plain `nn.Module`s, used frozen (first stage, conditioning VAE).

The first-stage contract (every class here; what `DiffusionEngine` and embedders rely on):

* `encode(x, return_reg_log=False)` -> `z`, or `(z, reg_log)` when `return_reg_log`.
* `decode(z, num_video_frames=None, **decoder_kwargs)` -> `x`. `num_video_frames` is T, the frames
  per clip of flattened `(B·T, ...)` rows. Temporal decoders (`VideoDecoder`) need it and receive
  it as their `timesteps`; image decoders and `IdentityFirstStage` ignore it. Callers therefore
  always pass it for video and never inspect which decoder sits inside. Rows handed to one call
  must be whole clips.
* `forward(x, num_video_frames=None)` -> `(z, reconstruction, reg_log)`.
* `encoder` and `decoder` attributes exist on every first stage (`nn.Identity` for
  `IdentityFirstStage`, which is therefore usable for pixel-space models everywhere).

Keys used by upstream configs but meaningless for a frozen module are accepted and documented as
unused: `monitor` (a Lightning metric name) and `loss_config`/`lossconfig` (autoencoder training
losses, not built here). Training a KL autoencoder is `TrainableAutoencodingEngine` in
sgm/models/autoencoder_training.py (a LightningModule kept apart, so that importing these first stages
never imports Lightning); its checkpoints load here. `ckpt_path` loads weights (`.safetensors`, or a
`.ckpt`/`.pt` holding a `state_dict`).
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from sgm.io.checkpoint import load_weights, read_state_dict
from sgm.modules.autoencoding.temporal_ae import VideoDecoder
from sgm.util import ConfigError, instantiate_from_config

ENCODER_TARGET = "sgm.modules.diffusionmodules.model.Encoder"
DECODER_TARGET = "sgm.modules.diffusionmodules.model.Decoder"
GAUSSIAN_REGULARIZER_TARGET = "sgm.modules.autoencoding.regularizers.DiagonalGaussianRegularizer"

EncodeResult = torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]


class AbstractAutoencoder(nn.Module):
    """Base of every first stage; subclasses implement `encode` and `decode` (contract above)."""

    def encode(self, x: torch.Tensor, return_reg_log: bool = False) -> EncodeResult:
        raise NotImplementedError(f"{type(self).__name__} must implement encode")

    def decode(
        self, z: torch.Tensor, num_video_frames: int | None = None, **decoder_kwargs: Any
    ) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement decode")

    def forward(
        self, x: torch.Tensor, num_video_frames: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        z, reg_log = self.encode(x, return_reg_log=True)
        return z, self.decode(z, num_video_frames=num_video_frames), reg_log

    def load_weights(self, path: str | Path) -> None:
        """Load a checkpoint; every key of this module must be present, extra keys are reported."""
        report = load_weights(self, read_state_dict(str(path)), path=str(path))
        if report.unexpected:
            warnings.warn(report.summary())


class AutoencodingEngine(AbstractAutoencoder):
    """encoder -> regularizer -> latent; latent -> decoder. SVD's first stage (no quant convs)."""

    def __init__(
        self,
        *,
        encoder_config: Mapping,  # target/params of the encoder (torch.nn.Identity: decode-only)
        decoder_config: Mapping,  # target/params of the decoder (Decoder or VideoDecoder)
        regularizer_config: Mapping,  # target/params of the regularizer (e.g. DiagonalGaussian)
        loss_config: Mapping | None = None,  # unused here (TrainableAutoencodingEngine builds it)
        monitor: str | None = None,  # unused: Lightning metric name
        ckpt_path: str | None = None,  # optional weights to load
    ):
        super().__init__()
        self.encoder = instantiate_from_config(encoder_config)
        self.decoder = instantiate_from_config(decoder_config)
        self.regularization = instantiate_from_config(regularizer_config)
        if ckpt_path is not None:
            self.load_weights(ckpt_path)

    def _encoder_output(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def _decoder_input(self, z: torch.Tensor) -> torch.Tensor:
        return z

    def encode(self, x: torch.Tensor, return_reg_log: bool = False) -> EncodeResult:
        z, reg_log = self.regularization(self._encoder_output(x))  # (N, z, h, w)
        return (z, reg_log) if return_reg_log else z

    def decode(
        self, z: torch.Tensor, num_video_frames: int | None = None, **decoder_kwargs: Any
    ) -> torch.Tensor:
        if num_video_frames is not None and isinstance(self.decoder, VideoDecoder):
            decoder_kwargs["timesteps"] = num_video_frames
        return self.decoder(self._decoder_input(z), **decoder_kwargs)  # (N, C, H, W)


class AutoencodingEngineLegacy(AutoencodingEngine):
    """Encoder and Decoder from one `ddconfig`, with 1×1 `quant_conv` / `post_quant_conv`."""

    def __init__(
        self,
        *,
        embed_dim: int,  # latent channels after quant_conv
        ddconfig: Mapping,  # params shared by Encoder and Decoder
        regularizer_config: Mapping,  # target/params of the regularizer
        loss_config: Mapping | None = None,  # unused: autoencoder training loss (not built)
        lossconfig: Mapping | None = None,  # unused: old spelling of loss_config
        monitor: str | None = None,  # unused: Lightning metric name
        ckpt_path: str | None = None,  # optional weights to load
    ):
        if loss_config is not None and lossconfig is not None:
            raise ConfigError("give either loss_config or its old spelling lossconfig, not both")
        super().__init__(
            encoder_config={"target": ENCODER_TARGET, "params": ddconfig},
            decoder_config={"target": DECODER_TARGET, "params": ddconfig},
            regularizer_config=regularizer_config,
        )
        moments = 2 if ddconfig.get("double_z", True) else 1
        z_channels = ddconfig["z_channels"]
        self.embed_dim = embed_dim
        self.quant_conv = nn.Conv2d(moments * z_channels, moments * embed_dim, kernel_size=1)
        self.post_quant_conv = nn.Conv2d(embed_dim, z_channels, kernel_size=1)
        if ckpt_path is not None:
            self.load_weights(ckpt_path)

    def _encoder_output(self, x: torch.Tensor) -> torch.Tensor:
        return self.quant_conv(self.encoder(x))  # (N, 2·embed_dim, h, w)

    def _decoder_input(self, z: torch.Tensor) -> torch.Tensor:
        return self.post_quant_conv(z)  # (N, z_channels, h, w)


class AutoencoderKL(AutoencodingEngineLegacy):
    """KL autoencoder whose `encode` returns a posterior *sample*."""

    def __init__(self, **legacy_kwargs: Any):
        super().__init__(
            regularizer_config={"target": GAUSSIAN_REGULARIZER_TARGET, "params": {"sample": True}},
            **legacy_kwargs,
        )


class AutoencoderKLModeOnly(AutoencodingEngineLegacy):
    """KL autoencoder whose `encode` returns the posterior *mean* (the conditioning VAE)."""

    def __init__(self, **legacy_kwargs: Any):
        super().__init__(
            regularizer_config={"target": GAUSSIAN_REGULARIZER_TARGET, "params": {"sample": False}},
            **legacy_kwargs,
        )


class IdentityFirstStage(AbstractAutoencoder):
    """Pixel-space models: encode and decode are identities; no parameters."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Identity()
        self.decoder = nn.Identity()

    def encode(self, x: torch.Tensor, return_reg_log: bool = False) -> EncodeResult:
        return (x, {}) if return_reg_log else x

    def decode(
        self, z: torch.Tensor, num_video_frames: int | None = None, **decoder_kwargs: Any
    ) -> torch.Tensor:
        return z
