"""Quality of generated 8x8 digits, measured by our own small classifier (no download).

The classifier (`DigitClassifier`, 53k parameters) is trained by `scripts/train_digit_classifier.py`
on the "train" split of scikit-learn's digits (`sgm.data.digits`) only, with +-1 px shifts and a
little Gaussian noise. Its weights are committed (`assets/digit_classifier.safetensors`, 208 KiB;
the script re-creates them bit for bit) and reach 99.4 % accuracy on the held-out split (359
images), the real digits the metrics compare against. Samples are (N, 1, 8, 8) or (N, 8, 8) in
[-1, 1] (clamped), as tensors or arrays.

`evaluate(images, labels=None)` returns these keys, always (NaN where not applicable):

- `accuracy`: share of samples the classifier assigns to their conditioning class (needs
  `labels`). Real held-out digits: 0.994; chance: 0.1. A good class-conditional model: > 0.95.
- `fd`: Frechet distance between Gaussians fitted to the classifier's 128-d penultimate features
  of the samples and of the 359 held-out digits (the FID formula with our classifier in place of
  Inception): ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)). Lower is better; identical
  sets give 0. Reference values (real training digits play a perfect model):
      N = 359: real 3.4-5.5 | N = 1000: real 2.3 | N = 1438 (all train): real 1.8
      Gaussian noise ~200, uniform noise ~230, blank images ~600 (any N).
  The estimate is biased upward for small N (sampling noise in mu and S adds to it), so compare
  numbers only at the same N. Report at N = 1000 (or N = 359, the held-out size).
- `coverage`: share of the 10 classes predicted for at least `min_share` (2 %) of the samples;
  1.0 when every digit appears, 0.1 when the model always draws the same digit.
- `class_entropy`: entropy of the predicted-class histogram divided by log(10), in [0, 1];
  1 = all classes equally often (what unconditional samples should reach: the held-out set scores
  1.00), 0 = a single class. Gaussian noise scores coverage 0.8, entropy 0.75.
- `n`: number of samples.
"""
from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

DEFAULT_WEIGHTS = Path(__file__).parent / "assets" / "digit_classifier.safetensors"
NUM_CLASSES = 10
FEATURE_DIM = 128


class DigitClassifier(nn.Module):
    """Small CNN for 8x8 digits in [-1, 1]; `features` gives the 128-d penultimate layer."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc = nn.Linear(64 * 2 * 2, FEATURE_DIM)
        self.head = nn.Linear(FEATURE_DIM, NUM_CLASSES)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = F.max_pool2d(F.gelu(self.conv1(x)), 2)  # (N, 32, 4, 4)
        h = F.max_pool2d(F.gelu(self.conv2(h)), 2)  # (N, 64, 2, 2)
        return F.gelu(self.fc(h.flatten(1)))  # (N, 128)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # (N, 10) logits


def freeze(module: nn.Module) -> nn.Module:
    """Eval mode and no gradients."""
    module.eval()
    module.requires_grad_(False)
    return module


@functools.lru_cache(maxsize=4)
def _load_cached(path: str) -> DigitClassifier:
    from safetensors.torch import load_file

    model = DigitClassifier()
    model.load_state_dict(load_file(path))
    return freeze(model)


def load_digit_classifier(path: str | Path | None = None) -> DigitClassifier:
    """The committed classifier (or the one at `path`), frozen, cached per path."""
    return _load_cached(str(Path(path or DEFAULT_WEIGHTS).resolve()))


class DigitFeatures(nn.Module):
    """The committed classifier's 128-d penultimate features as a frozen encoder, (N, 1, 8, 8) -> (N, 128).

    Its own copy (not the cached metrics instance), so an engine that holds it may move it to its device.
    Gradients flow to the input, never into the weights.
    """

    def __init__(
        self,
        path: str | None = None,  # weights file; None: the committed classifier
    ) -> None:
        super().__init__()
        from safetensors.torch import load_file

        self.classifier = DigitClassifier()
        self.classifier.load_state_dict(load_file(str(Path(path or DEFAULT_WEIGHTS))))
        freeze(self.classifier)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier.features(images.float())  # (N, 128)


def as_digit_batch(images) -> torch.Tensor:
    """(N, 1, 8, 8) or (N, 8, 8) tensor/array -> float32 (N, 1, 8, 8) clamped to [-1, 1]."""
    images = torch.as_tensor(images)
    if images.ndim == 3 and tuple(images.shape[1:]) == (8, 8):
        images = images[:, None]
    if images.ndim != 4 or tuple(images.shape[1:]) != (1, 8, 8):
        raise ValueError(
            "digit metrics expect images of shape (N, 1, 8, 8) or (N, 8, 8), "
            f"got {tuple(images.shape)}"
        )
    if len(images) == 0:
        raise ValueError("digit metrics need at least one image, got an empty batch")
    return images.float().clamp(-1, 1)


def gaussian_frechet_distance(mu_a, cov_a, mu_b, cov_b) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) in float64.

    Tr (S_a S_b)^(1/2) = sum of sqrt(eigenvalues of S_a^(1/2) S_b S_a^(1/2)), a symmetric PSD
    matrix, so two symmetric eigen-decompositions suffice (no complex sqrtm round-off).
    """
    mu_a, mu_b = np.asarray(mu_a, np.float64), np.asarray(mu_b, np.float64)
    cov_a, cov_b = np.asarray(cov_a, np.float64), np.asarray(cov_b, np.float64)
    evals_a, evecs_a = np.linalg.eigh(cov_a)
    sqrt_a = (evecs_a * np.sqrt(evals_a.clip(min=0))) @ evecs_a.T  # S_a^(1/2)
    middle = sqrt_a @ cov_b @ sqrt_a
    tr_sqrt = np.sqrt(np.linalg.eigvalsh((middle + middle.T) / 2).clip(min=0)).sum()
    diff = mu_a - mu_b
    return float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2 * tr_sqrt)


def feature_statistics(feats) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) of features (N, D), float64."""
    feats = np.asarray(feats, np.float64)
    if feats.ndim != 2 or len(feats) < 2:
        raise ValueError(f"Frechet distance needs features of shape (N >= 2, D), got {feats.shape}")
    return feats.mean(0), np.cov(feats, rowvar=False)


def frechet_distance(feats_a, feats_b) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (N_a, D) and (N_b, D)."""
    return gaussian_frechet_distance(*feature_statistics(feats_a), *feature_statistics(feats_b))


def _accuracy(preds: torch.Tensor, labels) -> float:
    labels = torch.as_tensor(labels).long().cpu()
    if labels.shape != preds.shape:
        raise ValueError(f"got {len(preds)} images but labels of shape {tuple(labels.shape)}")
    return (preds == labels).double().mean().item()


class DigitMetrics:
    """Classifier-based metrics; held-out features are computed once and cached."""

    def __init__(
        self,
        classifier: DigitClassifier | None = None,  # default: the committed weights
        batch_size: int = 1024,  # images per classifier call
        min_share: float = 0.02,  # a class is covered from this share of the samples on
    ):
        self.classifier = classifier if classifier is not None else load_digit_classifier()
        self.batch_size = batch_size
        self.min_share = min_share
        self._heldout_stats = None

    @torch.no_grad()
    def _run(self, images) -> tuple[torch.Tensor, torch.Tensor]:
        """Features (N, 128) float64 and predicted classes (N,), both on the CPU."""
        images = as_digit_batch(images)
        device = next(self.classifier.parameters()).device
        feats, preds = [], []
        for chunk in images.split(self.batch_size):
            h = self.classifier.features(chunk.to(device))
            feats.append(h.double().cpu())
            preds.append(self.classifier.head(h).argmax(1).cpu())
        return torch.cat(feats), torch.cat(preds)

    def features(self, images) -> np.ndarray:
        return self._run(images)[0].numpy()

    def predict(self, images) -> torch.Tensor:
        return self._run(images)[1]

    def class_accuracy(self, images, labels) -> float:
        return _accuracy(self.predict(images), labels)

    def heldout_statistics(self) -> tuple[np.ndarray, np.ndarray]:
        if self._heldout_stats is None:
            from sgm.data.digits import load_digits_split

            self._heldout_stats = feature_statistics(self.features(load_digits_split("heldout")[0]))
        return self._heldout_stats

    def fid_vs_heldout(self, images) -> float:
        return self._fd_vs_heldout(self.features(images))

    def _fd_vs_heldout(self, feats: np.ndarray) -> float:
        return gaussian_frechet_distance(*feature_statistics(feats), *self.heldout_statistics())

    def class_coverage(self, images) -> tuple[float, float]:
        """(coverage, class_entropy) of the predicted classes."""
        return self._coverage(self.predict(images))

    def _coverage(self, preds: torch.Tensor) -> tuple[float, float]:
        share = torch.bincount(preds, minlength=NUM_CLASSES).double() / len(preds)
        coverage = (share >= self.min_share).double().mean().item()
        nonzero = share[share > 0]
        entropy = -(nonzero * nonzero.log()).sum().item() / math.log(NUM_CLASSES)
        return coverage, abs(entropy)  # abs: a single class gives -0.0

    def evaluate(self, images, labels=None) -> dict:
        """accuracy (NaN without labels), fd (NaN for N < 2), coverage, class_entropy, n."""
        feats, preds = self._run(images)
        coverage, class_entropy = self._coverage(preds)
        return {
            "accuracy": _accuracy(preds, labels) if labels is not None else float("nan"),
            "fd": self._fd_vs_heldout(feats.numpy()) if len(preds) >= 2 else float("nan"),
            "coverage": coverage,
            "class_entropy": class_entropy,
            "n": len(preds),
        }


@functools.lru_cache(maxsize=1)
def default_metrics() -> DigitMetrics:
    return DigitMetrics()


def class_accuracy(images, labels) -> float:
    return default_metrics().class_accuracy(images, labels)


def fid_vs_heldout(images) -> float:
    return default_metrics().fid_vs_heldout(images)


def class_coverage(images) -> tuple[float, float]:
    return default_metrics().class_coverage(images)


def evaluate(images, labels=None) -> dict:
    return default_metrics().evaluate(images, labels)
