"""The benches' per-iteration timer: a Lightning callback that main.py runs load by class path
(`lightning.callbacks.timer.target=iteration_timer.IterationTimer`, scripts/bench on PYTHONPATH)."""
from __future__ import annotations

import json
import time

import pytorch_lightning as pl


class IterationTimer(pl.Callback):
    """Writes every training batch's [wall seconds, CPU seconds of this process] (batch start to batch end,
    all hooks included) to `path` as JSON at the end, on rank 0. CPU time counts this process's own work
    only, so it holds on a machine other jobs share."""

    def __init__(self, path: str):
        super().__init__()
        self.path, self.seconds, self.start = path, [], (0.0, 0.0)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.start = (time.perf_counter(), time.process_time())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.seconds.append([time.perf_counter() - self.start[0], time.process_time() - self.start[1]])

    def on_train_end(self, trainer, pl_module):
        if trainer.is_global_zero:
            with open(self.path, "w") as f:
                json.dump(self.seconds, f)


def read_seconds(path: str) -> list[list[float]]:
    """An IterationTimer file -> [[wall s, CPU s], ...] per iteration."""
    with open(path) as f:
        return json.load(f)
