"""Precompute, once, what the frozen encoders make of a run's data into safetensors shards with a manifest:
the CLIP image embedding and the VAE latent of the noise-augmented conditioning frame and, for a video
folder with --latents, the VAE latents of the target clips.

Image folder (data-free DMD), then train with the data module swapped:

    python scripts/cache_conditioning.py --config configs/dmd/dmd_svd.yaml --out cache/first_frames \
        model.params.teacher_ckpt_path=checkpoints/svd.safetensors data.params.folder=data/first_frames
    python main.py --base configs/dmd/dmd_svd.yaml ... \
        data.target=sgm.data.conditioning_cache.CachedImageFolderDataModule \
        data.params.cache=cache/first_frames 'data.params.ckpt_path=${model.params.teacher_ckpt_path}'

Video folder (fine-tuning; DMD with real clips), K clips per video:

    python scripts/cache_conditioning.py --config configs/example_training/svd_finetune.yaml \
        --out cache/videos --latents --variants 8 data.params.folder=data/videos
    python main.py --base configs/example_training/svd_finetune.yaml data.params.folder=data/videos \
        data.target=sgm.data.conditioning_cache.CachedVideoFolderDataModule \
        data.params.cache=cache/videos 'data.params.ckpt_path=${model.params.ckpt_path}'

The cached data module refuses a cache built for other weights, another size, frame count, frame stride or
law of the draws, or a changed folder. Only the conditioner (weights `conditioner.*`) and, with --latents,
the first stage (`first_stage_model.*`) are built, from `--ckpt`, else the config's model.params.ckpt_path
or teacher_ckpt_path. The data section (a VideoFolderDataModule or subclass: a video cache; else an image
cache) gives folder, size and the laws. See sgm/data/conditioning_cache.py for what is stored.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import sgm  # noqa: E402,F401

CACHE_PARAMS = ("cache", "ckpt_path")  # the cached data modules' own parameters


def load_part(config_node, ckpt_path: str, prefix: str, device: str):
    """Build `config_node` and load the checkpoint's weights under `prefix` (every one it needs)."""
    from safetensors.torch import load_file

    from sgm.util import instantiate_from_config

    part = instantiate_from_config(config_node)
    weights = {k[len(prefix):]: v for k, v in load_file(ckpt_path).items() if k.startswith(prefix)}
    result = part.load_state_dict(weights, strict=False)
    if result.missing_keys:
        raise SystemExit(f"error: {ckpt_path} lacks {prefix}* weights: {', '.join(result.missing_keys[:5])} ...")
    return part.eval().to(device)


def load_conditioner(config, ckpt_path: str, device: str):
    return load_part(config.model.params.conditioner_config, ckpt_path, "conditioner.", device)


def video_clips(config):
    """The config's video folder, scanned (unreadable and short files skipped as in training) -> VideoClips."""
    from sgm.data.video_folder import VideoFolderDataModule

    params = {k: v for k, v in config.data.params.items() if k not in CACHE_PARAMS}
    data = VideoFolderDataModule(**params)
    data.setup("fit")
    return data.train_dataset


def main(argv: list[str] | None = None) -> dict:
    from sgm.config import load_configs
    from sgm.data.conditioning_cache import build_cache, build_video_cache
    from sgm.data.video_folder import VideoFolderDataModule
    from sgm.util import get_obj_from_str

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", nargs="+", required=True, help="the run's config files (merged left to right)")
    p.add_argument("--out", required=True, help="cache folder")
    p.add_argument("--ckpt", default=None, help=".safetensors weights (default: from the config)")
    p.add_argument("--variants", type=int, default=4, help="draws per image (noise) or per video (clip and noise)")
    p.add_argument("--latents", action="store_true", help="video folders: also the target clips' VAE latents")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shard_size", type=int, default=None, help="items per shard (default: 256 images, 16 videos)")
    p.add_argument("--device", default="cpu")
    args, overrides = p.parse_known_args(argv)
    config = load_configs(args.config, overrides)
    params = config.model.params
    ckpt = args.ckpt or params.get("ckpt_path") or params.get("teacher_ckpt_path")
    if not ckpt:
        raise SystemExit("error: no weights: give --ckpt or set model.params.ckpt_path / teacher_ckpt_path")
    videos = issubclass(get_obj_from_str(config.data.target), VideoFolderDataModule)
    if args.latents and not videos:
        raise SystemExit(f"error: --latents caches target clips; data.target {config.data.target} has none")
    data = config.data.params
    conditioner = load_conditioner(config, ckpt, args.device)
    start = time.time()
    if videos:
        first_stage = load_part(params.first_stage_config, ckpt, "first_stage_model.", args.device) if args.latents else None
        manifest = build_video_cache(conditioner, ckpt, video_clips(config), data.folder, args.out, first_stage,
                                     variants=args.variants, seed=args.seed, shard_size=args.shard_size or 16,
                                     device=args.device)
    else:
        manifest = build_cache(conditioner, ckpt, data.folder, (int(data.size[0]), int(data.size[1])), args.out,
                               cond_aug=data.get("cond_aug", 0.02), variants=args.variants, seed=args.seed,
                               shard_size=args.shard_size or 256, device=args.device)
    cached = list(manifest["embedders"]) + (["latents"] if manifest.get("latents") else [])
    print(f"cached {manifest['shards'][-1]['stop']} {manifest['kind']} x {args.variants} draws ({', '.join(cached)}) "
          f"in {time.time() - start:.1f} s to {args.out}")
    return manifest


if __name__ == "__main__":
    main()
