"""Sampling and scoring image-to-video engines on held-out moving digits (the video benchmark).

Every engine is conditioned on the same held-out clips (`sgm.metrics.moving_digits.heldout_clips`,
fixed seed): their first frames, classes and speeds. Generated clips are scored by
`sgm.metrics.moving_digits.evaluate_clips` (per-frame digit accuracy and Fréchet distance of our
digit classifier's features, identity consistency and motion across frames); the held-out clips
themselves are scored the same way as the reference row.

Used by the `MovingDigitsEvaluation` callback (the embedded default run) and by
`scripts/bench/distill_moving_digits.py`.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sgm.evaluation.engines import network_evaluations, sampler_steps

UC_KEYS = ["cond_frames", "cond_frames_without_noise"]  # zeroed for the unconditional branch (SVD sampling)
METRICS = [  # (key, column title, format, better)
    ("frame_accuracy", "frame acc.", "{:.3f}", "higher"),
    ("frame_fd", "frame FD", "{:.2f}", "lower"),
    ("identity_consistency", "identity", "{:.3f}", "higher"),
    ("speed_error", "speed err. px", "{:.2f}", "lower"),
    ("accel", "accel. px", "{:.2f}", "lower"),
    ("center_motion", "motion px/frame", "{:.2f}", "closer to real"),
]


@dataclass
class HeldoutSet:
    batch: dict  # the SVD conditioning batch of the clips (no targets)
    clips: torch.Tensor  # (b, t, C, H, W) the real held-out clips in [-1, 1]
    labels: torch.Tensor  # (b,) digit classes
    speeds: torch.Tensor  # (b,) conditioned speeds |vx| + |vy| in px/frame

    @property
    def num_frames(self) -> int:
        return self.clips.shape[1]


def heldout_set(n: int, num_frames: int = 8, size: int = 16, channels: int = 3, seed: int = 0,
                motion_code: str = "velocity") -> HeldoutSet:
    """`n` held-out clips and the batch that conditions an engine on their first frames."""
    from sgm.metrics.moving_digits import heldout_clips

    clips, labels, speeds, batch = heldout_clips(n, num_frames=num_frames, size=size, channels=channels, seed=seed,
                                                 motion_code=motion_code)
    batch = {k: v for k, v in batch.items() if k not in ("frames", "cls")}
    return HeldoutSet(batch, clips, labels, speeds)


def _clip_slice(batch: dict, start: int, stop: int, num_frames: int) -> dict:
    """Clips [start, stop) of an SVD batch: per-clip tensors by clip, per-frame tensors by frame."""
    clips = batch["cond_frames"].shape[0]
    out = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == clips:
            out[key] = value[start:stop]
        elif isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == clips * num_frames:
            out[key] = value[start * num_frames:stop * num_frames]
        else:
            out[key] = value
    return out


@torch.no_grad()
def sample_clips(
    engine,  # a DiffusionEngine (teacher, its own sampler) or a DMDEngine (student, few-step sampler)
    heldout: HeldoutSet,
    num_steps: int | None = None,  # sampler steps; None: the sampler's own
    seed: int = 0,  # noise seed (the same noise for every engine at equal shapes)
    chunk: int = 32,  # clips per sampling call
) -> tuple[torch.Tensor, float]:
    """-> clips (b, t, C, H, W) in [-1, 1] (EMA weights when the engine has them), seconds per clip."""
    t = heldout.num_frames
    shape = tuple(heldout.clips.shape[2:])  # the first stage is the identity on this task
    torch.manual_seed(seed)
    out, start = [], time.perf_counter()
    with engine.ema_scope("evaluation"):
        for first in range(0, heldout.clips.shape[0], chunk):
            last = min(first + chunk, heldout.clips.shape[0])
            batch = {k: v.to(engine.device) if isinstance(v, torch.Tensor) else v
                     for k, v in _clip_slice(heldout.batch, first, last, t).items()}
            c, uc = engine.conditioner.get_unconditional_conditioning(batch, force_uc_zero_embeddings=UC_KEYS)
            rows = (last - first) * t
            z = engine.sample(c, uc=uc, batch_size=rows, shape=shape, num_steps=num_steps, num_video_frames=t)
            x = engine.decode_first_stage(z, num_video_frames=t)
            out.append(x.float().clamp(-1, 1).cpu().view(last - first, t, *x.shape[1:]))
    seconds = (time.perf_counter() - start) / heldout.clips.shape[0]
    return torch.cat(out), seconds


def score(clips: torch.Tensor, heldout: HeldoutSet) -> dict:
    from sgm.metrics.moving_digits import evaluate_clips

    return evaluate_clips(clips, heldout.labels, speeds=heldout.speeds,
                          cond=heldout.batch["cond_frames_without_noise"])


def evaluate_engine(engine, heldout: HeldoutSet, name: str, num_steps: int | None = None, seed: int = 0
                    ) -> tuple[dict, torch.Tensor]:
    """One table row (metrics, steps, NFE, seconds per clip) and the sampled clips."""
    clips, seconds = sample_clips(engine, heldout, num_steps=num_steps, seed=seed)
    steps = num_steps or sampler_steps(engine.sampler)
    row = {"model": name, "steps": steps, "nfe": network_evaluations(engine, steps), "sec_per_clip": seconds}
    return row | score(clips, heldout), clips


def reference_row(heldout: HeldoutSet) -> dict:
    return {"model": "real held-out clips", "steps": None, "nfe": None, "sec_per_clip": None} | score(heldout.clips, heldout)


def markdown_table(rows: list[dict]) -> str:
    head = "| model | steps | NFE | " + " | ".join(title for _, title, _, _ in METRICS) + " | s/clip |"
    lines = [head, "|---|---:|---:|" + "---:|" * len(METRICS) + "---:|"]
    for r in rows:
        cells = [r["model"], _fmt(r.get("steps")), _fmt(r.get("nfe"))]
        cells += [fmt.format(r[key]) if r.get(key) is not None else "-" for key, _, fmt, _ in METRICS]
        cells.append(f"{r['sec_per_clip']:.3f}" if r.get("sec_per_clip") is not None else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _fmt(value) -> str:
    return "-" if value is None else str(value)


def save_clips_gif(clips: torch.Tensor, path: str, scale: int = 4, max_clips: int = 16) -> str:
    """Clips (b, t, C, H, W) in [-1, 1] side by side in one GIF, upscaled `scale`x (nearest)."""
    from sgm.io.media import save_video_grid

    clips = clips[:max_clips]
    b, t = clips.shape[:2]
    frames = F.interpolate(clips.reshape(b * t, *clips.shape[2:]), scale_factor=scale, mode="nearest")
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    return save_video_grid(frames, t, path)


def write_results(rows: list[dict], out_dir: str, stem: str = "moving_digits_eval") -> dict[str, str]:
    """`<stem>.md` and `<stem>.json` in `out_dir`."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {"md": os.path.join(out_dir, f"{stem}.md"), "json": os.path.join(out_dir, f"{stem}.json")}
    with open(paths["md"], "w") as f:
        f.write(markdown_table(rows))
    with open(paths["json"], "w") as f:
        json.dump(rows, f, indent=1)
    return paths
