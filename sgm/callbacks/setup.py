"""Run-directory set-up: folders, the resolved config, and a crash checkpoint that never
overwrites a good one."""
from __future__ import annotations

import os

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities import rank_zero_only

from sgm.io.checkpoint import remove_partial_files
from sgm.io.resume import CLI_SUFFIX


def run_dir(trainer: pl.Trainer) -> str:
    """The run directory: main.py gives it to the Trainer as `default_root_dir` (logs, images, eval)."""
    return trainer.default_root_dir


class SetupCallback(pl.Callback):
    def __init__(
        self,
        resume: bool,  # True when continuing an existing run directory
        now: str,  # timestamp used in saved config names
        logdir: str,  # the run directory
        ckptdir: str,  # <logdir>/checkpoints
        cfgdir: str,  # <logdir>/configs
        config: DictConfig,  # model + data (+ anything else) after merging
        lightning_config: DictConfig,  # the `lightning` section after merging
        debug: bool = False,  # no crash checkpoint in debug runs
        cli_settings: dict | None = None,  # main.py's settings that are not config keys (seed, ...)
    ):
        super().__init__()
        self.resume = resume
        self.now = now
        self.logdir, self.ckptdir, self.cfgdir = logdir, ckptdir, cfgdir
        self.config = config
        self.lightning_config = lightning_config
        self.debug = debug
        self.cli_settings = cli_settings

    @rank_zero_only
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for folder in (self.logdir, self.ckptdir, self.cfgdir):
            os.makedirs(folder, exist_ok=True)
        for path in remove_partial_files(self.ckptdir):
            print(f"removed an unfinished checkpoint write: {path}")
        OmegaConf.save(self.config, os.path.join(self.cfgdir, f"{self.now}-project.yaml"), resolve=True)
        OmegaConf.save(OmegaConf.create({"lightning": self.lightning_config}),
                       os.path.join(self.cfgdir, f"{self.now}-lightning.yaml"), resolve=True)
        if self.cli_settings is not None:
            OmegaConf.save(OmegaConf.create(self.cli_settings), os.path.join(self.cfgdir, f"{self.now}{CLI_SUFFIX}"))

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        """Metrics reach disk with every checkpoint (CSVLogger buffers rows between flushes)."""
        for logger in trainer.loggers:
            logger.save()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        """Keep the state of a failed run in its own file; last.ckpt stays the last good one.

        Every rank calls `trainer.save_checkpoint`, as Lightning's OnExceptionCheckpoint does: it is a
        collective (FSDP gathers the shards, every strategy ends it with a barrier), so a rank-0-only call
        would wait forever or write a partial state; the strategy decides which rank writes, through the
        trainer's checkpoint I/O (AtomicCheckpointIO: atomic, never with NaN/inf weights). The exception
        must reach every rank: SIGTERM does (Lightning's launcher forwards it), as do Ctrl-C in a terminal
        (the whole process group) and an error in the shared training step."""
        if self.debug or trainer.global_step == 0:  # the same answer on every rank
            return
        path = os.path.join(self.ckptdir, f"crash-step={trainer.global_step:08}.ckpt")
        try:
            trainer.save_checkpoint(path)
            if trainer.is_global_zero:
                print(f"saved the state at the failure to {path}")
        except Exception as error:  # never mask the original failure
            print(f"rank {trainer.global_rank}: could not save a crash checkpoint: {error}")
