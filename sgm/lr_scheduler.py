"""Learning-rate multipliers for `torch.optim.lr_scheduler.LambdaLR` (upstream names and params).

Each scheduler is a plain object with `schedule(step) -> multiplier` (also `__call__`).
"""
from __future__ import annotations

import math
from typing import Sequence


class LambdaWarmUpCosineScheduler:
    """Linear warm-up to `lr_max`, then cosine decay to `lr_min` at `max_decay_steps` (absolute factors)."""

    def __init__(
        self,
        warm_up_steps: int,  # steps of linear warm-up
        lr_min: float,  # final multiplier
        lr_max: float,  # multiplier after warm-up
        lr_start: float,  # multiplier at step 0
        max_decay_steps: int,  # step at which the cosine reaches lr_min
        verbosity_interval: int = 0,  # unused: printing is left to the LR monitor
    ):
        self.warm_up_steps = warm_up_steps
        self.lr_min, self.lr_max, self.lr_start = lr_min, lr_max, lr_start
        self.max_decay_steps = max_decay_steps

    def schedule(self, n: int) -> float:
        if n < self.warm_up_steps:
            return (self.lr_max - self.lr_start) / self.warm_up_steps * n + self.lr_start
        t = (n - self.warm_up_steps) / max(1, self.max_decay_steps - self.warm_up_steps)
        t = min(t, 1.0)
        return self.lr_min + 0.5 * (self.lr_max - self.lr_min) * (1 + math.cos(t * math.pi))

    __call__ = schedule


class LambdaLinearScheduler:
    """Per cycle: linear warm-up f_start -> f_max, then linear decay toward f_min over the cycle."""

    def __init__(
        self,
        warm_up_steps: Sequence[int],  # warm-up length per cycle
        f_min: Sequence[float],  # multiplier reached at the end of each cycle
        f_max: Sequence[float],  # multiplier after warm-up
        f_start: Sequence[float],  # multiplier at the start of each cycle
        cycle_lengths: Sequence[int],  # steps per cycle
        verbosity_interval: int = 0,  # unused: printing is left to the LR monitor
    ):
        lengths = {len(warm_up_steps), len(f_min), len(f_max), len(f_start), len(cycle_lengths)}
        if len(lengths) != 1:
            raise ValueError("LambdaLinearScheduler: warm_up_steps, f_min, f_max, f_start and "
                             "cycle_lengths must all have one entry per cycle")
        self.warm_up_steps = list(warm_up_steps)
        self.f_min, self.f_max, self.f_start = list(f_min), list(f_max), list(f_start)
        self.cycle_lengths = list(cycle_lengths)
        self.cum_cycles = [0]
        for length in self.cycle_lengths:
            self.cum_cycles.append(self.cum_cycles[-1] + length)

    def find_in_interval(self, n: int) -> int:
        for cycle in range(len(self.cycle_lengths)):
            if n < self.cum_cycles[cycle + 1]:
                return cycle
        return len(self.cycle_lengths) - 1

    def schedule(self, n: int) -> float:
        cycle = self.find_in_interval(n)
        n = n - self.cum_cycles[cycle]
        warm = self.warm_up_steps[cycle]
        if n < warm:
            return (self.f_max[cycle] - self.f_start[cycle]) / warm * n + self.f_start[cycle]
        decay = (self.cycle_lengths[cycle] - n) / self.cycle_lengths[cycle]
        return self.f_min[cycle] + (self.f_max[cycle] - self.f_min[cycle]) * max(decay, 0.0)

    __call__ = schedule
