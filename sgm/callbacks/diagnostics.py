"""`LossDiagnostics`: gradient-level diagnostics of the losses, every `every_n_steps` steps.

Configured like any callback (see configs/diagnostics/loss_diagnostics.yaml):

    lightning:
      callbacks:
        loss_diagnostics:
          target: sgm.callbacks.diagnostics.LossDiagnostics
          params: {every_n_steps: 50, groups: {generator: "model.", critic: "fake_score."}}

On a sampled step, before the training step: the engine's probe (sgm/diagnostics/registry.py) runs
the engine's public loss methods from the step's own RNG state and measures per-loss gradient norms, per-sigma-bin losses,
the conditioning gain, (DMD) the distribution-matching statistics and (rectified flow) the velocity
alignment and Euler endpoint errors (sgm/diagnostics/flow.py); the chosen parameter groups are
copied. After the optimiser step, the update ratios |delta theta| / |theta| are added and the whole
flat dict goes to every logger with `logger.log_metrics(metrics, step)`. Other steps cost one
modulo: no work, no RNG draw, no graph kept. Every `image_every_n_steps` (DMD) the generator sample,
pred_real, pred_fake and their difference are saved side by side in `<run>/images/diagnostics/`.
"""
from __future__ import annotations

import os
import time
from typing import Any, Sequence

import pytorch_lightning as pl
import torch

from sgm.callbacks.setup import run_dir
from sgm.diagnostics.registry import make_probe


class LossDiagnostics(pl.Callback):
    def __init__(
        self,
        every_n_steps: int = 50,  # sample global steps 0, n, 2n, ...
        groups: dict | None = None,  # {name: parameter-name prefix}; default per engine type
        image_every_n_steps: int | None = None,  # DMD image grids (a multiple of every_n_steps); None: off
        max_images: int = 8,  # rows (clips for video) per image kind
        video_format: str = "gif",  # file format of video grids
        # probe options (None: the probe's default; each probe takes those it declares)
        sigma_bins: Sequence[float] | None = None,  # sigma bin edges (diffusion, flow, DMD)
        teacher_steps: int | None = None,  # DMD: Euler steps of the teacher's reference samples
        teacher_samples: int | None = None,  # DMD: rows of the teacher's reference
        endpoint_steps: Sequence[int] | None = None,  # rectified flow: K of flow/endpt_rmse@K
        endpoint_ref_steps: int | None = None,  # rectified flow: Euler steps of the reference endpoint
        endpoint_rows: int | None = None,  # rectified flow: rows (whole clips) integrated to their endpoint
    ):
        super().__init__()
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self.groups = dict(groups) if groups is not None else None
        self.probe_options = {"sigma_bins": sigma_bins, "teacher_steps": teacher_steps,
                              "teacher_samples": teacher_samples, "endpoint_steps": endpoint_steps,
                              "endpoint_ref_steps": endpoint_ref_steps, "endpoint_rows": endpoint_rows}
        self.image_every_n_steps = image_every_n_steps
        self.max_images = max_images
        self.video_format = video_format
        self.probe = None
        self._pending: dict | None = None  # {step, metrics, snapshot} between batch start and end
        self.last_metrics: dict[str, float] = {}  # the latest dict sent (for tests and scripts)
        self.saved: list[str] = []  # image files written

    def is_sampled(self, step: int) -> bool:
        return step % self.every_n_steps == 0

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.probe = make_probe(pl_module, **self.probe_options)
        if self.groups is None:
            self.groups = self.probe.groups(pl_module) if self.probe is not None else {}

    # ------------------------------------------------------------------ hooks
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        step = trainer.global_step
        if not self.is_sampled(step):
            return
        start = time.perf_counter()
        metrics: dict[str, float] = {}
        images, num_frames = {}, 1
        if self.probe is not None:
            result = self.probe(pl_module, batch, want_images=self.wants_images(step))  # leaves the RNG as it was
            metrics, images, num_frames = result.metrics, result.images, result.num_frames
        self._pending = {"step": step, "metrics": metrics, "snapshot": self.snapshot(pl_module),
                         "seconds": time.perf_counter() - start}
        if images:
            self.save_images(trainer, pl_module, images, num_frames, step)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._pending is None:
            return
        pending, self._pending = self._pending, None
        metrics = pending["metrics"] | self.update_ratios(pl_module, pending["snapshot"])
        metrics["diag/seconds"] = pending["seconds"]
        self.last_metrics = metrics
        for logger in pl_module.loggers:
            logger.log_metrics(metrics, step=pending["step"])

    # ------------------------------------------------------------------ update ratios
    def group_parameters(self, pl_module: pl.LightningModule) -> dict[str, list[tuple[str, torch.Tensor]]]:
        named = list(pl_module.named_parameters())  # frozen ones too: a frozen group shows a ratio of 0
        return {group: [(n, p) for n, p in named if n.startswith(prefix)] for group, prefix in self.groups.items()}

    @torch.no_grad()
    def snapshot(self, pl_module: pl.LightningModule) -> dict[str, list[torch.Tensor]]:
        return {group: [p.detach().clone() for _, p in params]
                for group, params in self.group_parameters(pl_module).items()}

    @torch.no_grad()
    def update_ratios(self, pl_module: pl.LightningModule, snapshot: dict) -> dict[str, float]:
        out = {}
        for group, params in self.group_parameters(pl_module).items():
            before = snapshot.get(group, [])
            if not params or len(before) != len(params):
                continue
            delta = torch.stack([(p.float() - b.float()).pow(2).sum() for (_, p), b in zip(params, before)]).sum()
            norm = torch.stack([b.float().pow(2).sum() for b in before]).sum()
            out[f"step/{group}_update_ratio"] = float(delta.sqrt() / norm.sqrt().clamp(min=1e-12))
        return out

    # ------------------------------------------------------------------ images
    def wants_images(self, step: int) -> bool:
        return self.image_every_n_steps is not None and step % self.image_every_n_steps == 0

    @torch.no_grad()
    def save_images(self, trainer: pl.Trainer, pl_module: pl.LightningModule, images: dict, num_frames: int,
                    step: int) -> None:
        """Rows: generator sample, pred_real, pred_fake, pred_real - pred_fake (rescaled), decoded."""
        from sgm.io.media import save_image_grid, save_video_grid

        rows = self.max_images * num_frames
        decoded = []
        for key in ("generator", "pred_real", "pred_fake", "real_minus_fake"):
            z = images[key][:rows]
            if key == "real_minus_fake":  # decoded difference, scaled to fill [-1, 1]
                x = pl_module.decode_first_stage(images["pred_real"][:rows], num_video_frames=num_frames if num_frames > 1 else None) \
                    - pl_module.decode_first_stage(images["pred_fake"][:rows], num_video_frames=num_frames if num_frames > 1 else None)
                x = x / x.abs().max().clamp(min=1e-8)
            else:
                x = pl_module.decode_first_stage(z, num_video_frames=num_frames if num_frames > 1 else None)
            decoded.append(x.float().clamp(-1, 1).cpu())
        root = os.path.join(run_dir(trainer), "images", "diagnostics")
        os.makedirs(root, exist_ok=True)
        stem = os.path.join(root, f"dmd_gs-{step:06}")
        if num_frames > 1:  # clips side by side per kind, kinds one after another
            frames = torch.cat(decoded)  # ((4 b t), C, H, W)
            path = save_video_grid(frames, num_frames, f"{stem}.{self.video_format}")
        else:
            path = save_image_grid(torch.cat(decoded), f"{stem}.png", n_rows=len(decoded))
        self.saved.append(path)


__all__ = ["LossDiagnostics"]
