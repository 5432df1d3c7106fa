"""Per-rank, per-step seeding of every training step (sgm.rng.seed_step), in fresh and resumed runs alike."""
from __future__ import annotations

from typing import Any

import pytorch_lightning as pl

from sgm.rng import seed_step


class StepSeed(pl.Callback):
    def __init__(self, seed: int):  # main.py -s
        super().__init__()
        self.seed = seed

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        seed_step(self.seed, trainer.global_rank, trainer.global_step)
