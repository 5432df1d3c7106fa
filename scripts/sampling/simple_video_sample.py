"""Image in, video out, for SVD / SVD-XT / SV3D configs and distilled few-step students.

    python scripts/sampling/simple_video_sample.py --config configs/inference/svd.yaml \
        --ckpt checkpoints/svd.safetensors --input image.png --output outputs/
    # a distilled student: few steps through an explicit sigma list
    python scripts/sampling/simple_video_sample.py --config student.yaml --ckpt student.safetensors \
        --input image.png --sigmas 700,60,8,1
    # the tiny CPU teacher
    python scripts/sampling/simple_video_sample.py \
        --config configs/example_training/toy/moving_digits_svd.yaml --ckpt logs/<run>/checkpoints/last.ckpt \
        --input digit.png --format gif
    # a longer video in 4 chunks, each conditioned on the previous chunk's last frame (teacher or student)
    python scripts/sampling/simple_video_sample.py --config student.yaml --ckpt student.safetensors \
        --input image.png --chunks 4

The batch is assembled by `sgm.data.video_batch.make_video_batch`; which micro-conditionings are
sent (fps_id, motion_bucket_id, polars_rad, azimuths_rad) follows the config's conditioner.
Dot-list overrides (`model.params.x=y`) are applied to the config like in main.py.
"""
from __future__ import annotations

import argparse
import inspect
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import sgm  # noqa: E402,F401  (torchvision shim before Lightning)
from sgm.io.media import save_video_grid  # noqa: E402
from sgm.config import load_configs  # noqa: E402
from sgm.data.video_batch import make_video_batch  # noqa: E402
from sgm.modules.distillation.chain import last_frame_recondition, run_chain  # noqa: E402
from sgm.util import get_obj_from_str, instantiate_from_config  # noqa: E402

# Conditioner inputs that are images, zeroed in the unconditional branch (upstream's sampling).
IMAGE_COND_KEYS = ["cond_frames", "cond_frames_without_noise"]


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="model config (e.g. configs/inference/svd.yaml)")
    p.add_argument("--ckpt", default=None, help=".safetensors or Lightning .ckpt with the model weights")
    p.add_argument("--input", required=True, help="conditioning image (PNG/JPG)")
    p.add_argument("--output", default="outputs/simple_video_sample", help="output folder")
    p.add_argument("--num_frames", type=int, default=None, help="frames (default: the guider's num_frames)")
    p.add_argument("--num_steps", type=int, default=None, help="sampler steps (default: the config's)")
    p.add_argument("--sigmas", type=str, default=None,
                   help="explicit comma-separated sigma schedule (few-step students), e.g. 700,60,8,1")
    p.add_argument("--size", type=str, default=None, help="resize the input to HxW, e.g. 576x1024")
    p.add_argument("--fps_id", type=int, default=6)
    p.add_argument("--motion_bucket_id", type=int, default=127)
    p.add_argument("--cond_aug", type=float, default=0.02)
    p.add_argument("--elevation_deg", type=float, default=10.0, help="SV3D_p: camera elevation")
    p.add_argument("--decoding_t", type=int, default=14, help="frames decoded at a time")
    p.add_argument("--seed", type=int, default=23)
    p.add_argument("--chunks", type=int, default=1,
                   help="chained generation: N chunks of num_frames, chunk i+1 conditioned on chunk i's last frame; "
                        "the output holds all N x num_frames frames")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--format", choices=("mp4", "gif"), default="mp4")
    p.add_argument("--fps", type=int, default=7, help="frames per second of the output file")
    return p


def configure(config, args, dotlist: list[str]):
    """Apply the command line to the model config: checkpoint, frames, steps, schedule."""
    from omegaconf import OmegaConf

    params = config.model.params
    if args.ckpt:
        params.ckpt_path = args.ckpt
    sampler = params.sampler_config.params
    guider = sampler.get("guider_config", None)
    num_frames = args.num_frames or (guider.params.get("num_frames") if guider else None)
    if num_frames is None:
        raise SystemExit("error: give --num_frames (the config's guider has no num_frames)")
    if guider is not None and "num_frames" in inspect.signature(get_obj_from_str(guider.target)).parameters:
        OmegaConf.update(guider, "params.num_frames", num_frames, force_add=True)
    if args.sigmas:
        sigmas = [float(s) for s in args.sigmas.split(",")]
        sampler.discretization_config = OmegaConf.create({
            "target": "sgm.modules.diffusionmodules.discretizer.ExplicitDiscretization",
            "params": {"sigmas": sigmas}})
        sampler.num_steps = len(sigmas)
    elif args.num_steps:
        sampler.num_steps = args.num_steps
    return OmegaConf.merge(config, OmegaConf.from_dotlist(dotlist)), num_frames


def parse_size(text: str, flag: str = "--size") -> tuple[int, int]:
    """'HxW' -> (H, W); anything else is one error line naming the flag and the value."""
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise SystemExit(f"error: {flag} must be HxW in pixels, e.g. 576x1024; got {text!r}") from None
    if height < 1 or width < 1:
        raise SystemExit(f"error: {flag} must be HxW with H, W >= 1; got {text!r}")
    return height, width


def read_image_file(path: str, what: str = "image", index: int | None = 0) -> np.ndarray:
    """Pixels of an image (index 0) or every frame of a video/GIF (index None); a missing or unreadable
    file is one error line naming it."""
    import imageio.v3 as iio

    if not os.path.isfile(path):
        raise SystemExit(f"error: input {what} not found: {path}")
    try:
        return np.asarray(iio.imread(path, index=index))
    except Exception as error:  # each imageio plugin raises its own types for a file it cannot decode
        detail = str(error).strip().splitlines()[0][:100] if str(error).strip() else ""
        raise SystemExit(f"error: cannot read input {what} {path} ({type(error).__name__}"
                         f"{': ' + detail if detail else ''})") from None


def load_image(path: str, channels: int, size: tuple[int, int] | None) -> torch.Tensor:
    """-> (1, channels, H, W) in [-1, 1], resized to `size` (H, W) when given."""
    image = read_image_file(path).astype(np.float32) / 255.0
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3:
        raise SystemExit(f"error: {path} is not a single image (pixel array of shape {image.shape})")
    image = torch.from_numpy(image[..., :3]).permute(2, 0, 1)[None]  # (1, c, H, W)
    if image.shape[1] != channels:
        image = image.mean(1, keepdim=True).repeat(1, channels, 1, 1)
    if size:
        image = torch.nn.functional.interpolate(image, size=size, mode="bicubic", align_corners=False)
    return image.clamp(0, 1) * 2.0 - 1.0


def sv3d_camera(num_frames: int, elevation_deg: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Upstream's default orbit: evenly spaced azimuths relative to the last (input) view."""
    azimuths = torch.linspace(0, 2 * np.pi, num_frames + 1)[1:] % (2 * np.pi)
    polars = torch.full((num_frames,), np.deg2rad(90.0 - elevation_deg))
    return polars, azimuths


def input_keys(engine) -> set[str]:
    return {e.input_key for e in engine.conditioner.embedders if e.input_key is not None}


def sample_video(engine, image: torch.Tensor, num_frames: int, args) -> torch.Tensor:
    """-> ((chunks t), C, H, W) frames in [-1, 1]: args.chunks chained chunks (1: one clip)."""
    keys = input_keys(engine)
    polars, azimuths = sv3d_camera(num_frames, args.elevation_deg) if "azimuths_rad" in keys else (None, None)
    batch = make_video_batch(
        image.to(engine.device), num_frames,
        fps_id=args.fps_id if "fps_id" in keys else None,
        motion_bucket_id=args.motion_bucket_id if "motion_bucket_id" in keys else None,
        cond_aug=args.cond_aug, polars_rad=polars, azimuths_rad=azimuths,
        generator=torch.Generator().manual_seed(args.seed))
    batch = {k: v.to(engine.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    engine.en_and_decode_n_samples_a_time = args.decoding_t

    def sample_chunk(chunk: dict, index: int) -> torch.Tensor:  # -> (1, t, C, H, W)
        c, uc = engine.conditioner.get_unconditional_conditioning(
            chunk, force_uc_zero_embeddings=[k for k in IMAGE_COND_KEYS if k in keys])
        if "concat" not in c:
            raise SystemExit("error: the model has no concat conditioning to take the latent size from")
        shape = (engine.model.diffusion_model.out_channels, *c["concat"].shape[-2:])
        if index == 0:
            torch.manual_seed(args.seed)
        latents = engine.sample(c, uc=uc, batch_size=num_frames, shape=shape, num_video_frames=num_frames)
        return engine.decode_first_stage(latents, num_video_frames=num_frames)[None]

    if args.chunks < 1:
        raise SystemExit(f"error: --chunks must be >= 1, got {args.chunks}")
    with torch.no_grad():  # later chunks' cond_aug noise: its own stream, so chunk 1 is the same for any --chunks
        chunks, _ = run_chain(sample_chunk, batch, args.chunks,
                              last_frame_recondition(generator=torch.Generator().manual_seed(args.seed + 1)))
    return torch.cat(chunks, dim=1)[0]  # ((chunks t), C, H, W)


def main(argv: list[str] | None = None) -> str:
    args, dotlist = get_parser().parse_known_args(argv)
    # every SVD-family model takes RGB frames; a bad input or --size fails before the model is built
    image = load_image(args.input, 3, parse_size(args.size) if args.size else None)
    config, num_frames = configure(load_configs([args.config]), args, dotlist)
    engine = instantiate_from_config(config.model).to(args.device).eval()
    frames = sample_video(engine, image, num_frames, args)
    os.makedirs(args.output, exist_ok=True)
    stem = os.path.splitext(os.path.basename(args.input))[0]
    path = os.path.join(args.output, f"{stem}_{frames.shape[0]}f.{args.format}")
    save_video_grid(frames.cpu(), frames.shape[0], path, fps=args.fps)
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
