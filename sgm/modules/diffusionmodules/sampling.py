"""Samplers for x = x0 + sigma * eps, driven by an explicit list of sigmas.

A sampler is a plain object. `sampler(denoiser, x, cond, uc=None, num_steps=None)` turns unit
Gaussian noise `x` into a sample, calling `denoiser(x, sigma, cond) -> x0_hat` (sigma: one value
per row) through the guider. Every sampler exposes one `sampler_step(...)` per step whose state
(previous denoised outputs, derivative history) is passed in and returned, never kept on the
object, so other code can drive single steps.

`device` is accepted for config compatibility and ignored: the schedule is built on `x.device`.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import torch
from tqdm import tqdm

from sgm.modules.diffusionmodules.sampling_utils import (
    get_ancestral_step,
    initial_noise,
    linear_multistep_coeff,
    to_d,
    to_neg_log_sigma,
    to_sigma,
)
from sgm.util import append_dims, default, instantiate_from_config

DenoiserFn = Callable[[torch.Tensor, torch.Tensor, dict], torch.Tensor]  # (x, sigma, cond) -> x0_hat

DEFAULT_GUIDER = {"target": "sgm.modules.diffusionmodules.guiders.IdentityGuider"}


class BaseDiffusionSampler:
    def __init__(
        self,
        discretization_config: dict,  # {target, params}: the sigma schedule
        num_steps: int | None = None,  # default number of steps (overridable per call)
        guider_config: dict | None = None,  # {target, params}; None: IdentityGuider
        verbose: bool = False,  # tqdm progress bar
        device: str = "cuda",  # ignored (kept for upstream configs): x.device is used
    ) -> None:
        self.discretization = instantiate_from_config(discretization_config)
        self.guider = instantiate_from_config(default(guider_config, DEFAULT_GUIDER))
        self.num_steps = num_steps
        self.verbose = verbose

    def prepare_sampling_loop(
        self,
        x: torch.Tensor,  # (N, ...) unit Gaussian noise
        cond: dict,
        uc: dict | None = None,
        num_steps: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, dict, dict]:
        """-> (x * sqrt(1 + sigma_0^2), s_in (N,) ones, sigmas (num_steps + 1,), len(sigmas), cond, uc)."""
        sigmas = self.discretization(default(num_steps, self.num_steps), device=x.device)  # ends with 0
        uc = default(uc, cond)
        x = initial_noise(x, sigmas[0])  # upstream scales by sqrt(1 + sigma_max^2)
        s_in = x.new_ones([x.shape[0]])  # (N,)
        return x, s_in, sigmas, len(sigmas), cond, uc

    def denoise(
        self,
        x: torch.Tensor,  # (N, ...)
        denoiser: DenoiserFn,
        sigma: torch.Tensor,  # (N,)
        cond: dict,
        uc: dict,
    ) -> torch.Tensor:
        """Guided x0 estimate, (N, ...)."""
        denoised = denoiser(*self.guider.prepare_inputs(x, sigma, cond, uc))  # (2N, ...) or (N, ...)
        return self.guider(denoised, sigma)

    def get_sigma_gen(self, num_sigmas: int) -> Iterable[int]:
        """Step indices 0 .. num_sigmas - 2, with a progress bar when verbose."""
        steps = range(num_sigmas - 1)
        if self.verbose:
            return tqdm(steps, desc=f"Sampling with {type(self).__name__} for {len(steps)} steps")
        return steps

    def sampler_step(
        self,
        sigma: torch.Tensor,  # (N,) sigma_i
        next_sigma: torch.Tensor,  # (N,) sigma_{i+1}
        denoiser: DenoiserFn,
        x: torch.Tensor,  # (N, ...) x_i
        cond: dict,
        uc: dict | None = None,
    ) -> torch.Tensor:
        """One step sigma -> next_sigma; samplers whose step carries state override `__call__` too."""
        raise NotImplementedError(f"{type(self).__name__} must implement sampler_step")

    def __call__(
        self,
        denoiser: DenoiserFn,
        x: torch.Tensor,  # (N, ...) unit Gaussian noise
        cond: dict,
        uc: dict | None = None,
        num_steps: int | None = None,
    ) -> torch.Tensor:
        x, s_in, sigmas, num_sigmas, cond, uc = self.prepare_sampling_loop(x, cond, uc, num_steps)
        for i in self.get_sigma_gen(num_sigmas):
            x = self.sampler_step(s_in * sigmas[i], s_in * sigmas[i + 1], denoiser, x, cond, uc)
        return x

    @staticmethod
    def euler_step(x: torch.Tensor, d: torch.Tensor, dt: torch.Tensor) -> torch.Tensor:
        return x + dt * d


class EDMSampler(BaseDiffusionSampler):
    """Karras et al. 2022, Algorithm 2 (stochastic churn, then an Euler or Heun step)."""

    def __init__(
        self,
        discretization_config: dict,  # {target, params}: the sigma schedule
        *,
        s_churn: float = 0.0,  # total churn; gamma_i = min(s_churn / N, sqrt(2) - 1)
        s_tmin: float = 0.0,  # churn only for s_tmin <= sigma_i <= s_tmax
        s_tmax: float = float("inf"),
        s_noise: float = 1.0,  # std multiplier of the churn noise
        **base_kwargs: Any,  # num_steps, guider_config, verbose, device (BaseDiffusionSampler)
    ) -> None:
        super().__init__(discretization_config, **base_kwargs)
        self.s_churn = s_churn
        self.s_tmin = s_tmin
        self.s_tmax = s_tmax
        self.s_noise = s_noise

    def gamma(self, sigma: float, num_sigmas: int) -> float:
        if self.s_tmin <= sigma <= self.s_tmax:
            return min(self.s_churn / (num_sigmas - 1), 2**0.5 - 1)
        return 0.0

    def sampler_step(
        self,
        sigma: torch.Tensor,  # (N,) sigma_i
        next_sigma: torch.Tensor,  # (N,) sigma_{i+1}
        denoiser: DenoiserFn,
        x: torch.Tensor,  # (N, ...) x_i
        cond: dict,
        uc: dict | None = None,
        gamma: float = 0.0,
    ) -> torch.Tensor:
        uc = default(uc, cond)
        sigma_hat = sigma * (gamma + 1.0)  # Alg. 2 line 5
        if gamma > 0:
            eps = torch.randn_like(x) * self.s_noise
            x = x + eps * append_dims(sigma_hat**2 - sigma**2, x.ndim) ** 0.5  # line 6
        denoised = self.denoise(x, denoiser, sigma_hat, cond, uc)
        d_cur = to_d(x, sigma_hat, denoised)  # line 7
        dt = append_dims(next_sigma - sigma_hat, x.ndim)
        x_next = self.euler_step(x, d_cur, dt)  # line 8
        return self.possible_correction_step(x_next, x, d_cur, dt, next_sigma, denoiser, cond, uc)

    def possible_correction_step(
        self,
        x_next: torch.Tensor,
        x: torch.Tensor,
        d_cur: torch.Tensor,
        dt: torch.Tensor,
        next_sigma: torch.Tensor,
        denoiser: DenoiserFn,
        cond: dict,
        uc: dict,
    ) -> torch.Tensor:
        return x_next

    def __call__(
        self,
        denoiser: DenoiserFn,
        x: torch.Tensor,  # (N, ...) unit Gaussian noise
        cond: dict,
        uc: dict | None = None,
        num_steps: int | None = None,
    ) -> torch.Tensor:
        x, s_in, sigmas, num_sigmas, cond, uc = self.prepare_sampling_loop(x, cond, uc, num_steps)
        for i in self.get_sigma_gen(num_sigmas):
            gamma = self.gamma(float(sigmas[i]), num_sigmas)
            x = self.sampler_step(s_in * sigmas[i], s_in * sigmas[i + 1], denoiser, x, cond, uc, gamma)
        return x


class EulerEDMSampler(EDMSampler):
    """Algorithm 2 without the second-order correction (used by every video model)."""


class HeunEDMSampler(EDMSampler):
    """Algorithm 2 with the Heun correction (lines 9-11), skipped when the next sigma is 0."""

    def possible_correction_step(
        self,
        x_next: torch.Tensor,
        x: torch.Tensor,
        d_cur: torch.Tensor,
        dt: torch.Tensor,
        next_sigma: torch.Tensor,
        denoiser: DenoiserFn,
        cond: dict,
        uc: dict,
    ) -> torch.Tensor:
        if torch.sum(next_sigma) < 1e-14:
            return x_next  # every row reached sigma = 0
        denoised = self.denoise(x_next, denoiser, next_sigma, cond, uc)
        d_prime = to_d(x_next, next_sigma, denoised)  # line 10
        x_heun = x + 0.5 * (d_cur + d_prime) * dt  # line 11
        return torch.where(append_dims(next_sigma, x.ndim) > 0.0, x_heun, x_next)


class AncestralSampler(BaseDiffusionSampler):
    """Base of the ancestral samplers: a deterministic step to sigma_down, then fresh noise sigma_up."""

    def __init__(
        self,
        discretization_config: dict,  # {target, params}: the sigma schedule
        *,
        eta: float = 1.0,  # amount of fresh noise (0: deterministic)
        s_noise: float = 1.0,  # std multiplier of the fresh noise
        **base_kwargs: Any,  # num_steps, guider_config, verbose, device (BaseDiffusionSampler)
    ) -> None:
        super().__init__(discretization_config, **base_kwargs)
        self.eta = eta
        self.s_noise = s_noise

    def ancestral_euler_step(
        self, x: torch.Tensor, denoised: torch.Tensor, sigma: torch.Tensor, sigma_down: torch.Tensor
    ) -> torch.Tensor:
        d = to_d(x, sigma, denoised)
        return self.euler_step(x, d, append_dims(sigma_down - sigma, x.ndim))

    def ancestral_step(
        self, x: torch.Tensor, sigma: torch.Tensor, next_sigma: torch.Tensor, sigma_up: torch.Tensor
    ) -> torch.Tensor:
        noised = x + torch.randn_like(x) * self.s_noise * append_dims(sigma_up, x.ndim)
        return torch.where(append_dims(next_sigma, x.ndim) > 0.0, noised, x)


class EulerAncestralSampler(AncestralSampler):
    def sampler_step(
        self,
        sigma: torch.Tensor,  # (N,)
        next_sigma: torch.Tensor,  # (N,)
        denoiser: DenoiserFn,
        x: torch.Tensor,  # (N, ...)
        cond: dict,
        uc: dict | None = None,
    ) -> torch.Tensor:
        uc = default(uc, cond)
        sigma_down, sigma_up = get_ancestral_step(sigma, next_sigma, eta=self.eta)
        denoised = self.denoise(x, denoiser, sigma, cond, uc)
        x = self.ancestral_euler_step(x, denoised, sigma, sigma_down)
        return self.ancestral_step(x, sigma, next_sigma, sigma_up)


class DPMPP2SAncestralSampler(AncestralSampler):
    """DPM-Solver++(2S) (Lu et al. 2022) to sigma_down, then ancestral noise; t = -ln sigma."""

    def get_variables(
        self, sigma: torch.Tensor, sigma_down: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        t, t_next = to_neg_log_sigma(sigma), to_neg_log_sigma(sigma_down)
        h = t_next - t
        s = t + 0.5 * h  # midpoint
        return h, s, t, t_next

    def get_mult(
        self, h: torch.Tensor, s: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        mult1 = to_sigma(s) / to_sigma(t)
        mult2 = (-0.5 * h).expm1()
        mult3 = to_sigma(t_next) / to_sigma(t)
        mult4 = (-h).expm1()
        return mult1, mult2, mult3, mult4

    def sampler_step(
        self,
        sigma: torch.Tensor,  # (N,)
        next_sigma: torch.Tensor,  # (N,)
        denoiser: DenoiserFn,
        x: torch.Tensor,  # (N, ...)
        cond: dict,
        uc: dict | None = None,
    ) -> torch.Tensor:
        uc = default(uc, cond)
        sigma_down, sigma_up = get_ancestral_step(sigma, next_sigma, eta=self.eta)
        denoised = self.denoise(x, denoiser, sigma, cond, uc)
        x_euler = self.ancestral_euler_step(x, denoised, sigma, sigma_down)
        if torch.sum(sigma_down) < 1e-14:
            x_next = x_euler  # last step: straight to the x0 estimate
        else:
            h, s, t, t_next = self.get_variables(sigma, sigma_down)
            mult = [append_dims(m, x.ndim) for m in self.get_mult(h, s, t, t_next)]
            x_mid = mult[0] * x - mult[1] * denoised  # first-order step to the midpoint
            denoised_mid = self.denoise(x_mid, denoiser, to_sigma(s), cond, uc)
            x_dpmpp2s = mult[2] * x - mult[3] * denoised_mid
            x_next = torch.where(append_dims(sigma_down, x.ndim) > 0.0, x_dpmpp2s, x_euler)
        return self.ancestral_step(x_next, sigma, next_sigma, sigma_up)


class DPMPP2MSampler(BaseDiffusionSampler):
    """DPM-Solver++(2M) (Lu et al. 2022): a multistep method reusing the previous x0 estimate."""

    def get_variables(
        self, sigma: torch.Tensor, next_sigma: torch.Tensor, previous_sigma: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
        t, t_next = to_neg_log_sigma(sigma), to_neg_log_sigma(next_sigma)
        h = t_next - t
        if previous_sigma is None:
            return h, None, t, t_next
        h_last = t - to_neg_log_sigma(previous_sigma)
        return h, h_last / h, t, t_next  # r = h_last / h

    def get_mult(
        self, h: torch.Tensor, r: torch.Tensor | None, t: torch.Tensor, t_next: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        mult1 = to_sigma(t_next) / to_sigma(t)
        mult2 = (-h).expm1()
        if r is None:
            return mult1, mult2
        return mult1, mult2, 1 + 1 / (2 * r), 1 / (2 * r)

    def sampler_step(
        self,
        old_denoised: torch.Tensor | None,  # x0 estimate of the previous step (None at step 0)
        previous_sigma: torch.Tensor | None,  # (N,) sigma of the previous step (None at step 0)
        sigma: torch.Tensor,  # (N,)
        next_sigma: torch.Tensor,  # (N,)
        denoiser: DenoiserFn,
        x: torch.Tensor,  # (N, ...)
        cond: dict,
        uc: dict | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (x_next, denoised); pass `denoised` and `sigma` back in as the next step's history."""
        uc = default(uc, cond)
        denoised = self.denoise(x, denoiser, sigma, cond, uc)
        h, r, t, t_next = self.get_variables(sigma, next_sigma, previous_sigma)
        mult = [append_dims(m, x.ndim) for m in self.get_mult(h, r, t, t_next)]
        x_standard = mult[0] * x - mult[1] * denoised  # first order (DPM-Solver++(1) = DDIM)
        if old_denoised is None or r is None or torch.sum(next_sigma) < 1e-14:
            return x_standard, denoised
        denoised_d = mult[2] * denoised - mult[3] * old_denoised
        x_advanced = mult[0] * x - mult[1] * denoised_d
        return torch.where(append_dims(next_sigma, x.ndim) > 0.0, x_advanced, x_standard), denoised

    def __call__(
        self,
        denoiser: DenoiserFn,
        x: torch.Tensor,  # (N, ...) unit Gaussian noise
        cond: dict,
        uc: dict | None = None,
        num_steps: int | None = None,
    ) -> torch.Tensor:
        x, s_in, sigmas, num_sigmas, cond, uc = self.prepare_sampling_loop(x, cond, uc, num_steps)
        old_denoised = None
        for i in self.get_sigma_gen(num_sigmas):
            previous_sigma = None if i == 0 else s_in * sigmas[i - 1]
            x, old_denoised = self.sampler_step(
                old_denoised, previous_sigma, s_in * sigmas[i], s_in * sigmas[i + 1], denoiser, x, cond, uc
            )
        return x


class LinearMultistepSampler(BaseDiffusionSampler):
    """Linear multistep (Adams-Bashforth on the sigma grid) of up to `order` past derivatives."""

    def __init__(
        self,
        discretization_config: dict,  # {target, params}: the sigma schedule
        *,
        order: int = 4,  # number of derivatives combined per step
        **base_kwargs: Any,  # num_steps, guider_config, verbose, device (BaseDiffusionSampler)
    ) -> None:
        super().__init__(discretization_config, **base_kwargs)
        self.order = order

    def sampler_step(
        self,
        d_history: Sequence[torch.Tensor],  # previous derivatives, oldest first (may be empty)
        sigmas: torch.Tensor,  # (num_steps + 1,) the whole schedule
        i: int,  # step index: sigmas[i] -> sigmas[i + 1]
        denoiser: DenoiserFn,
        x: torch.Tensor,  # (N, ...)
        cond: dict,
        uc: dict | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """-> (x_next, d_history including this step's derivative, at most `order` long)."""
        uc = default(uc, cond)
        sigma = x.new_ones([x.shape[0]]) * sigmas[i]  # (N,)
        denoised = self.denoise(x, denoiser, sigma, cond, uc)
        d_history = [*d_history, to_d(x, sigma, denoised)][-self.order :]
        cur_order = min(i + 1, self.order, len(d_history))
        t = sigmas.detach().cpu().tolist()
        coeffs = [linear_multistep_coeff(cur_order, t, i, j) for j in range(cur_order)]
        x_next = x + sum(coeff * d for coeff, d in zip(coeffs, reversed(d_history)))  # newest d first
        return x_next, d_history

    def __call__(
        self,
        denoiser: DenoiserFn,
        x: torch.Tensor,  # (N, ...) unit Gaussian noise
        cond: dict,
        uc: dict | None = None,
        num_steps: int | None = None,
    ) -> torch.Tensor:
        x, _, sigmas, num_sigmas, cond, uc = self.prepare_sampling_loop(x, cond, uc, num_steps)
        d_history: list[torch.Tensor] = []
        for i in self.get_sigma_gen(num_sigmas):
            x, d_history = self.sampler_step(d_history, sigmas, i, denoiser, x, cond, uc)
        return x
