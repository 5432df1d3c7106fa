"""Time per fine-tuning iteration with the encoders live vs from a conditioning cache, on the tiny CPU config.

    python scripts/bench/cache_speed.py [--steps 20] [--batch 8] [--clips 32]

Writes `--clips` moving-digits mp4 clips and their cache (scripts/cache_conditioning.py --latents) into a
temporary folder, builds the engine of configs/example_training/toy/moving_digits_finetune.yaml once and both
data modules (VideoFolderDataModule; CachedVideoFolderDataModule on the cache), then runs `--steps` training
iterations of each, alternating live and cached step by step so that the machine's drift hits both alike. An
iteration is: next batch (decoding included), `training_inputs` (conditioner + first stage, or the cached
rows), the denoising loss, backward, optimiser step. Prints the median seconds of the iteration and of its
`training_inputs` part per mode, and the saving. Figures for the README, no thresholds.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(ROOT, "configs/example_training/toy/moving_digits_finetune.yaml")
CACHED = "sgm.data.conditioning_cache.CachedVideoFolderDataModule"


def forever(loader):
    """The loader's batches, pass after pass."""
    while True:
        yield from loader


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=20, help="timed iterations per mode")
    p.add_argument("--batch", type=int, default=8, help="clips per batch (the config's)")
    p.add_argument("--clips", type=int, default=32, help="mp4 clips written")
    args = p.parse_args(argv)
    sys.path.insert(0, ROOT)
    os.chdir(ROOT)  # the config's weights path is relative to the repository
    import torch

    from scripts.cache_conditioning import main as cache_conditioning
    from scripts.write_moving_digits import main as write_moving_digits
    from sgm.config import load_configs
    from sgm.util import instantiate_from_config

    with tempfile.TemporaryDirectory() as tmp:
        videos, cache = os.path.join(tmp, "videos"), os.path.join(tmp, "cache")
        write_moving_digits([videos, "--clips", str(args.clips)])
        common = [f"data.params.folder={videos}", f"data.params.batch_size={args.batch}"]
        cache_conditioning(["--config", CONFIG, "--out", cache, "--latents", *common])
        swap = [f"data.target={CACHED}", f"data.params.cache={cache}", "data.params.ckpt_path=${model.params.ckpt_path}"]
        torch.manual_seed(0)
        engine = instantiate_from_config(load_configs([CONFIG], common).model, learning_rate=1e-4)
        optimizer = engine.configure_optimizers()
        optimizer = optimizer[0][0] if isinstance(optimizer, tuple) else optimizer
        batches = {}
        for mode, overrides in (("live", common), ("cached", common + swap)):
            data = instantiate_from_config(load_configs([CONFIG], overrides).data)
            data.setup("fit")
            batches[mode] = forever(data.train_dataloader())
        times = {mode: {"iteration": [], "training_inputs": []} for mode in batches}
        for step in range(args.steps + 1):  # step 0 warms both up, not counted
            for mode, loader in batches.items():
                start = time.perf_counter()
                batch = next(loader)
                inputs_start = time.perf_counter()
                inputs = engine.training_inputs(batch)
                inputs_time = time.perf_counter() - inputs_start
                loss = engine(inputs).mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                if step > 0:
                    times[mode]["iteration"].append(time.perf_counter() - start)
                    times[mode]["training_inputs"].append(inputs_time)
    result = {mode: {part: statistics.median(values) for part, values in parts.items()} for mode, parts in times.items()}
    saved = result["live"]["iteration"] - result["cached"]["iteration"]
    for mode, parts in result.items():
        print(f"{mode:7s} iteration {parts['iteration'] * 1e3:8.1f} ms   training_inputs "
              f"{parts['training_inputs'] * 1e3:7.1f} ms   (median of {args.steps}, batch {args.batch})")
    print(f"saved per iteration: {saved * 1e3:.1f} ms ({100 * saved / result['live']['iteration']:.0f}%), "
          f"training_inputs {1e3 * (result['live']['training_inputs'] - result['cached']['training_inputs']):.1f} ms")
    return result


if __name__ == "__main__":
    main()
