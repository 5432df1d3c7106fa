"""Precompute the conditioning embeddings (CLIP image embedding, VAE latent of the noise-augmented
conditioning frame) of a run's image folder, once, into safetensors shards with a manifest:

    python scripts/cache_conditioning.py --config configs/dmd/dmd_svd.yaml --out cache/first_frames \
        model.params.teacher_ckpt_path=checkpoints/svd.safetensors data.params.folder=data/first_frames

then train with the cache (same config, the data module swapped; it refuses a cache built for other
weights, another size or cond_aug law, or a changed folder):

    python main.py --base configs/dmd/dmd_svd.yaml ... \
        data.target=sgm.data.conditioning_cache.CachedImageFolderDataModule \
        data.params.cache=cache/first_frames 'data.params.ckpt_path=${model.params.teacher_ckpt_path}'

Only the conditioner is built (weights `conditioner.*` of the checkpoint: `--ckpt`, else the config's
model.params.ckpt_path or teacher_ckpt_path). Folder, size and cond_aug come from the config's data
section. See sgm/data/conditioning_cache.py for what is stored.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import sgm  # noqa: E402,F401


def load_conditioner(config, ckpt_path: str, device: str):
    from safetensors.torch import load_file

    from sgm.util import instantiate_from_config

    conditioner = instantiate_from_config(config.model.params.conditioner_config)
    weights = {k[len("conditioner."):]: v for k, v in load_file(ckpt_path).items() if k.startswith("conditioner.")}
    result = conditioner.load_state_dict(weights, strict=False)
    if result.missing_keys:
        raise SystemExit(f"error: {ckpt_path} lacks conditioner weights: {', '.join(result.missing_keys[:5])} ...")
    return conditioner.eval().to(device)


def main(argv: list[str] | None = None) -> dict:
    from sgm.config import load_configs
    from sgm.data.conditioning_cache import build_cache

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", nargs="+", required=True, help="the run's config files (merged left to right)")
    p.add_argument("--out", required=True, help="cache folder")
    p.add_argument("--ckpt", default=None, help=".safetensors weights (default: from the config)")
    p.add_argument("--variants", type=int, default=4, help="cond_aug noise draws per image")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shard_size", type=int, default=256)
    p.add_argument("--device", default="cpu")
    args, overrides = p.parse_known_args(argv)
    config = load_configs(args.config, overrides)
    params = config.model.params
    ckpt = args.ckpt or params.get("ckpt_path") or params.get("teacher_ckpt_path")
    if not ckpt:
        raise SystemExit("error: no weights: give --ckpt or set model.params.ckpt_path / teacher_ckpt_path")
    data = config.data.params
    start = time.time()
    manifest = build_cache(load_conditioner(config, ckpt, args.device), ckpt, data.folder,
                           (int(data.size[0]), int(data.size[1])), args.out, cond_aug=data.get("cond_aug", 0.02),
                           variants=args.variants, seed=args.seed, shard_size=args.shard_size, device=args.device)
    print(f"cached {len(manifest['images'])} images x {args.variants} draws ({', '.join(manifest['embedders'])}) "
          f"in {time.time() - start:.1f} s to {args.out}")
    return manifest


if __name__ == "__main__":
    main()
