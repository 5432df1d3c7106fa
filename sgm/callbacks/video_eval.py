"""`MovingDigitsEvaluation`: score the trained image-to-video engine on held-out moving digits.

Configured like any callback (configs/dmd/moving_digits_dmd.yaml):

    lightning:
      callbacks:
        video_eval:
          target: sgm.callbacks.video_eval.MovingDigitsEvaluation
          params: {teacher: assets/moving_digits_teacher, clips: 64, teacher_steps: [1, 25]}

At the start of training the real held-out clips and the teacher (a run or export directory, sampled
with its own sampler at each of `teacher_steps`) are scored once; at the end the trained engine
(EMA weights, its own sampler) is scored on the same clips with the same noise seed. Rows go to
`<run>/eval/moving_digits_eval.{md,json}` and the console; sample GIFs (real, teacher, engine; the
same conditioning frames in the same places) to `<run>/eval/*.gif`. With `every_n_steps` the engine
is also scored during training and the figures are logged as `eval/<metric>` to every logger.
"""
from __future__ import annotations

import inspect
import os
from typing import Any

import pytorch_lightning as pl
import torch

from sgm.callbacks.setup import run_dir
from sgm.data.moving_digits import CLIP_OPTIONS
from sgm.evaluation import moving_digits as md
from sgm.rng import preserved_rng


# heldout_set's own defaults for the options a run's data decides (MovingDigitsDataModule.clip_options)
DEFAULT_CLIP_OPTIONS = {key: inspect.signature(md.heldout_set).parameters[key].default for key in CLIP_OPTIONS}


def clip_options(datamodule: Any, given: dict) -> dict:
    """The held-out clips' options: `given` (the callback's params), else the run's data's own (a datamodule
    with `clip_options()`, e.g. MovingDigitsDataModule), else DEFAULT_CLIP_OPTIONS. A model scored on clips
    faster or larger than its training data's looks worse than it is, so the data decides unless told."""
    data = datamodule.clip_options() if callable(getattr(datamodule, "clip_options", None)) else {}
    return {key: given.get(key, data.get(key, default)) for key, default in DEFAULT_CLIP_OPTIONS.items()}


class MovingDigitsEvaluation(pl.Callback):
    def __init__(
        self,
        teacher: str | None = None,  # run or export directory of the teacher; None: no teacher rows
        clips: int = 64,  # held-out clips scored per row
        teacher_steps: list[int] | None = None,  # teacher sampler steps, one row each (default [1, 25])
        steps: list[int] | None = None,  # the trained engine's sampler steps (default: its own)
        every_n_steps: int | None = None,  # also score the engine during training; None: at the end only
        num_frames: int | None = None,  # t of the held-out clips; None: the run's data's (else 8)
        size: int | None = None,  # canvas side; None: the run's data's (else 16)
        channels: int | None = None,  # None: the run's data's (else 3, SVD-architecture models)
        seed: int = 0,  # held-out clips and sampling noise
        gif_clips: int = 16,  # clips per GIF
        motion_code: str | None = None,  # motion_bucket_id code (sgm.data.moving_digits); None: the data's
        max_speed: int | None = None,  # |vx|, |vy| <= max_speed px/frame; None: the data's (else 2)
    ):
        super().__init__()
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1 or null, got {every_n_steps}")
        self.teacher = teacher
        self.clips, self.seed, self.gif_clips = clips, seed, gif_clips
        self.teacher_steps = list(teacher_steps) if teacher_steps is not None else [1, 25]
        self.steps = list(steps) if steps is not None else [None]
        self.every_n_steps = every_n_steps
        given = dict(num_frames=num_frames, size=size, channels=channels, motion_code=motion_code, max_speed=max_speed)
        self.given = {key: value for key, value in given.items() if value is not None}
        self.heldout: md.HeldoutSet | None = None
        self.reference_rows: list[dict] = []  # real clips and teacher rows, scored once
        self.rows: list[dict] = []  # the latest full table
        self.files: list[str] = []

    def out_dir(self, trainer: pl.Trainer) -> str:
        return os.path.join(run_dir(trainer), "eval")

    # ------------------------------------------------------------------ hooks
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        options = clip_options(getattr(trainer, "datamodule", None), self.given)
        with preserved_rng():
            self.heldout = md.heldout_set(self.clips, seed=self.seed, **options)
        if not trainer.is_global_zero:
            return
        out = self.out_dir(trainer)
        self.reference_rows = [md.reference_row(self.heldout)]
        self.files.append(md.save_clips_gif(self.heldout.clips, os.path.join(out, "real.gif"), max_clips=self.gif_clips))
        if self.teacher is None:
            return
        from sgm.evaluation.engines import load_engine

        teacher = load_engine(self.teacher, device=pl_module.device)
        for steps in self.teacher_steps:
            with preserved_rng():  # training draws as without this callback
                row, clips = md.evaluate_engine(teacher, self.heldout, f"teacher ({self.teacher})", steps, self.seed)
            self.reference_rows.append(row)
            gif = os.path.join(out, f"teacher_{steps}step.gif")
            self.files.append(md.save_clips_gif(clips, gif, max_clips=self.gif_clips))
        del teacher

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if self.every_n_steps is None or step % self.every_n_steps != 0 or not trainer.is_global_zero:
            return
        row, _ = self.evaluate(pl_module, self.steps[0])
        metrics = {f"eval/{key}": float(row[key]) for key, *_ in md.METRICS if row.get(key) is not None}
        for logger in pl_module.loggers:
            logger.log_metrics(metrics, step=step)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero or self.heldout is None:
            return
        out = self.out_dir(trainer)
        rows = list(self.reference_rows)
        for steps in self.steps:
            row, clips = self.evaluate(pl_module, steps, name=f"trained ({type(pl_module).__name__}, step {trainer.global_step})")
            rows.append(row)
            gif = os.path.join(out, f"trained_{row['steps']}step.gif")
            self.files.append(md.save_clips_gif(clips, gif, max_clips=self.gif_clips))
        self.rows = rows
        self.files += list(md.write_results(rows, out).values())
        print(f"\nMoving digits, {self.clips} held-out clips ({out}):\n" + md.markdown_table(rows), flush=True)

    # ------------------------------------------------------------------ helpers
    def evaluate(self, pl_module: pl.LightningModule, steps: int | None, name: str = "trained"
                 ) -> tuple[dict, torch.Tensor]:
        was_training = pl_module.training
        pl_module.eval()
        try:
            with preserved_rng():  # training draws as without this callback
                return md.evaluate_engine(pl_module, self.heldout, name, steps, self.seed)
        finally:
            pl_module.train(was_training)


__all__ = ["DEFAULT_CLIP_OPTIONS", "MovingDigitsEvaluation", "clip_options"]
