"""Sampling and scoring image-to-video engines on held-out moving digits (the video benchmark).

Every engine is conditioned on the same held-out clips (`sgm.metrics.moving_digits.heldout_clips`,
fixed seed): their first frames, classes and speeds. Generated clips are scored by
`sgm.metrics.moving_digits.evaluate_clips` (per-frame digit accuracy and Fréchet distance of our
digit classifier's features, identity consistency and motion across frames); the held-out clips
themselves are scored the same way as the reference row.

Used by the `MovingDigitsEvaluation` callback (the embedded default run) and by
`scripts/bench/distill_moving_digits.py`.

Chained generation (`evaluate_chain`, used by `scripts/bench/chain_moving_digits.py`): N chunks per
held-out clip, chunk 1 conditioned on the clip's first frame, chunk i+1 on chunk i's last frame
(`sgm.modules.distillation.chain.run_chain`), each chunk scored on its own (see `evaluate_chain`).
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sgm.evaluation.engines import network_evaluations, sampler_steps
from sgm.modules.distillation.chain import last_frame_recondition, run_chain

UC_KEYS = ["cond_frames", "cond_frames_without_noise"]  # zeroed for the unconditional branch (SVD sampling)
METRICS = [  # (key, column title, format, better)
    ("frame_accuracy", "frame acc.", "{:.3f}", "higher"),
    ("frame_fd", "frame FD", "{:.2f}", "lower"),
    ("identity_consistency", "identity", "{:.3f}", "higher"),
    ("speed_error", "speed err. px", "{:.2f}", "lower"),
    ("accel", "accel. px", "{:.2f}", "lower"),
    ("center_motion", "motion px/frame", "{:.2f}", "closer to real"),
]
CHAIN_METRICS = [  # (key, column title, format) of the per-chunk table
    ("frame_accuracy", "frame acc.", "{:.3f}"),
    ("frame_fd", "frame FD", "{:.2f}"),
    ("identity_consistency", "identity", "{:.3f}"),
    ("speed_error", "speed err. px", "{:.2f}"),
    ("first_frame_error", "cond. frame err.", "{:.3f}"),
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
                motion_code: str = "velocity", max_speed: int = 2) -> HeldoutSet:
    """`n` held-out clips and the batch that conditions an engine on their first frames."""
    from sgm.metrics.moving_digits import heldout_clips

    clips, labels, speeds, batch = heldout_clips(n, num_frames=num_frames, size=size, channels=channels, seed=seed,
                                                 motion_code=motion_code, max_speed=max_speed)
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


def _sample_rows(engine, batch: dict, num_frames: int, shape: tuple, num_steps: int | None,
                 clips_per_call: int) -> torch.Tensor:
    """Clips (b, t, C, H, W) in [-1, 1] for an SVD batch of b clips, `clips_per_call` clips per sampling call,
    from the global RNG."""
    clips = batch["cond_frames"].shape[0]
    out = []
    for first in range(0, clips, clips_per_call):
        last = min(first + clips_per_call, clips)
        part = {k: v.to(engine.device) if isinstance(v, torch.Tensor) else v
                for k, v in _clip_slice(batch, first, last, num_frames).items()}
        c, uc = engine.conditioner.get_unconditional_conditioning(part, force_uc_zero_embeddings=UC_KEYS)
        rows = (last - first) * num_frames
        z = engine.sample(c, uc=uc, batch_size=rows, shape=shape, num_steps=num_steps, num_video_frames=num_frames)
        x = engine.decode_first_stage(z, num_video_frames=num_frames)
        out.append(x.float().clamp(-1, 1).cpu().view(last - first, num_frames, *x.shape[1:]))
    return torch.cat(out)


@torch.no_grad()
def sample_clips(
    engine,  # a DiffusionEngine (teacher, its own sampler) or a DMDEngine (student, few-step sampler)
    heldout: HeldoutSet,
    num_steps: int | None = None,  # sampler steps; None: the sampler's own
    seed: int = 0,  # noise seed (the same noise for every engine at equal shapes)
    chunk: int = 32,  # clips per sampling call
) -> tuple[torch.Tensor, float]:
    """-> clips (b, t, C, H, W) in [-1, 1] (EMA weights when the engine has them), seconds per clip."""
    shape = tuple(heldout.clips.shape[2:])  # the first stage is the identity on this task
    torch.manual_seed(seed)
    start = time.perf_counter()
    with engine.ema_scope("evaluation"):
        clips = _sample_rows(engine, heldout.batch, heldout.num_frames, shape, num_steps, chunk)
    return clips, (time.perf_counter() - start) / heldout.clips.shape[0]


@torch.no_grad()
def sample_chain(
    engine,  # any image-to-video engine: a teacher (its own sampler) or a student
    heldout: HeldoutSet,
    num_chunks: int,  # N chunks of t frames per clip
    num_steps: int | None = None,  # sampler steps; None: the sampler's own
    seed: int = 0,  # noise seed: chunk 1 draws exactly what `sample_clips` draws
    clips_per_call: int = 32,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """N chained chunks per held-out clip -> per chunk, clips (b, t, C, H, W) in [-1, 1] and the conditioning
    frames (b, C, H, W) they were given (chunk 1: the clips' first frames; chunk i+1: chunk i's last frame)."""
    t, shape = heldout.num_frames, tuple(heldout.clips.shape[2:])
    conds = []

    def sample_chunk(batch: dict, index: int) -> torch.Tensor:
        conds.append(batch["cond_frames_without_noise"].float().cpu())
        return _sample_rows(engine, batch, t, shape, num_steps, clips_per_call)

    torch.manual_seed(seed)
    with engine.ema_scope("evaluation"):  # later chunks' cond_aug noise: a stream of its own
        chunks, _ = run_chain(sample_chunk, heldout.batch, num_chunks,
                              last_frame_recondition(generator=torch.Generator().manual_seed(seed)))
    return chunks, conds


def evaluate_chain(engine, heldout: HeldoutSet, name: str, num_chunks: int, num_steps: int | None = None,
                   seed: int = 0) -> tuple[list[dict], list[torch.Tensor]]:
    """Per-chunk rows ({model, chunk (1..N), steps, metrics}) of N chained chunks per held-out clip, and the clips.

    Held-out trajectories exist for t frames only, so no metric compares a chunk with real frames of its own
    time span; each is defined without them (`sgm.metrics.moving_digits.evaluate_clips`):
    - frame_accuracy: the chunk's frames classified as the held-out clip's digit class (the digit must survive
      the chain, whatever the chunk);
    - frame_fd: FD of the chunk's b*t digit crops against the held-out digits' statistics, the same reference
      for every chunk (it never used the clips' frames);
    - identity_consistency: one digit throughout the chunk (no label needed);
    - speed_error: against the held-out speed |vx| + |vy|, which reflections keep, so it holds for any chunk;
    - first_frame_error: |frame 0 - the chunk's conditioning frame|: chunk 1 against the real first frame,
      chunk i+1 against chunk i's last frame (how faithfully the chain joins);
    - center_motion and accel as usual, within the chunk.
    Compare rows at equal n (FD is biased at small n).
    """
    from sgm.metrics.moving_digits import evaluate_clips

    chunks, conds = sample_chain(engine, heldout, num_chunks, num_steps=num_steps, seed=seed)
    steps = num_steps or sampler_steps(engine.sampler)
    rows = []
    for index, (clips, cond) in enumerate(zip(chunks, conds)):
        metrics = evaluate_clips(clips, heldout.labels, speeds=heldout.speeds, cond=cond)
        rows.append({"model": name, "chunk": index + 1, "steps": steps} | metrics)
    return rows, chunks


def chain_table(rows: list[dict]) -> str:
    """Markdown table of `evaluate_chain` rows (any number of models)."""
    head = "| model | chunk | " + " | ".join(title for _, title, _ in CHAIN_METRICS) + " |"
    lines = [head, "|---|---:|" + "---:|" * len(CHAIN_METRICS)]
    for r in rows:
        cells = [r["model"], str(r["chunk"])] + [fmt.format(r[key]) for key, _, fmt in CHAIN_METRICS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


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
