"""Training loss of a KL autoencoder (VAE): reconstruction + kl_weight · KL(q(z|x) || N(0, I)).

    L = rec(x, x_rec) + kl_weight · KL,   KL = ½ Σ (μ² + σ² − 1 − log σ²)   (closed form, per row)

Both terms are sums over a row's elements averaged over rows (upstream's `nll_loss` / `kl_loss`
convention), so `kl_weight` is the β of a β-VAE: β = 1 is the ELBO with a unit-scale Laplace (L1) or
Gaussian (L2, variance ½) decoder; Stable Diffusion's VAE used 1e-6 next to LPIPS and a GAN.

What is deliberately missing: upstream's `GeneralLPIPSWithDiscriminator` adds an LPIPS perceptual
term and a patch discriminator. Both need downloaded weights (VGG, LPIPS heads), so they are not
built here; this loss is the plain VAE objective, enough for small data and for diagnostics.

KL rules (the traps of the loss-debugging notes, section B):

* The KL is computed from the posterior's mean μ and log-variance log σ² (the encoder's moments),
  never from the sampled z: a penalty such as ½‖z‖² on the sample is a one-sample estimate with no
  −log σ² term, so it rewards σ → 0 instead of pulling σ towards 1.
* It is computed in the autoencoder's own, *unscaled* latent space. A diffusion model sees
  `scale_factor · z` (0.18215 for SD); that scale belongs to `DiffusionEngine`, which applies it after
  `encode`. KL on scaled moments would target N(0, scale_factor⁻² I) instead of N(0, I). Choose
  `scale_factor` afterwards as 1 / std of the trained encoder's latents.
"""
from __future__ import annotations

import torch
from torch import nn

from sgm.modules.distributions.distributions import DiagonalGaussianDistribution

REC_LOSSES = ("l1", "l2")


class KLReconstructionLoss(nn.Module):
    """`terms()` gives the unweighted terms {"rec", "kl"}; `forward()` their weighted sum."""

    def __init__(
        self,
        kl_weight: float = 1.0,  # β: weight of the KL term (0 switches it off: a plain autoencoder)
        rec_loss: str = "l1",  # "l1" (|x - x_rec|) or "l2" ((x - x_rec)²), summed per row
    ):
        super().__init__()
        if rec_loss not in REC_LOSSES:
            raise ValueError(f"KLReconstructionLoss: unknown rec_loss {rec_loss!r}, expected one of {REC_LOSSES}")
        if kl_weight < 0:
            raise ValueError(f"KLReconstructionLoss: kl_weight must be >= 0, got {kl_weight}")
        self.kl_weight = kl_weight
        self.rec_loss = rec_loss

    def reconstruction(self, x: torch.Tensor, x_rec: torch.Tensor) -> torch.Tensor:
        """Per-row sum of the pixel error, averaged over rows -> ()."""
        diff = (x_rec.float() - x.float()).flatten(1)  # (N, C·H·W)
        per_pixel = diff.abs() if self.rec_loss == "l1" else diff.pow(2)
        return per_pixel.sum(dim=1).mean()

    @staticmethod
    def kl(posterior: DiagonalGaussianDistribution) -> torch.Tensor:
        """KL(N(μ, σ²) || N(0, I)) summed over latent elements, averaged over rows -> ()."""
        return posterior.kl().mean()  # closed form from μ and log σ², (N,) -> ()

    def terms(
        self, x: torch.Tensor, x_rec: torch.Tensor, posterior: DiagonalGaussianDistribution
    ) -> dict[str, torch.Tensor]:
        """The unweighted terms, each a scalar with its own graph (a probe differentiates them alone)."""
        return {"rec": self.reconstruction(x, x_rec), "kl": self.kl(posterior)}

    def weights(self) -> dict[str, float]:
        return {"rec": 1.0, "kl": self.kl_weight}

    def forward(
        self, x: torch.Tensor, x_rec: torch.Tensor, posterior: DiagonalGaussianDistribution
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(total loss, the unweighted terms)."""
        terms = self.terms(x, x_rec, posterior)
        total = sum(self.weights()[name] * value for name, value in terms.items())
        return total, terms
