"""Exponential moving average of a module's trainable parameters (upstream `LitEma` layout).

State-dict layout matches upstream checkpoints: buffers `decay`, `num_updates` and one shadow
buffer per trainable parameter, named after the parameter with the dots removed.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Iterator

import torch
from torch import nn


class LitEma(nn.Module):
    def __init__(
        self,
        model: nn.Module,  # module whose trainable parameters are averaged
        decay: float = 0.9999,  # target EMA decay
        use_num_upates: bool = True,  # warm-up: decay_eff = min(decay, (1+n)/(10+n)) (upstream spelling)
    ):
        super().__init__()
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        self.m_name2s_name: dict[str, str] = {}
        self.register_buffer("decay", torch.tensor(decay, dtype=torch.float32))
        self.register_buffer(
            "num_updates", torch.tensor(0 if use_num_upates else -1, dtype=torch.int)
        )
        for name, param in model.named_parameters():
            if param.requires_grad:
                shadow_name = name.replace(".", "")
                self.m_name2s_name[name] = shadow_name
                self.register_buffer(shadow_name, param.detach().clone().float())
        self.collected_params: list[torch.Tensor] = []

    def effective_decay(self) -> float:
        decay = float(self.decay)
        if int(self.num_updates) >= 0:
            n = int(self.num_updates)
            decay = min(decay, (1 + n) / (10 + n))
        return decay

    def forward(self, model: nn.Module) -> None:
        """One EMA update from `model`'s parameters."""
        self.update(model.named_parameters())

    @torch.no_grad()
    def update(self, named_parameters: Iterable[tuple[str, torch.Tensor]]) -> None:
        """One EMA update, shadow -= (1 - decay) * (shadow - param), from (name, parameter) pairs named as the
        averaged module names them; a shadow left without its parameter is an error, never a silent skip."""
        if int(self.num_updates) >= 0:
            self.num_updates += 1
        one_minus_decay = 1.0 - self.effective_decay()
        shadows = dict(self.named_buffers())
        updated = set()
        for name, param in named_parameters:
            if name not in self.m_name2s_name:
                continue
            shadow = shadows[self.m_name2s_name[name]]
            shadow.sub_(one_minus_decay * (shadow - param.detach().to(shadow.dtype)))
            updated.add(name)
        missing = sorted(set(self.m_name2s_name) - updated)
        if missing:
            raise RuntimeError(f"EMA update: {len(missing)} averaged parameters not found: {missing[:3]}")

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        shadows = dict(self.named_buffers())
        for name, param in model.named_parameters():
            if name in self.m_name2s_name:
                param.copy_(shadows[self.m_name2s_name[name]])

    def store(self, parameters: Iterator[nn.Parameter]) -> None:
        self.collected_params = [p.detach().clone() for p in parameters]

    @torch.no_grad()
    def restore(self, parameters: Iterator[nn.Parameter]) -> None:
        for saved, param in zip(self.collected_params, parameters):
            param.copy_(saved)
        self.collected_params = []

    @contextmanager
    def average_parameters(self, model: nn.Module):
        """Swap EMA weights into `model` for the duration of the block; live weights come back after."""
        self.store(model.parameters())
        self.copy_to(model)
        try:
            yield model
        finally:
            self.restore(model.parameters())
