"""Sample a teacher's deterministic ODE and save (noise, x0) pairs for DMD's regression term.

    python scripts/generate_ode_pairs.py --config configs/example_training/toy/digits_cond.yaml \
        --ckpt logs/<teacher run>/checkpoints/last.ckpt --num 2048 --out ode_pairs.safetensors --cond_keys cls

Conditions come from the config's data section (one pass over its training batches, repeated as
needed). Use the pairs with `sgm.modules.distillation.ode_pairs.ODEPairsDataModule` as the data of a
DMD run with a `model.params.terms.regression` term and `model.params.inputs.latent_shape` set (the pairs
carry no images). The teacher's sampler must start at the generator's first sigma (sigma_max).
The pairs are written as safetensors, atomically; the data module also reads .pt files written before.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import sgm  # noqa: E402,F401


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", nargs="+", required=True, help="teacher config(s), merged left to right")
    parser.add_argument("--ckpt", required=True, help="teacher weights (.ckpt / .safetensors)")
    parser.add_argument("--num", type=int, default=1024, help="number of pairs")
    parser.add_argument("--out", required=True, help="output .safetensors file")
    parser.add_argument("--cond_keys", nargs="+", default=["cls"], help="batch keys stored with the pairs")
    parser.add_argument("--num_steps", type=int, default=None, help="override the sampler's step count")
    parser.add_argument("--seed", type=int, default=0)
    args, overrides = parser.parse_known_args(argv)
    if not args.out.endswith(".safetensors"):
        raise SystemExit(f"error: --out must name a .safetensors file, got {args.out}")

    import torch

    from sgm.config import load_configs
    from sgm.io.checkpoint import atomic_save_safetensors
    from sgm.modules.distillation.ode_pairs import generate_ode_pairs
    from sgm.util import instantiate_from_config

    torch.manual_seed(args.seed)
    config = load_configs(args.config, [*overrides, f"model.params.ckpt_path={args.ckpt}"])
    engine = instantiate_from_config(config.model).eval()
    if args.num_steps is not None:
        engine.sampler.num_steps = args.num_steps
    data = instantiate_from_config(config.data)
    data.setup("fit")
    pairs = generate_ode_pairs(engine, data.train_dataloader(), args.num, args.cond_keys)
    atomic_save_safetensors(pairs, args.out)
    print(f"wrote {len(pairs['ode_noise'])} pairs to {args.out}: " + ", ".join(
        f"{k} {tuple(v.shape)}" for k, v in pairs.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
