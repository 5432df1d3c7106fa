"""Pieces every probe shares: isolated gradients of loss terms, per-sigma-bin means, shuffled conditions.

Gradient norms ("look at gradients, not scalars"): the engine returns each loss term unweighted with
its graph (e.g. `DMDEngine.generator_loss_terms`); each weighted term is differentiated alone with
`torch.autograd.grad` on the trainable parameters of its role, from that one forward pass. Parameters a
term does not reach count as zero. A term whose value has no gradient path is reported as detached.

Names (one flat dict, `/`-separated):
    grad/<term>, grad/<term>_ratio (of its role's total), grad/<term>_detached (1 if no grad path),
    grad/<role>_total, grad/total (all roles together)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import nn

from sgm.rng import preserved_rng
from sgm.util import broadcast_cond_to_rows

DEFAULT_SIGMA_BINS = (0.0, 0.1, 0.5, 2.0, 10.0, 1000.0)  # edges; a row is in [lo, hi)


# ---------------------------------------------------------------------------------- gradients
@dataclass
class TermGrad:
    """The gradient of one isolated loss term on its role's parameters (None entries = no path)."""

    grads: list[torch.Tensor | None]
    detached: bool = False  # the value had no gradient path at all

    @property
    def norm(self) -> float:
        squares = [g.float().pow(2).sum() for g in self.grads if g is not None]
        return float(torch.stack(squares).sum().sqrt()) if squares else 0.0


def term_grad(loss: torch.Tensor | None, params: Sequence[nn.Parameter], retain_graph: bool = False) -> TermGrad:
    """d loss / d params; None (term switched off) -> zero gradient; no grad path -> flagged."""
    if loss is None:
        return TermGrad([None] * len(params))
    if not loss.requires_grad:
        return TermGrad([None] * len(params), detached=True)
    grads = torch.autograd.grad(loss, list(params), retain_graph=retain_graph, allow_unused=True)
    return TermGrad(list(grads))


@dataclass
class RoleGrads:
    """The isolated terms of one role (generator, critic, network) and the role's total loss."""

    role: str
    total: TermGrad
    terms: dict[str, TermGrad] = field(default_factory=dict)


def role_grads(
    role: str,  # generator, critic, network, autoencoder
    losses: dict[str, torch.Tensor],  # name -> unweighted scalar with graph (the terms that ran)
    weights: dict[str, float],  # name -> weight; names without a loss were switched off
    params: Sequence[nn.Parameter],  # the role's trainable parameters
) -> RoleGrads:
    """Every term's weighted gradient and the total's, from one forward pass (the graph is kept)."""
    total = term_grad(sum(weights[n] * v for n, v in losses.items()), params, retain_graph=True)
    terms = {}
    for name, weight in weights.items():
        if weight == 0 or name not in losses:  # switched off by its weight: zero, never "detached"
            terms[name] = term_grad(None, params)
            continue
        grad = term_grad(weight * losses[name], params, retain_graph=True)
        grad.detached = grad.detached or grad.norm == 0.0  # on, yet no gradient path
        terms[name] = grad
    return RoleGrads(role, total, terms)


def grad_metrics(roles: Sequence[RoleGrads]) -> dict[str, float]:
    out: dict[str, float] = {}
    squares = 0.0
    for role in roles:
        total = role.total.norm
        squares += total**2
        out[f"grad/{role.role}_total"] = total
        for name, grad in role.terms.items():
            norm = grad.norm
            out[f"grad/{name}"] = norm
            out[f"grad/{name}_ratio"] = norm / total if total > 0 else 0.0
            out[f"grad/{name}_detached"] = float(grad.detached)
    out["grad/total"] = squares**0.5
    return out


# ---------------------------------------------------------------------------------- statistics
def bin_name(lo: float, hi: float) -> str:
    return f"sigma_{lo:g}-{hi:g}"


def per_bin(values: torch.Tensor, sigma: torch.Tensor, edges: Sequence[float], prefix: str) -> dict[str, float]:
    """Mean of per-row `values` (N,) in each sigma bin [lo, hi); empty bins are left out."""
    values, sigma = values.detach().float().cpu(), sigma.detach().float().cpu()
    out = {}
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (sigma >= lo) & (sigma < hi)
        if inside.any():
            out[f"{prefix}{bin_name(lo, hi)}"] = float(values[inside].mean())
    return out


def shuffled_cond(cond: dict, rows: int, num_frames: int = 1) -> dict:
    """Conditions permuted across the batch: clip b gets clip b+1's (a roll, so no RNG is used)."""
    cond = broadcast_cond_to_rows(cond, rows)
    return {k: torch.roll(v, num_frames, dims=0) if isinstance(v, torch.Tensor) and v.ndim > 0 and v.shape[0] == rows
            else v for k, v in cond.items()}


def row_mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.float() - b.float()).pow(2).flatten(1).mean(dim=1)  # (N,)


@dataclass
class ProbeResult:
    metrics: dict[str, float]
    images: dict[str, torch.Tensor] = field(default_factory=dict)  # (N, C, H, W) in the latent space
    num_frames: int = 1


class Probe:
    """What `LossDiagnostics` measures on one sampled step of one engine type.

    `default_groups`: {group: parameter-name prefix} whose update ratios are logged by default.
    `term_weights`: {term: (role, key under model.params of the weight)}, for scripts/ablate.py.
    """

    default_groups: dict[str, str] = {}
    term_weights: dict[str, tuple[str, str]] = {}

    def groups(self, engine) -> dict[str, str]:
        return dict(self.default_groups)

    def __call__(self, engine, batch: dict, want_images: bool = False) -> ProbeResult:
        """`measure` from the RNG state found on entry, which is left as it was (training draws the same)."""
        with preserved_rng():
            return self.measure(engine, batch, want_images)

    def measure(self, engine, batch: dict, want_images: bool) -> ProbeResult:
        raise NotImplementedError(f"{type(self).__name__} must implement measure")


__all__ = ["DEFAULT_SIGMA_BINS", "Probe", "ProbeResult", "RoleGrads", "TermGrad", "bin_name", "grad_metrics",
           "per_bin", "role_grads", "row_mse", "shuffled_cond", "term_grad"]
