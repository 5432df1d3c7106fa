"""Video in, multi-view video out, for SV4D / SV4D 2.0 configs and distilled few-step students.

    # SV4D 2.0: windows of T frames x V views; the first without reference views, each later one
    # starting on a frame already generated and conditioned on its views
    python scripts/sampling/simple_video_sample_4d.py --config configs/inference/sv4d2.yaml \
        --ckpt checkpoints/sv4d2.safetensors --input camel.gif --output outputs/
    # SV4D: anchor frames first, then dense windows that alternate forward / backward conditioning
    # per step; the novel views of frame 0 come from SV3D (simple_video_sample.py, sv3d_p.yaml)
    python scripts/sampling/simple_video_sample_4d.py --config configs/inference/sv4d.yaml \
        --ckpt checkpoints/sv4d.safetensors --input camel.gif --ref_views sv3d_views.gif
    # a distilled student: few steps through an explicit sigma list
    ... --sigmas 700,60,8,1

Input: an mp4 / gif or a folder of frames (sorted by name). Output: one file per novel view
(`<stem>_v01.mp4`, ...) and a grid of the input view next to all novel views (`<stem>_grid.mp4`).
Each window's batch comes from `sgm.data.video_batch.make_window_batch`; the unconditional branch
zeroes SV4D_UC_ZERO_KEYS. Dot-list overrides (`model.params.x=y`) apply to the config as in main.py.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import sgm  # noqa: E402,F401  (torchvision shim before Lightning)
from simple_video_sample import configure, parse_size, read_image_file  # noqa: E402
from sgm.io.media import save_video_grid  # noqa: E402
from sgm.config import load_configs  # noqa: E402
from sgm.data.video_batch import SV4D_UC_ZERO_KEYS, make_window_batch  # noqa: E402
from sgm.util import instantiate_from_config  # noqa: E402

# Upstream's default cameras (degrees; the first entry is the input view, the last is azimuth 0).
DEFAULT_AZIMUTHS = {4: [0, 60, 120, 180, 240], 8: [0, 30, 75, 120, 165, 210, 255, 300, 330]}


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="sv4d.yaml, sv4d2.yaml, sv4d2_8views.yaml or a student's")
    p.add_argument("--ckpt", default=None, help=".safetensors or Lightning .ckpt with the model weights")
    p.add_argument("--input", required=True, help="input video: .mp4, .gif or a folder of frames")
    p.add_argument("--output", default="outputs/simple_video_sample_4d", help="output folder")
    p.add_argument("--n_frames", type=int, default=21, help="input frames used (and output frames)")
    p.add_argument("--ref_views", default=None,
                   help="video/folder with the V novel views of frame 0 (SV4D's anchor-then-dense schedule)")
    p.add_argument("--schedule", choices=("windows", "anchor_dense"), default=None,
                   help="default: anchor_dense with --ref_views, else windows")
    p.add_argument("--num_steps", type=int, default=None, help="sampler steps (default: the config's)")
    p.add_argument("--sigmas", type=str, default=None,
                   help="explicit comma-separated sigma schedule (few-step students), e.g. 700,60,8,1")
    p.add_argument("--size", type=str, default="576x576", help="frames are resized to HxW")
    p.add_argument("--elevation_deg", type=float, default=0.0, help="camera elevation of every view")
    p.add_argument("--azimuths_deg", type=str, default=None,
                   help="V+1 comma-separated azimuths, input view first (default: upstream's for V = 4, 8; "
                        "else evenly spaced)")
    p.add_argument("--decoding_t", type=int, default=8, help="rows decoded at a time")
    p.add_argument("--seed", type=int, default=23)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--format", choices=("mp4", "gif"), default="mp4")
    p.add_argument("--fps", type=int, default=7, help="frames per second of the output files")
    return p


def read_frames(path: str) -> list[np.ndarray]:
    """Every frame of a video/GIF file or of a folder of images; a missing, empty or unreadable input is
    one error line naming the file."""
    if os.path.isdir(path):
        names = sorted(f for f in os.listdir(path) if f.lower().endswith((".png", ".jpg", ".jpeg")))
        frames = [read_image_file(os.path.join(path, f), "frame") for f in names]
    elif os.path.isfile(path):
        frames = list(read_image_file(path, "video", index=None))
    else:
        raise SystemExit(f"error: input not found: {path}")
    if not frames or frames[0].ndim not in (2, 3):
        raise SystemExit(f"error: no frames in {path}")
    return frames


def to_video(frames: list[np.ndarray], n_frames: int, size: tuple[int, int]) -> torch.Tensor:
    """-> (n, 3, H, W) in [-1, 1]: the first n frames (the last one repeated if the video is shorter)."""
    frames = (frames + [frames[-1]] * n_frames)[:n_frames]
    video = torch.stack([torch.from_numpy(_rgb(f)) for f in frames]).permute(0, 3, 1, 2)  # (n, 3, h, w)
    video = torch.nn.functional.interpolate(video, size=size, mode="bicubic", align_corners=False)
    return video.clamp(0, 1) * 2.0 - 1.0


def _rgb(frame: np.ndarray) -> np.ndarray:
    frame = np.asarray(frame, dtype=np.float32) / 255.0
    if frame.ndim == 2:
        frame = frame[..., None]
    return np.array(np.broadcast_to(frame[..., :3], (*frame.shape[:2], 3)))  # a writable copy


def cameras(num_views: int, elevation_deg: float, azimuths_deg: str | None, relative_polar: bool):
    """(polar_rad, azimuth_rad) of the V novel views, relative to the input view (view 0)."""
    if azimuths_deg:
        azimuths = [float(a) for a in azimuths_deg.split(",")]
    else:
        azimuths = DEFAULT_AZIMUTHS.get(num_views, list(np.linspace(0, 360, num_views + 2)[1:] % 360))
    if len(azimuths) != num_views + 1:
        raise SystemExit(f"error: --azimuths_deg needs {num_views + 1} values (input view + {num_views}), "
                         f"got {len(azimuths)}")
    azimuth = torch.deg2rad((torch.tensor(azimuths, dtype=torch.float64) - azimuths[-1]) % 360)  # (V+1,)
    polar = torch.full((num_views + 1,), np.deg2rad(90.0 - elevation_deg), dtype=torch.float64)
    novel_azimuth = (azimuth[1:] - azimuth[0]) % (2 * np.pi)
    novel_polar = (polar[1:] - polar[0] + np.pi / 2) % (2 * np.pi) if relative_polar else polar[1:]
    return novel_polar.float(), novel_azimuth.float()


def window_shape(config) -> tuple[int, int]:
    """(T, V) of a model config: frames per window (the CLIP embedder's n_cond_frames) and novel views (the
    cond_view embedder's), read before the model is built (a few-step student's sampler has no guider to say)."""
    embedders = config.model.params.get("conditioner_config", {}).get("params", {}).get("emb_models", [])
    by_key = {e.get("input_key"): e for e in embedders}
    if "cond_view" not in by_key or "cond_frames_without_noise" not in by_key:
        raise SystemExit("error: the config is not an SV4D model (needs cond_view and cond_frames_without_noise "
                         "embedders)")
    return (int(by_key["cond_frames_without_noise"].params.n_cond_frames),
            int(by_key["cond_view"].params.n_cond_frames))


class Window:
    """Conditioning of one window and its denoiser: frames (T, 3, H, W), optional views (V, 3, H, W)."""

    def __init__(self, engine, frames: torch.Tensor, ref_views: torch.Tensor | None, polar, azimuth):
        refs = None if ref_views is None else ref_views[None]
        batch = make_window_batch(frames[None], polar, azimuth, refs)
        batch = {k: v.to(engine.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        self.engine, self.rows = engine, batch["num_video_frames"]
        self.c, self.uc = engine.conditioner.get_unconditional_conditioning(
            batch, force_uc_zero_embeddings=list(SV4D_UC_ZERO_KEYS))

    def denoiser(self, x: torch.Tensor, sigma: torch.Tensor, c: dict) -> torch.Tensor:
        return self.engine.denoiser(self.engine.model, x, sigma, c, num_video_frames=self.rows)

    def latent_shape(self) -> tuple[int, ...]:
        return (self.engine.model.diffusion_model.out_channels, *self.c["concat"].shape[-2:])


def sample_window(engine, window: Window, seed: int) -> torch.Tensor:
    """One window with the configured sampler -> latents (T*V, C, h, w)."""
    torch.manual_seed(seed)
    noise = torch.randn(window.rows, *window.latent_shape(), device=engine.device)
    return engine.sampler(window.denoiser, noise, window.c, uc=window.uc)


def sample_alternating(engine, forward: Window, backward: Window, num_frames: int, seed: int) -> torch.Tensor:
    """SV4D's dense window: every step denoises the same latents, alternately in frame order with the
    views of the first frame (odd steps) and in reverse order with those of the last (even steps).
    -> latents (T*V, C, h, w) in forward order."""
    sampler = engine.sampler
    torch.manual_seed(seed)
    noise = torch.randn(forward.rows, *forward.latent_shape(), device=engine.device)
    x, s_in, sigmas, num_sigmas, _, _ = sampler.prepare_sampling_loop(noise, forward.c, forward.uc)
    x = x.unflatten(0, (num_frames, -1))  # (T, V, C, h, w), scaled to sigma_0
    for i in range(num_sigmas - 1):
        window, reverse = (forward, False) if i % 2 == 1 else (backward, True)
        rows = (x.flip(0) if reverse else x).flatten(0, 1)  # (T*V, C, h, w) in the window's frame order
        rows = sampler.sampler_step(s_in * sigmas[i], s_in * sigmas[i + 1], window.denoiser, rows, window.c, window.uc)
        x = rows.unflatten(0, (num_frames, -1))
        x = x.flip(0) if reverse else x
    return x.flatten(0, 1)


def decode(engine, latents: torch.Tensor, num_frames: int, decoding_t: int) -> torch.Tensor:
    """latents (T*V, C, h, w) -> frames (T, V, 3, H, W) in [-1, 1]."""
    engine.en_and_decode_n_samples_a_time = decoding_t
    return engine.decode_first_stage(latents).clamp(-1, 1).unflatten(0, (num_frames, -1))


def window_starts(n_frames: int, T: int) -> list[int]:
    """SV4D 2.0: the first window at 0, each later one starting on the last generated frame (the
    last window ends at the last frame)."""
    if n_frames < T:
        raise SystemExit(f"error: the model needs at least T = {T} input frames, got {n_frames}")
    starts = [0]
    while starts[-1] + T < n_frames:
        starts.append(min(starts[-1] + T - 1, n_frames - T))
    return starts


def run_windows(engine, video, views, polar, azimuth, T, args) -> torch.Tensor:
    """SV4D 2.0 -> views (n, V, 3, H, W)."""
    for index, t0 in enumerate(window_starts(video.shape[0], T)):
        refs = views[t0] if index else None  # the first window runs without reference views
        window = Window(engine, video[t0 : t0 + T], refs, polar, azimuth)
        views[t0 : t0 + T] = decode(engine, sample_window(engine, window, args.seed), T, args.decoding_t)
    return views


def run_anchor_dense(engine, video, views, polar, azimuth, T, args) -> torch.Tensor:
    """SV4D: anchors every T-1 frames from the views of frame 0, then the frames between them."""
    n = video.shape[0]
    anchors = list(range(T - 1, n, T - 1))
    if len(anchors) != T or anchors[-1] != n - 1:
        raise SystemExit(f"error: the anchor-then-dense schedule needs n_frames = (T-1)*T + 1 = {(T - 1) * T + 1}")
    window = Window(engine, video[anchors], views[0], polar, azimuth)
    views[anchors] = decode(engine, sample_window(engine, window, args.seed), T, args.decoding_t)
    for t0 in range(0, n - 1, T - 1):
        frames = list(range(t0, t0 + T))
        forward = Window(engine, video[frames], views[t0], polar, azimuth)
        backward = Window(engine, video[frames[::-1]], views[frames[-1]], polar, azimuth)
        dense = decode(engine, sample_alternating(engine, forward, backward, T, args.seed), T, args.decoding_t)
        views[t0 + 1 : t0 + T - 1] = dense[1:-1]  # keep frame 0's views and the anchors
    return views


def main(argv: list[str] | None = None) -> list[str]:
    args, dotlist = get_parser().parse_known_args(argv)
    size = parse_size(args.size)  # inputs and --size fail before the model is built
    frames = read_frames(args.input)
    ref_frames = read_frames(args.ref_views) if args.ref_views else None
    config = load_configs([args.config])
    T, V = window_shape(config)
    args.num_frames = T * V  # a window's rows, for the guider (when the sampler has one)
    config, _ = configure(config, args, dotlist)
    engine = instantiate_from_config(config.model).to(args.device).eval()
    schedule = args.schedule or ("anchor_dense" if args.ref_views else "windows")
    polar, azimuth = cameras(V, args.elevation_deg, args.azimuths_deg, relative_polar=schedule == "windows")
    video = to_video(frames, args.n_frames, size).to(args.device)  # (n, 3, H, W)
    views = video[:, None].repeat(1, V, 1, 1, 1)  # (n, V, 3, H, W), filled in below
    with torch.no_grad():
        if schedule == "anchor_dense":
            if ref_frames is None:
                raise SystemExit("error: the anchor-then-dense schedule needs --ref_views (frame 0's novel views)")
            views[0] = to_video(ref_frames, V, size).to(args.device)
            views = run_anchor_dense(engine, video, views, polar, azimuth, T, args)
        else:
            views = run_windows(engine, video, views, polar, azimuth, T, args)
    os.makedirs(args.output, exist_ok=True)
    stem = os.path.splitext(os.path.basename(os.path.normpath(args.input)))[0]
    n = video.shape[0]
    paths = [save_video_grid(views[:, v].cpu(), n, os.path.join(args.output, f"{stem}_v{v + 1:02d}.{args.format}"),
                             fps=args.fps) for v in range(V)]
    grid = torch.cat([video[None], views.transpose(0, 1)]).flatten(0, 1).cpu()  # ((1 + V) n, 3, H, W)
    paths.append(save_video_grid(grid, n, os.path.join(args.output, f"{stem}_grid.{args.format}"), fps=args.fps))
    print("wrote " + ", ".join(paths))
    return paths


if __name__ == "__main__":
    main()
