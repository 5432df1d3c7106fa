"""The one place an SVD-style image-to-video batch is assembled (training data, sampling script, DMD).

Layout (upstream's sampling and training batches), for b clips of t frames:

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

SV4D windows (`make_window_batch`, the layout of upstream's SV4D sampling script) are b windows
of t input-video frames x v novel views, rows ordered (b, t, v): each input frame is an SVD-style "clip" of v views.
"""
from __future__ import annotations

import torch


def _per_frame(value: float | torch.Tensor, clips: int, num_frames: int, name: str) -> torch.Tensor:
    """A scalar, a (b,) per-clip or a (b*t,) / (t,) per-frame value -> ((b t),) float tensor. When b == t a
    1-D value of that length is read as per clip; pass ((b t),) to mean per frame."""
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


# Entries of a `make_video_batch` batch that hold one value per frame, rebuilt by `recondition_video_batch`.
PER_FRAME_CONDITIONING = ("fps_id", "motion_bucket_id", "cond_aug", "polars_rad", "azimuths_rad")


def recondition_video_batch(
    batch: dict,  # an SVD batch of b clips (make_video_batch's layout)
    cond_image: torch.Tensor,  # (b, C, H, W) in [-1, 1]: the new conditioning image per clip
    num_frames: int | None = None,  # t of the new batch; None: the batch's num_video_frames
    generator: torch.Generator | None = None,  # for the new cond_aug noise
) -> dict:
    """The same clips conditioned on another image (chained generation: the last frame of the previous chunk),
    on cond_image's device.

    Kept from `batch`, per clip: fps_id, motion_bucket_id and the cond_aug level (each clip's first
    frame's value), the SV3D cameras (per frame, so only at the same t), and every other tensor with one
    entry per clip (labels such as `cls`, `speed`). New: cond_frames_without_noise = cond_image, cond_frames =
    cond_image + cond_aug * fresh noise (gradients flow through both), image_only_indicator. Left out:
    entries with one row per frame of the old clips (target frames, frame masks): they describe
    another chunk.
    """
    clips, old_t = cond_image.shape[0], int(batch["num_video_frames"])
    t = old_t if num_frames is None else int(num_frames)
    per_frame = {}
    for key in PER_FRAME_CONDITIONING:
        if key not in batch:
            continue
        value = torch.as_tensor(batch[key]).reshape(clips, old_t)  # (b, t_old)
        if key in ("polars_rad", "azimuths_rad"):
            if t != old_t:
                raise ValueError(f"'{key}' holds one camera per frame of {old_t}-frame clips; "
                                 f"it cannot be kept for {t} frames")
            per_frame[key] = value.flatten()  # ((b t),)
        else:
            per_frame[key] = value[:, 0]  # (b,) one value per clip
    out = make_video_batch(cond_image, t, fps_id=per_frame.get("fps_id"),
                           motion_bucket_id=per_frame.get("motion_bucket_id"),
                           cond_aug=per_frame.get("cond_aug", 0.0), polars_rad=per_frame.get("polars_rad"),
                           azimuths_rad=per_frame.get("azimuths_rad"), generator=generator)
    return with_clip_labels(out, batch, clips, old_t, cond_image.device)


def with_clip_labels(
    out: dict,  # a new batch of the same clips
    batch: dict,  # the batch it replaces
    clips: int,  # b
    rows_per_clip: int,  # rows of one clip in `batch` (t, or t v for SV4D windows)
    device: torch.device,  # where the new batch lives
) -> dict:
    """`out` on `device`, plus the per-clip labels of `batch` it lacks (tensors of shape (b,): `cls`, `speed`);
    none when a clip has one row, since a label and a per-row value look alike then."""
    out = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in out.items()}
    for key, value in batch.items():
        if key not in out and isinstance(value, torch.Tensor) and value.shape == (clips,) and rows_per_clip > 1:
            out[key] = value
    return out


# Conditioner inputs whose embeddings the unconditional branch of SV4D's CFG zeroes (§12.4).
SV4D_UC_ZERO_KEYS = ("cond_frames", "cond_frames_without_noise", "cond_view", "cond_motion")


def make_window_batch(
    frames: torch.Tensor,  # (b, t, C, H, W) input-video frames in [-1, 1]
    polar_rad: torch.Tensor,  # (v,) camera elevation of each novel view
    azimuth_rad: torch.Tensor,  # (v,) camera azimuth of each novel view
    ref_views: torch.Tensor | None = None,  # (b, v, C, H, W) the views at the window's anchor frame
    refs_in_window: bool = True,  # the anchor is the window's first frame (SV4D 2.0, SV4D's dense windows)
    cond_aug: float = 0.0,  # noise added to cond_frames (0 in SV4D's scripts)
    targets: torch.Tensor | None = None,  # (b, t, v, C, H, W) training targets
    input_key: str = "frames",  # batch key of the flattened targets
    generator: torch.Generator | None = None,  # for the cond_aug noise
) -> dict:
    """One SV4D window, rows (b, t, v):

        cond_frames_without_noise  (b t, C, H, W)    the input frames (CLIP token per frame)
        cond_frames                (b t v, C, H, W)  each input frame repeated per view (+ cond_aug noise)
        cond_motion                (b t, C, H, W)    the input frames
        cond_view                  (b v, C, H, W)    the reference views, zeros without them
        polar_rad, azimuth_rad     (b t v,)          per view, repeated for each frame
        num_video_frames           int t v
        image_only_indicator       (b, t v)          1 with reference views, else 0 (the network ignores
                                                     the value; SV4D's scripts set it so)
        dmd_mask                   (b t v,)          0 on rows that are given rather than generated: the
                                                     first frame's views when they are the reference views
    """
    if frames.ndim != 5:
        raise ValueError(f"frames must be (b, t, C, H, W), got shape {tuple(frames.shape)}")
    clips, num_frames = frames.shape[:2]
    polar_rad, azimuth_rad = torch.as_tensor(polar_rad), torch.as_tensor(azimuth_rad)
    if polar_rad.ndim != 1 or polar_rad.shape != azimuth_rad.shape:
        raise ValueError(f"polar_rad and azimuth_rad must both be (v,), one per novel view; got "
                         f"{tuple(polar_rad.shape)} and {tuple(azimuth_rad.shape)}")
    num_views = polar_rad.shape[0]
    inputs = frames.reshape(clips * num_frames, *frames.shape[2:])  # (b t, C, H, W)
    per_frame_targets = None if targets is None else targets.reshape(clips * num_frames, *targets.shape[2:])
    # Each input frame is a clip of v "frames" (the views): the SVD batch gives CLIP input, noisy VAE
    # input and per-row cameras in the (b t, v) layout.
    batch = make_video_batch(
        inputs,
        num_views,
        fps_id=None,
        motion_bucket_id=None,
        cond_aug=cond_aug,
        # per row (b t v,): a (v,) value would be read as one per "clip" when b*t == v (e.g. one window of 4
        # frames x 4 views), giving every row of frame k camera k
        polars_rad=polar_rad.repeat(clips * num_frames),
        azimuths_rad=azimuth_rad.repeat(clips * num_frames),
        frames=per_frame_targets,
        input_key=input_key,
        generator=generator,
    )
    if ref_views is not None and ref_views.shape[:2] != (clips, num_views):
        raise ValueError(f"ref_views must be (b={clips}, v={num_views}, C, H, W), got {tuple(ref_views.shape)}")
    view_shape = (clips * num_views, *frames.shape[2:])
    has_refs = ref_views is not None
    given = torch.zeros(clips, num_frames, num_views)
    if has_refs and refs_in_window:
        given[:, 0] = 1.0  # the first frame's views are known: the reference views themselves
    return {
        "cond_frames_without_noise": batch["cond_frames_without_noise"],  # (b t, C, H, W)
        "cond_frames": batch["cond_frames"].repeat_interleave(num_views, dim=0),  # (b t v, C, H, W)
        "cond_motion": inputs,
        "cond_view": ref_views.reshape(view_shape) if has_refs else frames.new_zeros(view_shape),
        "polar_rad": batch["polars_rad"],
        "azimuth_rad": batch["azimuths_rad"],
        "num_video_frames": num_frames * num_views,
        "image_only_indicator": torch.full((clips, num_frames * num_views), float(has_refs)),
        "dmd_mask": 1.0 - given.flatten(),
        **({input_key: batch[input_key]} if targets is not None else {}),
    }


# Batch key of a window chain's whole input video (b, F, C, H, W), F = 1 + N (t - 1): SV4D 2.0's windows of t
# frames start on the previous window's last frame (scripts/sampling/simple_video_sample_4d.py, window_starts).
CHAIN_VIDEO_KEY = "chain_video"


def window_chain_frames(num_windows: int, window_frames: int) -> int:
    """F, the input frames of a chain of `num_windows` SV4D 2.0 windows of `window_frames` frames each."""
    return 1 + num_windows * (window_frames - 1)


def next_window_batch(
    batch: dict,  # window `index` of a chain (make_window_batch's layout + CHAIN_VIDEO_KEY)
    outputs: torch.Tensor,  # (b, t v, C, H, W) window `index`'s generated views in [-1, 1], rows (t, v)
    index: int,  # the window the outputs belong to (0 = the chain's first)
    generator: torch.Generator | None = None,  # for the cond_aug noise (none at SV4D's cond_aug 0)
) -> dict:
    """Window index+1 of an SV4D 2.0 chain, on outputs' device: input frames chain_video[:, s : s+t] with
    s = (index+1)(t-1), so it starts on window `index`'s last frame; reference views (cond_view) = the
    generated views of that frame, clamped to [-1, 1], given in the window (its dmd_mask is 0 on them); the
    same cameras; per-clip labels ride along. Gradients flow from `outputs` into cond_view."""
    if CHAIN_VIDEO_KEY not in batch:
        raise KeyError(f"a window chain needs the input video under '{CHAIN_VIDEO_KEY}' (b, F, C, H, W) in the batch "
                       f"(MultiViewDigitsDataModule(chain_windows=N) yields it); keys: {sorted(batch)}")
    video = batch[CHAIN_VIDEO_KEY].to(outputs.device)  # (b, F, C, H, W)
    clips, rows = outputs.shape[:2]
    views = batch["cond_view"].shape[0] // clips  # v
    frames = rows // views  # t
    if outputs.shape[0] != video.shape[0] or frames * views != rows:
        raise ValueError(f"outputs must be (b={video.shape[0]}, t*v, C, H, W) with v={views}, got {tuple(outputs.shape)}")
    start = (index + 1) * (frames - 1)
    if start + frames > video.shape[1]:
        raise ValueError(f"window {index + 1} needs input frames {start}..{start + frames - 1}, but "
                         f"'{CHAIN_VIDEO_KEY}' has {video.shape[1]} (= 1 + N (t-1) for N windows of t={frames})")
    polar = torch.as_tensor(batch["polar_rad"]).reshape(clips, rows)[0, :views]  # (v,) the same cameras per clip
    azimuth = torch.as_tensor(batch["azimuth_rad"]).reshape(clips, rows)[0, :views]
    refs = outputs.reshape(clips, frames, views, *outputs.shape[2:])[:, -1].clamp(-1, 1)  # (b, v, C, H, W)
    out = make_window_batch(video[:, start:start + frames], polar, azimuth, ref_views=refs, generator=generator)
    out[CHAIN_VIDEO_KEY] = video
    return with_clip_labels(out, batch, clips, rows, outputs.device)
