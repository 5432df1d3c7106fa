"""LoRA roles through peft: low-rank adapters W = W0 + (alpha / r) B A on chosen layers of a network,
everything else frozen.

DMDEngine takes `lora: {generator: LoRAOptions, critic: LoRAOptions}` (either may be absent). Adapters
are injected after the roles' weights are loaded (teacher file -> W0), so state dicts of LoRA runs hold
`<layer>.base_layer.weight` (W0, frozen) and `<layer>.lora_{A,B}.default.weight` (trained); a run
resumes from its own checkpoint with the same structure. `merge_lora` folds the adapters back into
plain weights under the original names (what scripts/export_student.py writes), from tensors alone.

peft is optional (`pip install -e ".[lora]"` or peft==0.21.2); it is imported only when a role asks for LoRA.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from sgm.util import ConfigError

ADAPTER = "default"  # peft's adapter name
DEFAULT_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]  # every attention projection (spatial and temporal)


@dataclass
class LoRAOptions:
    """One role's adapters."""

    rank: int = 16  # r
    alpha: float = 16.0  # scale alpha / r
    target_modules: list[str] | str = field(default_factory=lambda: list(DEFAULT_TARGETS))
    # module-name suffixes (peft: a name equal to or ending in ".<entry>"), or one regex matched in full
    dropout: float = 0.0

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


def _peft():
    try:
        import peft
    except ImportError as error:
        raise ConfigError("model.params.lora needs peft: pip install peft==0.21.2 (or pip install -e '.[lora]')"
                          ) from error
    return peft


def add_lora(network: nn.Module, options: LoRAOptions, role: str, seed: int) -> nn.Module:
    """Inject adapters into `network` in place; only the adapters stay trainable. -> network.

    A's random init is drawn from `seed` (the global RNG untouched), so two builds of a run start alike.
    """
    peft = _peft()
    if options.rank < 1:
        raise ConfigError(f"model.params.lora.{role}.rank must be >= 1, got {options.rank}")
    targets = options.target_modules if isinstance(options.target_modules, str) else list(options.target_modules)
    config = peft.LoraConfig(r=options.rank, lora_alpha=options.alpha, lora_dropout=options.dropout,
                             target_modules=targets, init_lora_weights=True)  # B = 0: starts as W0
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            peft.inject_adapter_in_model(config, network, adapter_name=ADAPTER)
    except ValueError as error:  # no module matched
        raise ConfigError(f"model.params.lora.{role}.target_modules={targets!r}: {error}") from None
    for name, param in network.named_parameters():
        param.requires_grad_(".lora_" in name)
    return network


class AdaptersOff(nn.Module):
    """A role evaluated with its network's adapters switched off: the frozen teacher W0 inside a network whose
    adapters are the critic (`lora.critic_on_teacher`), so teacher and critic share one U-Net."""

    def __init__(self, role: nn.Module) -> None:
        super().__init__()
        self.role = role

    def forward(self, *args, **kwargs):
        layers = [m for m in self.role.modules() if hasattr(m, "enable_adapters") and hasattr(m, "lora_A")]
        flags = [(p, p.requires_grad) for layer in layers for p in layer.lora_A.parameters()] + \
                [(p, p.requires_grad) for layer in layers for p in layer.lora_B.parameters()]
        for layer in layers:
            layer.enable_adapters(False)
        try:
            return self.role(*args, **kwargs)
        finally:
            for layer in layers:
                layer.enable_adapters(True)
            for p, flag in flags:  # peft's toggle also sets requires_grad; the optimiser toggling owns that
                p.requires_grad_(flag)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["role"], name)


def lora_parameter_count(network: nn.Module) -> int:
    return sum(p.numel() for name, p in network.named_parameters() if ".lora_" in name)


def merge_lora(state_dict: dict[str, torch.Tensor], scale: float) -> dict[str, torch.Tensor]:
    """Plain weights: W = W0 + scale * B A under `<layer>.weight`, adapters dropped, other keys unchanged.

    Works for Linear (A (r, in), B (out, r)) and Conv (A (r, in, k...), B (out, r, 1...)) layers alike.
    """
    out = {}
    for key, value in state_dict.items():
        if f".lora_A.{ADAPTER}." in key or f".lora_B.{ADAPTER}." in key:
            continue
        if ".base_layer." not in key:
            out[key] = value
            continue
        layer, leaf = key.split(".base_layer.")
        if leaf == "weight" and f"{layer}.lora_A.{ADAPTER}.weight" in state_dict:
            a = state_dict[f"{layer}.lora_A.{ADAPTER}.weight"].float()  # (r, in, k...)
            b = state_dict[f"{layer}.lora_B.{ADAPTER}.weight"].float()  # (out, r, 1...)
            delta = (b.flatten(1) @ a.flatten(1)).view(value.shape)  # (out, in, k...)
            value = (value.float() + scale * delta).to(value.dtype)
        out[f"{layer}.{leaf}"] = value
    return out


__all__ = ["AdaptersOff", "LoRAOptions", "add_lora", "lora_parameter_count", "merge_lora"]
