"""`TrainableAutoencodingEngine`: a KL autoencoder (VAE) that trains with main.py.

    python main.py --base configs/example_training/toy/digits_vae.yaml -t

It is an `AutoencodingEngine` (same constructor keys as upstream's, same state-dict layout
`encoder.*` / `decoder.*`) that is also a LightningModule. The frozen first stages stay plain
`nn.Module`s in sgm/models/autoencoder.py, so that importing them never imports Lightning; a trained
checkpoint (`checkpoints/last.ckpt`) loads into one through its `ckpt_path`.

One training step (the order a diagnostics probe replays):
    x -> moments = encoder(x) -> q(z|x) = N(μ, σ²) -> z (one RNG draw, or μ) -> x_rec = decoder(z)
    loss = rec(x, x_rec) + kl_weight · KL(q(z|x) || N(0, I))        (sgm/modules/autoencoding/losses.py)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import pytorch_lightning as pl
import torch
from torch import nn

from sgm.models.autoencoder import AutoencodingEngine
from sgm.modules.autoencoding.regularizers import DiagonalGaussianRegularizer
from sgm.modules.distributions.distributions import DiagonalGaussianDistribution
from sgm.util import ConfigError, default, get_obj_from_str, instantiate_from_config


@dataclass
class AutoencoderPass:
    """One forward pass of a training step."""

    x: torch.Tensor  # (N, C, H, W) input
    posterior: DiagonalGaussianDistribution  # q(z|x), moments (N, 2z, h, w)
    z: torch.Tensor  # (N, z, h, w) latent given to the decoder (a sample, or μ)
    x_rec: torch.Tensor  # (N, C, H, W) reconstruction


class TrainableAutoencodingEngine(AutoencodingEngine, pl.LightningModule):
    """encoder -> DiagonalGaussian -> decoder, trained on reconstruction + kl_weight · KL."""

    def __init__(
        self,
        *,
        encoder_config: Mapping,  # target/params of the encoder (must output 2·z channels: μ, log σ²)
        decoder_config: Mapping,  # target/params of the decoder
        regularizer_config: Mapping,  # a DiagonalGaussianRegularizer (sample: z ~ q(z|x) in training)
        loss_config: Mapping,  # target/params of the loss, e.g. losses.KLReconstructionLoss
        optimizer_config: Mapping | None = None,  # default torch.optim.Adam; no `lr` in its params
        learning_rate: float = 1.0e-4,  # base LR (main.py passes model.base_learning_rate)
        lr_g_factor: float = 1.0,  # upstream's autoencoder LR multiplier: LR = learning_rate · lr_g_factor
        input_key: str = "jpg",  # batch key of the images, (N, C, H, W) in [-1, 1]
        monitor: str | None = None,  # unused: Lightning metric name of upstream configs
        ckpt_path: str | None = None,  # optional weights to start from
    ):
        super().__init__(encoder_config=encoder_config, decoder_config=decoder_config,
                         regularizer_config=regularizer_config)
        if not isinstance(self.regularization, DiagonalGaussianRegularizer):
            raise ConfigError("TrainableAutoencodingEngine trains a KL autoencoder: regularizer_config must be "
                              "sgm.modules.autoencoding.regularizers.DiagonalGaussianRegularizer, "
                              f"got {type(self.regularization).__name__}")
        self.loss = instantiate_from_config(loss_config)
        self.optimizer_config = dict(default(optimizer_config, {"target": "torch.optim.Adam"}))
        self.learning_rate = learning_rate
        self.lr_g_factor = lr_g_factor
        self.input_key = input_key
        if ckpt_path is not None:
            self.load_weights(ckpt_path)

    # ------------------------------------------------------------------ forward pieces
    def get_input(self, batch: dict) -> torch.Tensor:
        if self.input_key not in batch:
            raise KeyError(f"batch has no key '{self.input_key}' (model.params.input_key); "
                           f"batch keys: {sorted(batch)}")
        return batch[self.input_key]

    def posterior(self, x: torch.Tensor) -> DiagonalGaussianDistribution:
        """q(z|x) in the unscaled latent space (no scale_factor here)."""
        return DiagonalGaussianDistribution(self._encoder_output(x))  # moments (N, 2z, h, w)

    def reconstruct(self, batch: dict) -> AutoencoderPass:
        x = self.get_input(batch)  # (N, C, H, W)
        posterior = self.posterior(x)
        z = self.regularization.latent(posterior)  # (N, z, h, w); draws ε when sampling
        return AutoencoderPass(x, posterior, z, self.decode(z))

    def loss_terms(self, batch: dict) -> dict[str, torch.Tensor]:
        """The unweighted terms {"rec", "kl"} of one step; the weights are `self.loss.weights()`."""
        out = self.reconstruct(batch)
        return self.loss.terms(out.x, out.x_rec, out.posterior)

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        out = self.reconstruct(batch)
        loss, terms = self.loss(out.x, out.x_rec, out.posterior)
        mse = (out.x_rec.detach().float() - out.x.float()).pow(2).mean()  # per pixel, whatever rec_loss is
        self.log("loss", loss, prog_bar=True, logger=True, on_step=True, on_epoch=False)
        self.log_dict({"loss/rec": terms["rec"], "loss/kl": terms["kl"], "rec/mse": mse},
                      prog_bar=False, logger=True, on_step=True, on_epoch=False)
        return loss

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def configure_optimizers(self) -> torch.optim.Optimizer:
        kwargs = dict(self.optimizer_config.get("params", None) or {})
        if "lr" in kwargs:
            raise ConfigError("set the learning rate with model.base_learning_rate (and lr_g_factor), "
                              "not optimizer_config.params.lr")
        optimizer_cls = get_obj_from_str(self.optimizer_config["target"])
        return optimizer_cls(self.trainable_parameters(), lr=self.learning_rate * self.lr_g_factor, **kwargs)

    # ------------------------------------------------------------------ images
    @torch.no_grad()
    def log_images(
        self,
        batch: dict,
        N: int = 8,  # images to log
        sample: bool = True,  # also decode draws from the prior N(0, I)
        **kwargs: Any,  # ImageLogger extras (split, n_rows, ...) are ignored
    ) -> dict[str, torch.Tensor]:
        """Inputs, reconstructions from the posterior mean, and decoded prior draws, in [-1, 1]."""
        x = self.get_input(batch)[:N].to(self.device)  # (N, C, H, W)
        posterior = self.posterior(x)
        log = {"inputs": x, "reconstructions": self.decode(posterior.mode())}
        if sample:  # a private generator: the training RNG stream is left alone
            generator = torch.Generator().manual_seed(0)
            z = torch.randn(posterior.mean.shape, generator=generator).to(posterior.mean)  # (N, z, h, w)
            log["samples"] = self.decode(z)
        return log
