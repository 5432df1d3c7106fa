"""What `main.py -r` needs from a run directory: the newest checkpoint that can be read, the run's
saved command-line settings, and which overrides a resume cannot apply.

    <run>/checkpoints/*.ckpt          last.ckpt, periodic and crash-step=N.ckpt files (candidates)
    <run>/configs/<time>-cli.yaml     command-line settings that are not config keys (seed, ...)
"""
from __future__ import annotations

import glob
import os
from dataclasses import dataclass

from sgm.io.checkpoint import CheckpointError, read_checkpoint

CLI_SUFFIX = "-cli.yaml"


@dataclass
class ResumePoint:
    path: str  # the checkpoint to resume from
    global_step: int
    skipped: list[str]  # "<file>: <why>" for newer-looking files that could not be read


def checkpoint_step(path: str) -> int:
    """The global step stored in a Lightning checkpoint (tensors are mapped, not read)."""
    payload = read_checkpoint(path, mmap=True)
    if not isinstance(payload, dict) or "global_step" not in payload:
        raise CheckpointError(f"{path}: not a Lightning training checkpoint (no global_step)")
    return int(payload["global_step"])


def newest_loadable_checkpoint(ckptdir: str) -> ResumePoint:
    """The readable checkpoint with the highest global step in `ckptdir` (ties: the newest file).

    Files that cannot be read (truncated, garbage, pickled objects) are passed over and listed.
    """
    candidates = sorted(glob.glob(os.path.join(glob.escape(ckptdir), "*.ckpt")), key=os.path.getmtime)
    if not candidates:
        raise FileNotFoundError(f"cannot resume: no checkpoints (*.ckpt) in {ckptdir}")
    readable, skipped = [], []
    for path in candidates:
        try:
            readable.append((checkpoint_step(path), os.path.getmtime(path), path))
        except CheckpointError as error:
            skipped.append(f"{os.path.basename(path)}: {error}")
    if not readable:
        raise CheckpointError(f"cannot resume: no checkpoint in {ckptdir} can be read ({'; '.join(skipped)})")
    step, _, path = max(readable)
    return ResumePoint(path, step, skipped)


def saved_configs(cfgdir: str) -> list[str]:
    """The run's saved model/data and lightning configs, oldest first (later restarts win)."""
    return sorted(p for p in glob.glob(os.path.join(glob.escape(cfgdir), "*.yaml")) if not p.endswith(CLI_SUFFIX))


def saved_cli_settings(cfgdir: str) -> dict:
    """The command-line settings saved by earlier starts of the run, merged oldest to newest."""
    from omegaconf import OmegaConf

    settings: dict = {}
    for path in sorted(glob.glob(os.path.join(glob.escape(cfgdir), f"*{CLI_SUFFIX}"))):
        settings.update(OmegaConf.to_container(OmegaConf.load(path)))
    return settings


# Overrides a resume cannot apply: Lightning restores each optimiser's param groups (learning rate,
# betas, weight decay) and each LR scheduler's base learning rates from the checkpoint.
OPTIMISER_KEY_PARTS = ("learning_rate", "optimizer_config")


def overrides_not_applied_on_resume(dotlist: list[str]) -> list[str]:
    return [item for item in dotlist
            if any(part in item.split("=", 1)[0] for part in OPTIMISER_KEY_PARTS)]
