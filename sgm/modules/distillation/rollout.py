"""The few-step generator's schedule and its training rollout (backward simulation, DMD2 sec. 4.5).

Schedule. The generator runs K fixed noise levels sigma_0 > ... > sigma_{K-1} (K = 1, 2, 4). One
step is `x0_hat = G(x_i; sigma_i)`, then `x_{i+1} = x0_hat + sigma_{i+1} * eps_i` with fresh noise
eps_i; the last step returns x0_hat. The start is pure noise scaled like every sgm sampler:
`x_0 = sqrt(1 + sigma_0^2) * eps` (`BaseDiffusionSampler.prepare_sampling_loop`), in training and
in `FewStepSampler` alike.

Default sigmas (`few_step_sigmas`): the teacher's N-point discretization (N = 1000 by default),
at the K evenly spaced indices i * N / K, i = 0..K-1 (rounded). Index 0 is sigma_max, so a 1-step
generator starts at sigma_max; 4 steps of a 1000-point schedule use indices 0, 250, 500, 750
(DMD2's timesteps 999, 749, 499, 249).

Backward simulation. Training picks an exit step k in 0..K-1, runs steps 0..k-1 without grad,
and takes the gradient only through step k: `x0 = G(x_k; sigma_k)`. k = 0 is the pure-noise start.
k is drawn from a torch.Generator seeded by (seed, global step, stream), never from the global
RNG, so every DDP rank draws the same k and a resumed run draws what the original run drew.
"""
from __future__ import annotations

from typing import Callable

import torch

from sgm.modules.diffusionmodules.discretizer import Discretization
from sgm.modules.diffusionmodules.sampling_utils import initial_noise
from sgm.util import append_dims, instantiate_from_config

GeneratorFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x, sigma (N,)) -> x0_hat

STREAM_GENERATOR = 0  # exit-step streams: the generator loss and the critic loss draw separately
STREAM_CRITIC = 1
STREAM_GENERATOR_CHUNK = 2  # chunk-index streams of the chained rollout (chain.py), one per loss
STREAM_CRITIC_CHUNK = 3


def few_step_indices(num_steps: int, num_idx: int) -> list[int]:
    """Indices round(i * N / K), i = 0..K-1, into an N-point descending schedule."""
    if not 1 <= num_steps <= num_idx:
        raise ValueError(f"need 1 <= num_steps <= num_idx, got num_steps={num_steps}, num_idx={num_idx}")
    return [int(round(i * num_idx / num_steps)) for i in range(num_steps)]


def few_step_sigmas(discretization: Discretization, num_steps: int, num_idx: int = 1000) -> torch.Tensor:
    """The K generator sigmas picked from the teacher's N-point schedule -> (K,) descending."""
    sigmas = discretization(num_idx, do_append_zero=False)  # (N,) descending
    return sigmas[few_step_indices(num_steps, num_idx)]


class FewStepDiscretization(Discretization):
    """`few_step_sigmas` as a discretization, for a sampler's `discretization_config`."""

    def __init__(
        self,
        discretization_config: dict,  # {target, params}: the teacher's schedule
        num_steps: int,  # K, generator steps (1, 2, 4)
        num_idx: int = 1000,  # N, points of the teacher's schedule
    ) -> None:
        self.num_steps = num_steps
        self.sigmas = few_step_sigmas(instantiate_from_config(discretization_config), num_steps, num_idx)

    def get_sigmas(self, n: int | None, device: str | torch.device = "cpu") -> torch.Tensor:
        if n is not None and int(n) != self.num_steps:
            raise ValueError(f"FewStepDiscretization has {self.num_steps} steps but {n} were requested; "
                             "leave num_steps unset or set it to the generator's step count")
        return self.sigmas.to(device)


def draw_synced_index(
    n: int,  # draw from 0..n-1
    global_step: int,  # the trainer's step counter
    seed: int = 0,  # run seed
    stream: int = STREAM_GENERATOR,  # which draw (STREAM_*: 0..7)
) -> int:
    """i ~ U{0..n-1} from a generator seeded by (seed, global_step, stream): the same on every rank and
    after a resume, whatever the global RNG holds."""
    if not 0 <= int(stream) < 8:
        raise ValueError(f"stream must be in 0..7, got {stream}")
    if n == 1:
        return 0
    generator = torch.Generator().manual_seed((int(seed) * 1_000_003 + int(global_step)) * 8 + int(stream))
    return int(torch.randint(n, (1,), generator=generator))


def draw_exit_step(
    num_steps: int,  # K
    global_step: int,  # the trainer's step counter
    seed: int = 0,  # run seed
    stream: int = STREAM_GENERATOR,  # which loss draws
) -> int:
    """Exit step k ~ U{0..K-1} (`draw_synced_index`)."""
    return draw_synced_index(num_steps, global_step, seed, stream)


def renoise(x0_hat: torch.Tensor, next_sigma: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """x_{i+1} = x0_hat + sigma_{i+1} * eps (fresh eps). next_sigma: (N,)."""
    return x0_hat + append_dims(next_sigma, x0_hat.ndim) * noise


def backward_simulation(
    generator: GeneratorFn,  # G(x, sigma) -> x0_hat
    sigmas: torch.Tensor,  # (K,) descending generator sigmas
    noise: torch.Tensor,  # (N, ...) unit Gaussian noise, the shape of the target latent
    exit_step: int,  # k in 0..K-1
) -> torch.Tensor:
    """Run steps 0..k-1 without grad (fresh noise after each), then G at step k with grad -> x0 (N, ...)."""
    if not 0 <= exit_step < len(sigmas):
        raise ValueError(f"exit step {exit_step} outside 0..{len(sigmas) - 1}")
    sigmas = sigmas.float().to(noise.device)
    s_in = noise.new_ones([noise.shape[0]], dtype=torch.float32)  # (N,)
    x = initial_noise(noise, sigmas[0])  # (N, ...)
    with torch.no_grad():
        for i in range(exit_step):
            x0_hat = generator(x, s_in * sigmas[i])  # (N, ...)
            x = renoise(x0_hat, s_in * sigmas[i + 1], torch.randn_like(x0_hat))
    return generator(x, s_in * sigmas[exit_step])  # (N, ...), grad flows here only


__all__ = [
    "FewStepDiscretization",
    "STREAM_CRITIC",
    "STREAM_CRITIC_CHUNK",
    "STREAM_GENERATOR",
    "STREAM_GENERATOR_CHUNK",
    "backward_simulation",
    "draw_exit_step",
    "draw_synced_index",
    "few_step_indices",
    "few_step_sigmas",
    "renoise",
]
