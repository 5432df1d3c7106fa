"""Classifier-free guidance (Ho & Salimans 2022).

A guider batches the unconditional and conditional passes: `prepare_inputs(x, sigma, c, uc)`
returns `([x; x], [sigma; sigma], [uc; c])` (uncond first), the denoiser runs once on the doubled
batch, and `guider(out, sigma)` blends the halves. All guiders use the standard convention

    D_guided = D_u + s * (D_c - D_u)        (s = 1: conditional only, s = 0: unconditional only)

The video guiders use a scale per frame: rows are upstream's flattened (B*T, ...) layout.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Iterable, Sequence

import torch

from sgm.util import append_dims, default, fold_frames, unfold_frames

CONCAT_KEYS = ("vector", "crossattn", "concat")  # conditioning that differs between c and uc


def _as_key_list(keys: Iterable[str] | str | None) -> list[str]:
    keys = default(keys, [])
    return [keys] if isinstance(keys, str) else list(keys)


class Guider(ABC):
    additional_cond_keys: list[str] = []

    @abstractmethod
    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Blend the doubled denoiser output (2N, ...) -> (N, ...)."""

    def prepare_inputs(
        self,
        x: torch.Tensor,  # (N, ...)
        s: torch.Tensor,  # (N,) sigma
        c: dict,  # conditional inputs
        uc: dict,  # unconditional inputs
    ) -> tuple[torch.Tensor, torch.Tensor, dict]:
        c_out = {}
        for key, value in c.items():
            if key in CONCAT_KEYS or key in self.additional_cond_keys:
                if key not in uc:
                    raise KeyError(f"guidance: key '{key}' is in the conditional inputs but not in uc")
                c_out[key] = torch.cat((uc[key], value), 0)  # [uncond; cond]
            else:
                self.check_shared(key, value, uc)
                c_out[key] = value
        return torch.cat([x, x]), torch.cat([s, s]), c_out  # (2N, ...), (2N,)

    def check_shared(self, key: str, value: object, uc: dict) -> None:
        """Hook for keys passed from c unchanged (not concatenated)."""


class IdentityGuider(Guider):
    """No guidance: one conditional pass."""

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return x

    def prepare_inputs(
        self, x: torch.Tensor, s: torch.Tensor, c: dict, uc: dict
    ) -> tuple[torch.Tensor, torch.Tensor, dict]:
        return x, s, dict(c)


class VanillaCFG(Guider):
    """D = D_u + scale * (D_c - D_u): one scalar scale for every row.

    Keys other than vector/crossattn/concat (and `additional_cond_keys`) must be equal in c and uc.
    """

    def __init__(
        self,
        scale: float,  # guidance scale s
        additional_cond_keys: Iterable[str] | str | None = None,  # more keys to batch as [uc; c]
    ) -> None:
        self.scale = scale
        self.additional_cond_keys = _as_key_list(additional_cond_keys)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        x_u, x_c = x.chunk(2)  # (N, ...) each
        return x_u + self.scale * (x_c - x_u)

    def check_shared(self, key: str, value: object, uc: dict) -> None:
        other = uc.get(key, value)
        same = torch.equal(value, other) if isinstance(value, torch.Tensor) else value == other
        if not same:
            raise ValueError(f"VanillaCFG: '{key}' differs between c and uc but is not batched for guidance")


class LinearPredictionGuider(Guider):
    """Per-frame scale s_t = linspace(min_scale, max_scale, T)[t] (SVD, SVD-XT, SV4D 2.0).

    `num_frames` may be left unset in a config (upstream YAMLs omit it; sampling scripts fill it
    in) but must be set before the guider is called.
    """

    def __init__(
        self,
        max_scale: float,  # scale of the last frame
        num_frames: int | None = None,  # T, frames per clip
        min_scale: float = 1.0,  # scale of the first frame
        additional_cond_keys: Iterable[str] | str | None = None,  # more keys to batch as [uc; c]
    ) -> None:
        self.max_scale = max_scale
        self.min_scale = min_scale
        self.num_frames = num_frames
        self.additional_cond_keys = _as_key_list(additional_cond_keys)

    def shape(self, T: int) -> torch.Tensor:
        """Per-frame profile in [0, 1], shape (T,); scale = min + (max - min) * profile."""
        return torch.linspace(0, 1, T)

    def frame_scales(self, num_frames: int | None = None) -> torch.Tensor:
        """The per-frame guidance scales, shape (T,), float32 on cpu."""
        T = self._num_frames(num_frames)
        return self.min_scale + (self.max_scale - self.min_scale) * self.shape(T)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        T = self._num_frames()
        x_u, x_c = x.chunk(2)  # (B*T, ...) each
        if x_u.shape[0] % T != 0:
            raise ValueError(
                f"{type(self).__name__}: {x_u.shape[0]} rows per half is not a multiple of num_frames={T}"
            )
        x_u, x_c = fold_frames(x_u, T), fold_frames(x_c, T)  # (B, T, ...)
        scale = append_dims(self.frame_scales(T)[None], x_u.ndim).to(x_u)  # (1, T, 1, ...)
        return unfold_frames(x_u + scale * (x_c - x_u))  # (B*T, ...)

    def _num_frames(self, num_frames: int | None = None) -> int:
        T = default(num_frames, self.num_frames)
        if T is None:
            raise ValueError(
                f"{type(self).__name__}.num_frames is not set: set guider_config.params.num_frames "
                "(frames per clip) in the sampler config"
            )
        return int(T)


def triangle_wave(v: torch.Tensor, period: float = 1.0) -> torch.Tensor:
    """tri(v) = 2 |v/p - floor(v/p + 0.5)|: 0 at multiples of p, 1 halfway between."""
    return 2 * (v / period - torch.floor(v / period + 0.5)).abs()


class TrianglePredictionGuider(LinearPredictionGuider):
    """Per-frame scale min + (max - min) * tri(linspace(0, 1, T)) (SV3D: low at both ends of the orbit).

    With several periods the triangle waves are fused by "mean", "multiply" or "max".
    """

    FUSINGS = ("mean", "multiply", "max")

    def __init__(
        self,
        max_scale: float,  # scale at the peak of the wave
        num_frames: int | None = None,  # T, frames per clip
        min_scale: float = 1.0,  # scale at the troughs
        period: float | Sequence[float] = 1.0,  # wave period(s) in units of the whole clip
        period_fusing: str = "max",  # how to fuse several periods
        additional_cond_keys: Iterable[str] | str | None = None,  # more keys to batch as [uc; c]
    ) -> None:
        super().__init__(max_scale, num_frames, min_scale, additional_cond_keys)
        if period_fusing not in self.FUSINGS:
            raise ValueError(f"period_fusing must be one of {self.FUSINGS}, got {period_fusing!r}")
        self.periods = [float(period)] if isinstance(period, (int, float)) else [float(p) for p in period]
        self.period_fusing = period_fusing

    def shape(self, T: int) -> torch.Tensor:
        waves = torch.stack([triangle_wave(torch.linspace(0, 1, T), p) for p in self.periods])  # (P, T)
        if self.period_fusing == "mean":
            return waves.mean(dim=0)
        if self.period_fusing == "multiply":
            return waves.prod(dim=0)
        return waves.max(dim=0).values


class TrapezoidPredictionGuider(LinearPredictionGuider):
    """Scales rise linearly min -> max over the first edge_perc of the frames, fall max -> min over
    the last edge_perc, and are 1.0 in between (upstream's middle value, kept as is)."""

    def __init__(
        self,
        max_scale: float,  # end of the rising ramp
        num_frames: int | None = None,  # T, frames per clip
        min_scale: float = 1.0,  # start of the rising ramp
        edge_perc: float = 0.1,  # fraction of T in each ramp
        additional_cond_keys: Iterable[str] | str | None = None,  # more keys to batch as [uc; c]
    ) -> None:
        super().__init__(max_scale, num_frames, min_scale, additional_cond_keys)
        self.edge_perc = edge_perc

    def frame_scales(self, num_frames: int | None = None) -> torch.Tensor:
        T = self._num_frames(num_frames)
        edge = int(T * self.edge_perc)
        rise = torch.linspace(self.min_scale, self.max_scale, edge)  # (edge,)
        middle = torch.ones(T - 2 * edge)  # (T - 2 edge,)
        return torch.cat([rise, middle, rise.flip(0)])  # (T,)


class SpatiotemporalPredictionGuider(LinearPredictionGuider):
    """SV4D: rows are a T' x V grid (time outer, view inner; T' = num_frames // V) with profile
    0.5 * linspace(0, 1, T')[t] + 0.5 * tri(linspace(0, 1, V))[v]."""

    def __init__(
        self,
        max_scale: float,  # scale where both terms peak
        num_frames: int | None = None,  # T' * V rows per clip
        num_views: int = 1,  # V, views per time step
        min_scale: float = 1.0,  # scale at the first frame, first/last view
        additional_cond_keys: Iterable[str] | str | None = None,  # more keys to batch as [uc; c]
    ) -> None:
        super().__init__(max_scale, num_frames, min_scale, additional_cond_keys)
        self.num_views = num_views

    def shape(self, T: int) -> torch.Tensor:
        V = self.num_views
        if T % V != 0:
            raise ValueError(f"SpatiotemporalPredictionGuider: num_frames={T} is not a multiple of num_views={V}")
        time = 0.5 * torch.linspace(0, 1, T // V)  # (T',)
        view = 0.5 * triangle_wave(torch.linspace(0, 1, V))  # (V,)
        return (time[:, None] + view[None, :]).reshape(T)  # (T', V) -> (T' V,)
