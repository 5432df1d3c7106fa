"""The one place an SVD-style image-to-video batch is assembled (training data, sampling script, DMD).

Layout (upstream's, see UPSTREAM.md §10.2), for b clips of t frames:

    cond_frames_without_noise  (b, C, H, W)   the conditioning image in [-1, 1] (CLIP input)
    cond_frames                (b, C, H, W)   the same image + cond_aug * noise (VAE input)
    fps_id, motion_bucket_id   ((b t),)       per-frame micro-conditioning
    cond_aug                   ((b t),)       noise level of cond_frames, per frame
    polars_rad, azimuths_rad   ((b t),)       SV3D_p camera (only when given)
    num_video_frames           int t
    image_only_indicator       (b, t)         zeros: every frame is a video frame
    <input_key>                ((b t), C, H, W)   target frames, only for training

Clip-level conditioning stays at b rows (the encoders run once per clip); the engine repeats it to
the frames (`sgm.util.broadcast_cond_to_rows`).
"""
from __future__ import annotations

import torch


def _per_frame(value: float | torch.Tensor, clips: int, num_frames: int, name: str) -> torch.Tensor:
    """A scalar, a (b,) per-clip or a (b*t,) / (t,) per-frame value -> ((b t),) float tensor."""
    value = torch.as_tensor(value, dtype=torch.float32)
    if value.ndim == 0:
        return value.repeat(clips * num_frames)
    if value.shape == (clips * num_frames,):
        return value
    if value.shape == (clips,):
        return value.repeat_interleave(num_frames)
    if value.shape == (num_frames,):
        return value.repeat(clips)
    raise ValueError(f"'{name}' must be a scalar, ({clips},), ({num_frames},) or ({clips * num_frames},); "
                     f"got shape {tuple(value.shape)}")


def make_video_batch(
    cond_image: torch.Tensor,  # (b, C, H, W) in [-1, 1]
    num_frames: int,  # t
    fps_id: float | torch.Tensor | None = 6,  # SVD micro-conditioning (None: key left out, e.g. SV3D)
    motion_bucket_id: float | torch.Tensor | None = 127,  # SVD micro-conditioning (None: left out)
    cond_aug: float | torch.Tensor = 0.02,  # noise added to cond_frames
    polars_rad: torch.Tensor | None = None,  # SV3D_p elevations, (t,) or ((b t),)
    azimuths_rad: torch.Tensor | None = None,  # SV3D_p azimuths, (t,) or ((b t),)
    frames: torch.Tensor | None = None,  # (b, t, C, H, W) training targets
    input_key: str = "frames",  # batch key of the flattened targets
    generator: torch.Generator | None = None,  # for the cond_aug noise
) -> dict:
    if cond_image.ndim != 4:
        raise ValueError(f"cond_image must be (b, C, H, W), got shape {tuple(cond_image.shape)}")
    clips = cond_image.shape[0]
    cond_aug_rows = _per_frame(cond_aug, clips, num_frames, "cond_aug")
    sigma = cond_aug_rows.view(clips, num_frames)[:, 0].to(cond_image)  # one level per clip
    noise = torch.randn(cond_image.shape, generator=generator, dtype=cond_image.dtype).to(cond_image.device)
    batch = {
        "cond_frames_without_noise": cond_image,
        "cond_frames": cond_image + sigma.view(-1, 1, 1, 1) * noise,
        "cond_aug": cond_aug_rows,
        "num_video_frames": num_frames,
        "image_only_indicator": torch.zeros(clips, num_frames),
    }
    for name, value in (("fps_id", fps_id), ("motion_bucket_id", motion_bucket_id),
                        ("polars_rad", polars_rad), ("azimuths_rad", azimuths_rad)):
        if value is not None:
            batch[name] = _per_frame(value, clips, num_frames, name)
    if frames is not None:
        if frames.shape[:2] != (clips, num_frames):
            raise ValueError(f"frames must be (b={clips}, t={num_frames}, C, H, W), got {tuple(frames.shape)}")
        batch[input_key] = frames.reshape(clips * num_frames, *frames.shape[2:])
    return batch
