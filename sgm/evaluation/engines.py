"""Engines to evaluate, from what main.py and scripts/export_student.py leave on disk.

    load_engine("logs/<run dir>")            the run's saved configs + checkpoints/last.ckpt
    load_engine("logs/<run dir>", ckpt=...)  another checkpoint of that run
    load_engine("students/<export dir>")     inference.yaml + model.safetensors (export_student.py)
"""
from __future__ import annotations

import glob
import os

import torch


def run_config(path: str):
    """The resolved config main.py saved in a run directory (configs/*-project.yaml, merged in order); None when
    `path` holds none."""
    from sgm.config import load_configs

    configs = sorted(glob.glob(os.path.join(path, "configs", "*-project.yaml")))
    return load_configs(configs) if configs else None


def run_datamodule(path: str):
    """The data module a run directory trained on, built but not set up (no data read); None when `path` holds
    no run config or its config has no data block (an export directory)."""
    from sgm.util import instantiate_from_config

    config = run_config(path)
    return instantiate_from_config(config.data) if config is not None and "data" in config else None


def load_engine(path: str, ckpt: str | None = None, device: str | torch.device = "cpu"):
    """An engine in eval mode from a run directory or an export directory."""
    from sgm.config import load_configs
    from sgm.util import instantiate_from_config

    config = run_config(path)
    if config is not None:  # a main.py run
        config.model.params.ckpt_path = ckpt or os.path.join(path, "checkpoints", "last.ckpt")
    elif os.path.isfile(os.path.join(path, "inference.yaml")):  # an export
        config = load_configs([os.path.join(path, "inference.yaml")])
        config.model.params.ckpt_path = ckpt or os.path.join(path, "model.safetensors")
    else:
        raise FileNotFoundError(f"{path}: neither a main.py run (configs/*-project.yaml) nor an export "
                                "(inference.yaml + model.safetensors)")
    return instantiate_from_config(config.model).eval().to(device)


def sampler_steps(sampler) -> int:
    """The step count a sampler runs with by default (a few-step sampler: its schedule's length)."""
    if sampler.num_steps is not None:
        return int(sampler.num_steps)
    if hasattr(sampler, "generator_sigmas"):
        return len(sampler.generator_sigmas())
    raise ValueError(f"{type(sampler).__name__} has no default step count; pass num_steps")


def network_evaluations(engine, num_steps: int) -> int:
    """Network evaluations per sample of the engine's sampler (Heun: 2 per step but the last; CFG: x2)."""
    from sgm.modules.diffusionmodules.guiders import IdentityGuider
    from sgm.modules.diffusionmodules.sampling import HeunEDMSampler

    per_step = 2 * num_steps - 1 if isinstance(engine.sampler, HeunEDMSampler) else num_steps
    cfg = 1 if isinstance(engine.sampler.guider, IdentityGuider) else 2
    return per_step * cfg
