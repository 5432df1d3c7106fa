"""Sampling and scoring multi-view engines (SV4D 2.0 teachers, DMD students) on held-out multi-view digits.

Every engine sees the same held-out windows (`heldout_windows`, fixed seed, held-out digits): t input
frames of a moving digit, to be turned into v novel views (cameras 1..v of `sgm.data.multiview_digits`).
They are SV4D 2.0's first window: no reference views. The data knows the true views, so a generated
window is scored against them:

- per view k, after undoing camera k's transform (`to_input_view`, so every view shows the input
  camera's canvas, cut to the columns all cameras see, `common_field`): frame accuracy, frame FD and identity consistency of
  `sgm.metrics.moving_digits.evaluate_clips`, with the windows' digit classes as labels;
- `view_consistency`: mean |view i - view j| over the pairs i < j of views of the same frame, after
  undoing both transforms ([-1, 1] pixel units; 0 when the views agree, whether or not they are right);
- `true_view_error`: mean |generated view - true view| ([-1, 1] pixel units; 0 for the real views).

The real views are scored the same way as the reference row (consistency and error 0).
Used by `scripts/bench/distill_multiview_digits.py`.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch

from sgm.evaluation.engines import network_evaluations, sampler_steps

VIEW_METRICS = [  # (key of evaluate_clips, column title, format): scored per view, averaged over views
    ("frame_accuracy", "frame acc.", "{:.3f}"),
    ("frame_fd", "frame FD", "{:.2f}"),
    ("identity_consistency", "identity", "{:.3f}"),
]
WINDOW_METRICS = [  # (key, column title, format): over all views
    ("view_consistency", "view consistency", "{:.3f}"),  # no "|" in titles: it would split a markdown cell
    ("true_view_error", "true-view err.", "{:.3f}"),
]


@dataclass
class HeldoutWindows:
    video: torch.Tensor  # (b, t, C, H, W) the input view in [-1, 1]
    views: torch.Tensor  # (b, t, v, C, H, W) the true novel views, cameras 1..v
    labels: torch.Tensor  # (b,) digit classes
    polar: torch.Tensor  # (v,) camera elevations (relative, SV4D 2.0)
    azimuth: torch.Tensor  # (v,) camera azimuths
    ref_views: torch.Tensor | None = None  # (b, v, C, H, W) views given for the first frame (a later window)

    @property
    def num_frames(self) -> int:
        return self.views.shape[1]

    @property
    def num_views(self) -> int:
        return self.views.shape[2]

    def batch(self, start: int = 0, stop: int | None = None) -> dict:
        """The conditioning batch of windows [start, stop), no cond_aug noise (so the batch is a function of the
        windows alone): SV4D 2.0's first window, or with `ref_views` a later one."""
        from sgm.data.video_batch import make_window_batch

        refs = None if self.ref_views is None else self.ref_views[start:stop]
        return make_window_batch(self.video[start:stop], self.polar, self.azimuth, ref_views=refs)

    def window(self, first: int, frames: int, ref_views: torch.Tensor | None = None) -> "HeldoutWindows":
        """Frames first..first+frames-1 of every clip as windows, optionally with reference views."""
        if first + frames > self.num_frames:
            raise ValueError(f"frames {first}..{first + frames - 1} are past the clips' {self.num_frames} frames")
        return HeldoutWindows(self.video[:, first:first + frames], self.views[:, first:first + frames], self.labels,
                              self.polar, self.azimuth, ref_views)


def heldout_windows(n: int, num_frames: int = 4, num_views: int = 4, size: int = 16, channels: int = 3,
                    seed: int = 0) -> HeldoutWindows:
    """The first `n` held-out digits, each on its fixed trajectory of (seed, index)."""
    from sgm.data.multiview_digits import MultiViewMovingDigits, camera_angles

    data = MultiViewMovingDigits(num_views=num_views, split="heldout", num_frames=num_frames, size=size,
                                 channels=channels, seed=seed)
    if not 1 <= n <= len(data):
        raise ValueError(f"n must be in [1, {len(data)}] (the held-out digits), got {n}")
    items = [data[i] for i in range(n)]
    polar, azimuth = camera_angles(num_views)
    return HeldoutWindows(
        video=torch.stack([item["video"] for item in items]),  # (b, t, C, H, W)
        views=torch.stack([item["views"] for item in items]),  # (b, t, v, C, H, W)
        labels=torch.tensor([item["cls"] for item in items]),
        polar=polar,
        azimuth=azimuth,
    )


@torch.no_grad()
def sample_views(
    engine,  # a DiffusionEngine (teacher: its own sampler and guider) or a DMDEngine (student: few-step sampler)
    windows: HeldoutWindows,
    num_steps: int | None = None,  # sampler steps; None: the sampler's own
    seed: int = 0,  # noise seed (the same noise for every engine at equal shapes)
    chunk: int = 8,  # windows per sampling call
) -> tuple[torch.Tensor, float]:
    """-> views (b, t, v, C, H, W) in [-1, 1] (EMA weights when the engine has them), seconds per window."""
    from sgm.data.video_batch import SV4D_UC_ZERO_KEYS

    b, t, v = windows.views.shape[:3]
    rows_per_window = t * v
    latent_shape = tuple(engine.encode_first_stage(windows.video[:1, 0].to(engine.device)).shape[1:])  # (C, h, w)
    torch.manual_seed(seed)
    start, out = time.perf_counter(), []
    with engine.ema_scope("evaluation"):
        for first in range(0, b, chunk):
            last = min(first + chunk, b)
            batch = {k: x.to(engine.device) if isinstance(x, torch.Tensor) else x
                     for k, x in windows.batch(first, last).items()}
            c, uc = engine.conditioner.get_unconditional_conditioning(
                batch, force_uc_zero_embeddings=list(SV4D_UC_ZERO_KEYS))
            rows = (last - first) * rows_per_window  # (b' t v) rows, ordered (b', t, v)
            z = engine.sample(c, uc=uc, batch_size=rows, shape=latent_shape, num_steps=num_steps,
                              num_video_frames=rows_per_window)
            x = engine.decode_first_stage(z, num_video_frames=rows_per_window)  # (b' t v, C, H, W)
            out.append(x.float().clamp(-1, 1).cpu().view(last - first, t, v, *x.shape[1:]))
    return torch.cat(out), (time.perf_counter() - start) / b


def input_views(views: torch.Tensor) -> torch.Tensor:
    """(b, t, v, C, H, W) views of cameras 1..v -> the same, each seen from the input camera (`to_input_view`) and
    cut to the columns all v cameras see (`common_field`), so that the real views give back the input view there."""
    from sgm.data.multiview_digits import common_field, to_input_view

    cameras = list(range(1, views.shape[2] + 1))
    return torch.stack([common_field(to_input_view(views[:, :, k - 1], k), cameras) for k in cameras], dim=2)


def view_consistency(aligned: torch.Tensor) -> float:
    """(b, t, v, C, H, W) views already seen from the input camera -> mean |view i - view j| over pairs i < j."""
    v = aligned.shape[2]
    if v < 2:
        raise ValueError(f"view consistency needs at least 2 views, got {v} (tensor {tuple(aligned.shape)})")
    i, j = torch.triu_indices(v, v, offset=1)  # (pairs,) each
    return (aligned[:, :, i] - aligned[:, :, j]).abs().mean().item()


def score_views(views: torch.Tensor, windows: HeldoutWindows, metrics=None) -> dict:
    """Generated (or real) views (b, t, v, C, H, W) of `windows` -> the means over views of VIEW_METRICS,
    WINDOW_METRICS, and `per_view`: one dict per camera 1..v (VIEW_METRICS and its true_view_error)."""
    from sgm.metrics.digits import default_metrics
    from sgm.metrics.moving_digits import evaluate_clips

    if views.shape != windows.views.shape:
        raise ValueError(f"views must be (b, t, v, C, H, W) = {tuple(windows.views.shape)} like the held-out "
                         f"windows' true views, got {tuple(views.shape)}")
    views = views.float().clamp(-1, 1)
    metrics = metrics if metrics is not None else default_metrics()
    aligned = input_views(views)  # (b, t, v, C, H, W) all from the input camera
    error = (views - windows.views).abs()  # (b, t, v, C, H, W)
    per_view = []
    for k in range(views.shape[2]):
        scores = evaluate_clips(aligned[:, :, k], windows.labels, metrics=metrics)
        per_view.append({"camera": k + 1, **{key: scores[key] for key, _, _ in VIEW_METRICS},
                         "true_view_error": error[:, :, k].mean().item()})
    means = {key: sum(p[key] for p in per_view) / len(per_view) for key, _, _ in VIEW_METRICS}
    return means | {"view_consistency": view_consistency(aligned), "true_view_error": error.mean().item(),
                    "per_view": per_view, "n": views.shape[0]}


def evaluate_engine(engine, windows: HeldoutWindows, name: str, num_steps: int | None = None, seed: int = 0,
                    metrics=None) -> tuple[dict, torch.Tensor]:
    """One table row (metrics, steps, NFE per row, seconds per window) and the sampled views."""
    views, seconds = sample_views(engine, windows, num_steps=num_steps, seed=seed)
    steps = num_steps or sampler_steps(engine.sampler)
    row = {"model": name, "steps": steps, "nfe": network_evaluations(engine, steps), "sec_per_window": seconds}
    return row | score_views(views, windows, metrics), views


def evaluate_chain(engine, clips: HeldoutWindows, window_frames: int, name: str, num_steps: int | None = None,
                   seed: int = 0, metrics=None) -> tuple[list[dict], torch.Tensor]:
    """SV4D 2.0's chained sampling of whole clips (F = 1 + N (t - 1) frames, `heldout_windows(n, num_frames=F)`):
    window k covers frames k (t-1) .. k (t-1) + t - 1 and is given the views generated for its first frame (the
    last of window k-1) as reference views, as `scripts/sampling/simple_video_sample_4d.py` does. -> one row per
    window (`evaluate_engine`'s, with `window` = k + 1, scored against that window's true views) and the clips'
    views (b, F, v, C, H, W)."""
    from sgm.data.video_batch import window_chain_frames

    step = window_frames - 1
    num_windows = (clips.num_frames - 1) // step if step > 0 else 0
    if num_windows < 1 or window_chain_frames(num_windows, window_frames) != clips.num_frames:
        raise ValueError(f"clips of {clips.num_frames} frames are not a chain of {window_frames}-frame windows "
                         f"(1 + N x {step} frames)")
    rows, out = [], clips.views.new_zeros(clips.views.shape)
    for k in range(num_windows):
        refs = out[:, k * step].clone() if k else None  # (b, v, C, H, W) the previous window's views of this frame
        windows = clips.window(k * step, window_frames, refs)
        row, views = evaluate_engine(engine, windows, name, num_steps=num_steps, seed=seed, metrics=metrics)
        rows.append(row | {"window": k + 1})
        out[:, k * step:k * step + window_frames] = views
    return rows, out


def reference_row(windows: HeldoutWindows, metrics=None) -> dict:
    return {"model": "real views", "steps": None, "nfe": None, "sec_per_window": None} | score_views(
        windows.views, windows, metrics)


def markdown_table(rows: list[dict]) -> str:
    """One row per model: VIEW_METRICS averaged over views, then WINDOW_METRICS."""
    columns = VIEW_METRICS + WINDOW_METRICS
    lines = ["| model | steps | NFE | " + " | ".join(title for _, title, _ in columns) + " | s/window |",
             "|---|---:|---:|" + "---:|" * len(columns) + "---:|"]
    for r in rows:
        cells = [r["model"], _fmt(r.get("steps")), _fmt(r.get("nfe"))]
        cells += [fmt.format(r[key]) for key, _, fmt in columns]
        cells.append("-" if r.get("sec_per_window") is None else f"{r['sec_per_window']:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def per_view_table(rows: list[dict]) -> str:
    """One row per model and camera: VIEW_METRICS and the true-view error of that view."""
    columns = VIEW_METRICS + [column for column in WINDOW_METRICS if column[0] == "true_view_error"]
    lines = ["| model | camera | " + " | ".join(title for _, title, _ in columns) + " |",
             "|---|---:|" + "---:|" * len(columns)]
    for r in rows:
        for view in r["per_view"]:
            cells = [r["model"], str(view["camera"])] + [fmt.format(view[key]) for key, _, fmt in columns]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _fmt(value) -> str:
    return "-" if value is None else str(value)


def window_grids(views: torch.Tensor, windows: HeldoutWindows, first: int = 0) -> list:
    """Views (b, t, v, C, H, W) of windows first..first+b-1 -> one (H', W', 3) uint8 grid per window: rows are the
    input view and the views of cameras 1..v (as generated, not undone), columns the t frames."""
    from sgm.io.media import make_grid, to_uint8

    b, t, v = views.shape[:3]
    rows = torch.cat([windows.video[first:first + b, :, None], views], dim=2)  # (b, t, 1 + v, C, H, W)
    rows = rows.transpose(1, 2)  # (b, 1 + v, t, C, H, W): grid rows = views, columns = frames
    return [make_grid(to_uint8(clip.flatten(0, 1)), n_rows=1 + v) for clip in rows]


def save_views_gif(views: torch.Tensor, windows: HeldoutWindows, path: str, max_clips: int = 16,
                   fps: int = 1) -> str:
    """One GIF frame per window (`window_grids`)."""
    import numpy as np

    from sgm.io.media import write_video

    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    return write_video(np.stack(window_grids(views[:max_clips], windows)), path, fps)


def save_frames_png(views_by_model: dict, windows: HeldoutWindows, path: str, clips: tuple = (0, 5),
                    scale: int = 3) -> str:
    """A still for the README: for each window in `clips` a row of `window_grids`, one per model (left to right
    in the dict's order: name -> views (b, t, v, C, H, W)), each pixel `scale` x `scale`."""
    import numpy as np

    from sgm.io.media import write_image

    strips = [np.concatenate([window_grids(views[i:i + 1], windows, first=i)[0] for views in views_by_model.values()],
                             axis=1) for i in clips]
    image = np.kron(np.concatenate(strips, axis=0), np.ones((scale, scale, 1), dtype=np.uint8))
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    return write_image(image, path)
