"""Training noise levels: `sampler(n_samples) -> (n_samples,)` sigmas, one per row.

All samplers accept `rand` (pre-drawn randomness, upstream's hook), a torch `generator` and a
`device` for the result (cpu by default).
"""
from __future__ import annotations

import torch

from sgm.util import instantiate_from_config

Device = str | torch.device | None


class EDMSampling:
    """Karras et al. 2022, Table 1 "EDM" training distribution: ln sigma ~ N(p_mean, p_std^2)."""

    def __init__(
        self,
        p_mean: float = -1.2,  # mean of ln sigma
        p_std: float = 1.2,  # standard deviation of ln sigma
    ) -> None:
        self.p_mean = p_mean
        self.p_std = p_std

    def __call__(
        self,
        n_samples: int,
        rand: torch.Tensor | None = None,  # (n_samples,) standard normal draws to use
        generator: torch.Generator | None = None,
        device: Device = None,
    ) -> torch.Tensor:
        if rand is None:
            rand = torch.randn((n_samples,), generator=generator, device=_generator_device(generator))
        log_sigma = self.p_mean + self.p_std * rand  # (n_samples,)
        return _to(log_sigma.exp(), device)


class DiscreteSampling:
    """Uniform over a table of `num_idx` sigmas (e.g. the 1000 DDPM noise levels)."""

    def __init__(
        self,
        discretization_config: dict,  # {target, params} of the schedule the table comes from
        num_idx: int,  # table size
        do_append_zero: bool = False,  # include sigma = 0 in the table
        flip: bool = True,  # ascending table: index 0 is the smallest sigma
    ) -> None:
        discretization = instantiate_from_config(discretization_config)
        self.num_idx = num_idx
        self.sigmas = discretization(num_idx, do_append_zero=do_append_zero, flip=flip)  # (num_idx,)

    def idx_to_sigma(self, idx: torch.Tensor) -> torch.Tensor:
        return self.sigmas[idx.to(self.sigmas.device)]

    def __call__(
        self,
        n_samples: int,
        rand: torch.Tensor | None = None,  # (n_samples,) integer indices to use
        generator: torch.Generator | None = None,
        device: Device = None,
    ) -> torch.Tensor:
        if rand is None:
            device_ = _generator_device(generator)
            rand = torch.randint(0, self.num_idx, (n_samples,), generator=generator, device=device_)
        return _to(self.idx_to_sigma(rand), device)


class RectifiedFlowSampling:
    """Base of the rectified-flow samplers: draw a time t per row, return sigma = t / (1 - t).

    With `RectifiedFlowScaling` the denoiser sees x = x0 + sigma * eps as x_t = (1 - t) x0 + t eps,
    so a distribution over t is a distribution over sigma. t is clamped to [t_min, t_max]: t = 1 is
    sigma = inf, and t = 0 makes the velocity weighting 1 / t^2 infinite.
    """

    def __init__(
        self,
        t_min: float = 1.0e-4,  # smallest t (sigma ~ t_min)
        t_max: float = 1.0 - 1.0e-4,  # largest t (sigma = t_max / (1 - t_max), about 1e4)
    ) -> None:
        if not 0.0 < t_min < t_max < 1.0:
            raise ValueError(f"{type(self).__name__} needs 0 < t_min < t_max < 1, got t_min={t_min}, t_max={t_max}")
        self.t_min = t_min
        self.t_max = t_max

    def sample_t(self, n_samples: int, rand: torch.Tensor | None, generator: torch.Generator | None) -> torch.Tensor:
        """(n_samples,) times in [0, 1], before clamping."""
        raise NotImplementedError

    def __call__(
        self,
        n_samples: int,
        rand: torch.Tensor | None = None,  # (n_samples,) pre-drawn randomness (see sample_t)
        generator: torch.Generator | None = None,
        device: Device = None,
    ) -> torch.Tensor:
        t = self.sample_t(n_samples, rand, generator).double().clamp(self.t_min, self.t_max)  # (n_samples,)
        return _to((t / (1.0 - t)).float(), device)  # sigma = t / (1 - t), computed in float64


class UniformTSampling(RectifiedFlowSampling):
    """t ~ U(0, 1): the original rectified flow (Liu et al. 2022). `rand`: uniform draws in [0, 1)."""

    def sample_t(self, n_samples: int, rand: torch.Tensor | None, generator: torch.Generator | None) -> torch.Tensor:
        if rand is None:
            rand = torch.rand((n_samples,), generator=generator, device=_generator_device(generator))
        return rand


class LogitNormalTSampling(RectifiedFlowSampling):
    """logit(t) ~ N(loc, scale^2) (Esser et al. 2024, SD3, eq. 19): more rows at middle t.
    `rand`: standard normal draws."""

    def __init__(
        self,
        loc: float = 0.0,  # mean of logit(t); > 0 favours noisier t
        scale: float = 1.0,  # standard deviation of logit(t)
        t_min: float = 1.0e-4,  # smallest t
        t_max: float = 1.0 - 1.0e-4,  # largest t
    ) -> None:
        super().__init__(t_min=t_min, t_max=t_max)
        self.loc = loc
        self.scale = scale

    def sample_t(self, n_samples: int, rand: torch.Tensor | None, generator: torch.Generator | None) -> torch.Tensor:
        if rand is None:
            rand = torch.randn((n_samples,), generator=generator, device=_generator_device(generator))
        return torch.sigmoid(self.loc + self.scale * rand)


class ZeroSampler:
    """A constant, almost-zero noise level 1e-5 per row (SV4D's "noise" on conditioning latents)."""

    def __call__(
        self,
        n_samples: int,
        rand: torch.Tensor | None = None,  # only its length is used
        generator: torch.Generator | None = None,  # unused; accepted for a uniform signature
        device: Device = None,
    ) -> torch.Tensor:
        n = n_samples if rand is None else rand.shape[0]
        return torch.full((n,), 1.0e-5, device=device)


def _generator_device(generator: torch.Generator | None) -> torch.device:
    return torch.device("cpu") if generator is None else generator.device


def _to(x: torch.Tensor, device: Device) -> torch.Tensor:
    return x if device is None else x.to(device)
