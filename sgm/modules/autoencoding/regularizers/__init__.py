"""Latent regularizers: the step between an autoencoder's encoder and its latent.

Each regularizer maps the encoder output to `(z, log_dict)`; the log dict carries the
regularization terms (e.g. `kl_loss`) for logging or an autoencoder training loss.
"""
from __future__ import annotations

import torch
from torch import nn

from sgm.modules.distributions.distributions import DiagonalGaussianDistribution


class AbstractRegularizer(nn.Module):
    """`forward(z) -> (z_regularized, log_dict)`. Regularizers here own no parameters."""

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError(f"{type(self).__name__} must implement forward(z)")


class IdentityRegularizer(AbstractRegularizer):
    """Pass-through: the encoder output is the latent."""

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return z, {}


class DiagonalGaussianRegularizer(AbstractRegularizer):
    """Treat the encoder output as Gaussian moments; return a posterior sample (or its mean).

    `log_dict["kl_loss"]` is KL(q(z|x) || N(0, I)) summed over latent elements and averaged
    over rows.
    """

    def __init__(
        self,
        sample: bool = True,  # True: z ~ q(z|x); False: z = mean of q(z|x)
    ):
        super().__init__()
        self.sample = sample

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        posterior = DiagonalGaussianDistribution(z)  # moments (N, 2c, h, w)
        latent = self.latent(posterior)  # (N, c, h, w)
        kl_per_row = posterior.kl()  # (N,)
        return latent, {"kl_loss": kl_per_row.sum() / kl_per_row.shape[0]}

    def latent(self, posterior: DiagonalGaussianDistribution) -> torch.Tensor:
        """The latent handed to the decoder: a reparameterised sample, or the mean (`sample=False`)."""
        return posterior.sample() if self.sample else posterior.mode()  # (N, c, h, w)
