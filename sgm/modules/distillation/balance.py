"""Balancing the generator's loss terms by gradient, not by loss (optional; DMDEngine `balance:`).

Every `every`-th generator step the gradient norm of each weighted term on the generator's
parameters is measured (one `torch.autograd.grad` per term on the step's own graph) and each term
listed in `targets` gets a multiplier s_k so that its share moves toward the target ratio

    ratio_k = ||grad(s_k w_k L_k)|| / ||grad(w_ref L_ref)||,   s_k <- s_k * (target_k / ratio_k) ** rate

(clamped to [1 / max_scale, max_scale]). The loss then uses w_k * s_k. The multipliers are a buffer
(saved in checkpoints, so a resumed run continues them); ratios and multipliers are logged as
`balance/<term>_ratio` and `balance/<term>_scale`.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class GradientBalancer(nn.Module):
    def __init__(
        self,
        targets: dict[str, float],  # term -> target ratio of its gradient norm to the reference's
        reference: str = "dmd",  # the term the ratios are taken against (not scaled)
        every: int = 10,  # balance at every n-th generator step (global step / generator interval)
        rate: float = 0.5,  # exponent of the correction (1: jump to the target at once)
        max_scale: float = 1.0e3,  # multipliers stay in [1 / max_scale, max_scale]
    ) -> None:
        super().__init__()
        if reference in targets:
            raise ValueError(f"balance: the reference term '{reference}' cannot have a target")
        if any(t <= 0 for t in targets.values()) or every < 1 or not 0 < rate <= 1:
            raise ValueError(f"balance needs targets > 0, every >= 1 and 0 < rate <= 1, got {targets}, {every}, {rate}")
        self.names = sorted(targets)
        self.targets = dict(targets)
        self.reference = reference
        self.every = every
        self.rate = rate
        self.max_scale = max_scale
        self.register_buffer("log_scales", torch.zeros(len(self.names)))

    def scales(self) -> dict[str, float]:
        return {name: float(s) for name, s in zip(self.names, self.log_scales.exp())}

    def apply(self, weights: dict[str, float]) -> dict[str, float]:
        """The weights with the multipliers applied (terms without a target unchanged)."""
        scales = self.scales()
        return {name: w * scales.get(name, 1.0) for name, w in weights.items()}

    def update(
        self,
        losses: dict[str, torch.Tensor],  # unweighted terms of this generator step, with graph
        weights: dict[str, float],  # their weights, multipliers applied
        params: Sequence[nn.Parameter],  # the generator's trainable parameters
    ) -> dict[str, float]:
        """Measure each term's gradient norm, move the multipliers; -> the logged ratios and scales."""
        norms = {}
        for name in [self.reference, *self.names]:
            if name in losses and weights.get(name, 0.0) != 0.0 and losses[name].requires_grad:
                grads = torch.autograd.grad(weights[name] * losses[name], list(params), retain_graph=True,
                                            allow_unused=True)
                norms[name] = float(torch.sqrt(sum(g.float().pow(2).sum() for g in grads if g is not None)))
        log = {}
        ref = norms.get(self.reference, 0.0)
        with torch.no_grad():
            for i, name in enumerate(self.names):
                if ref <= 0 or norms.get(name, 0.0) <= 0:
                    continue
                ratio = norms[name] / ref
                step = self.rate * (torch.log(torch.tensor(self.targets[name] / ratio)))
                bound = torch.log(torch.tensor(self.max_scale))
                self.log_scales[i] = (self.log_scales[i] + step.to(self.log_scales)).clamp(-bound, bound)
                log[f"balance/{name}_ratio"] = ratio
        log |= {f"balance/{name}_scale": scale for name, scale in self.scales().items()}
        return log


__all__ = ["GradientBalancer"]
