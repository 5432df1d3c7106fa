"""`FewStepSampler`: the distilled generator's own schedule at inference (the schedule of rollout.py).

    x = sqrt(1 + sigma_0^2) * eps
    for i in 0..K-1:  x0_hat = D(x; sigma_i);  x = x0_hat + sigma_{i+1} * fresh eps  (x0_hat at the end)

Plugs into any `sampler_config`; the sigmas come from its discretization, e.g.
`ExplicitDiscretization(sigmas=[80.0])` or `rollout.FewStepDiscretization` (derived from the
teacher's schedule). The guider defaults to none: DMD bakes the teacher's guidance into the student.
"""
from __future__ import annotations

import torch

from sgm.modules.diffusionmodules.sampling import BaseDiffusionSampler, DenoiserFn
from sgm.modules.distillation.rollout import renoise
from sgm.util import default


class FewStepSampler(BaseDiffusionSampler):
    def sampler_step(
        self,
        sigma: torch.Tensor,  # (N,) sigma_i
        next_sigma: torch.Tensor,  # (N,) sigma_{i+1} (0 at the last step)
        denoiser: DenoiserFn,
        x: torch.Tensor,  # (N, ...) x_i
        cond: dict,
        uc: dict | None = None,
        noise: torch.Tensor | None = None,  # fresh eps (drawn when None)
    ) -> torch.Tensor:
        """x_{i+1} = D(x_i; sigma_i) + sigma_{i+1} * eps; the x0 estimate itself at the last step."""
        x0_hat = self.denoise(x, denoiser, sigma, cond, default(uc, cond))  # (N, ...)
        if float(next_sigma.max()) == 0.0:
            return x0_hat
        return renoise(x0_hat, next_sigma, default(noise, lambda: torch.randn_like(x0_hat)))

    def generator_sigmas(self, device: str | torch.device = "cpu") -> torch.Tensor:
        """The K nonzero sigmas of the schedule -> (K,) descending (what training rolls out)."""
        return self.discretization(self.num_steps, do_append_zero=False, device=device)


__all__ = ["FewStepSampler"]
