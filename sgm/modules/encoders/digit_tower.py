"""A frozen, pretrained image tower for the digit toys: what SVD's CLIP image embedder is to real video.

SVD conditions its cross-attention on a pretrained CLIP image embedding of the conditioning frame: a global,
semantic description of *what* is in the picture, at no particular place. That is how the network keeps an
object's identity while the object moves away from where the concat latent shows it. The digit toys used a
tiny *random* frozen CLIP, whose embedding says nothing about the digit (docs/moving_digits_teacher.md), so
their networks had to carry the digit's shape across the canvas through convolutions alone.

`DigitImageTower` is the toys' pretrained tower: the digit window of each image (the 8x8 crop around its ink,
`sgm.metrics.moving_digits.frame_digit_crops`) through the committed digit classifier's penultimate features
(`sgm.metrics.digits.DigitFeatures`), layer-normalised. It plugs in as FrozenOpenCLIPImagePredictionEmbedder's
`open_clip_embedding_config`, the slot SVD's CLIP tower fills:

    target: sgm.modules.encoders.modules.FrozenOpenCLIPImagePredictionEmbedder
    params:
      n_cond_frames: 1
      n_copies: 1
      open_clip_embedding_config:
        target: sgm.modules.encoders.digit_tower.DigitImageTower

Caution when reading the toys' metrics: frame accuracy, identity and FD are measured with the same classifier.
The teacher is trained by denoising only (never against the classifier), so this tower gives it the digit's
class the way CLIP gives SVD an object's; it does not optimise the metric.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from sgm.metrics.digits import DigitFeatures
from sgm.metrics.moving_digits import frame_digit_crops

FEATURES = 128  # the classifier's penultimate width


class DigitImageTower(nn.Module):
    """(N, C, H, W) images in [-1, 1], H, W >= 8 -> (N, 128) layer-normalised digit features.

    Frozen weights; differentiable in the images, like the CLIP tower (a semantic loss term may read generated
    frames through it: configs/dmd/svd_dino.yaml)."""

    def __init__(
        self,
        path: str | None = None,  # classifier weights; None: the committed classifier
    ) -> None:
        super().__init__()
        self.features = DigitFeatures(path)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        crops = frame_digit_crops(images)  # (N, 1, 8, 8)
        z = self.features(crops.to(images.device))  # (N, 128)
        return F.layer_norm(z, (FEATURES,)).to(images.dtype)
