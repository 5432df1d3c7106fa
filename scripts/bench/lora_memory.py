"""Full vs LoRA DMD on the tiny video config: trainable parameters, optimizer state and peak memory.

    python scripts/bench/lora_memory.py [--steps 2] [--batch 4] [--rank 8]

Each variant runs in its own subprocess (peak RSS, `resource.getrusage(...).ru_maxrss`, is per process):
build the data and one batch, build DMDEngine from configs/dmd/moving_digits_dmd.yaml (the committed teacher
initialises every role), then `--steps` generator + critic updates on one batch. "build peak" is how far the
engine build raised the process's peak RSS above the baseline (imports, peft and every config target
included, and the data); "RSS built" and "peak RSS" are
the process's peaks after the build and after the steps. Figures for the README, no thresholds.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = "configs/dmd/moving_digits_dmd.yaml"
TARGETS = "[to_q,to_k,to_v,to_out.0]"
VARIANTS = {
    "full": [],
    "lora generator + critic": ["model.params.lora.generator.rank={rank}", "model.params.lora.generator.alpha={rank}",
                                f"model.params.lora.generator.target_modules={TARGETS}",
                                "model.params.lora.critic.rank={rank}", "model.params.lora.critic.alpha={rank}",
                                f"model.params.lora.critic.target_modules={TARGETS}"],
    "lora generator + critic on the teacher": [
        "model.params.lora.generator.rank={rank}", "model.params.lora.generator.alpha={rank}",
        f"model.params.lora.generator.target_modules={TARGETS}", "model.params.lora.critic.rank={rank}",
        "model.params.lora.critic.alpha={rank}", f"model.params.lora.critic.target_modules={TARGETS}",
        "model.params.lora.critic_on_teacher=true"],
}


def measure(overrides: list[str], steps: int, batch_size: int) -> dict:
    """In this process: build, train `steps` iterations, -> the figures."""
    import resource

    sys.path.insert(0, ROOT)
    import sgm  # noqa: F401
    import torch

    from sgm.config import load_configs
    from sgm.util import instantiate_from_config

    torch.manual_seed(0)
    config = load_configs([os.path.join(ROOT, CONFIG)], [f"data.params.batch_size={batch_size}", *overrides])
    data = instantiate_from_config(config.data)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    import_code(config.model)  # every variant imports the same code before the baseline
    rss_before_build = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # imports + data: the baseline
    engine = instantiate_from_config(config.model, learning_rate=1e-4)
    rss_built = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    optimizers, _ = engine.configure_optimizers()
    for _ in range(steps):
        for opt, loss_fn in zip(optimizers, (engine.generator_loss, engine.critic_loss)):
            opt.zero_grad()
            loss, _ = loss_fn(batch)
            loss.backward()
            opt.step()
    state = sum(t.numel() for opt in optimizers for s in opt.state.values() for t in s.values()
                if torch.is_tensor(t) and t.ndim > 0)
    count = lambda params: sum(p.numel() for p in params)  # noqa: E731
    return {"generator_trainable": count(engine.generator_parameters()),
            "critic_trainable": count(engine.critic_parameters()),
            "all_params": count(engine.parameters()),  # shared modules counted once
            "optimizer_state": state,
            "build_peak_mib": (rss_built - rss_before_build) / 1024,  # the engine build's own peak
            "rss_built_mib": rss_built / 1024, "rss_peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def import_code(node) -> None:
    """Import peft (LoRA variants need it, the full one does not) and every `target` class in `node`, so the
    build peak counts tensors, not the code the build would import."""
    import peft  # noqa: F401
    from omegaconf import DictConfig, ListConfig

    from sgm.util import get_obj_from_str

    if isinstance(node, DictConfig):
        if isinstance(node.get("target"), str) and "." in node.target:  # not a placeholder
            get_obj_from_str(node.target)
        for value in node.values():
            import_code(value)
    elif isinstance(node, ListConfig):
        for value in node:
            import_code(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(measure(json.loads(args.child), args.steps, args.batch)))
        return
    print("| variant | parameters held | generator trainable | critic trainable | optimizer state (floats) "
          "| build peak (MiB) | RSS built (MiB) | peak RSS (MiB) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, overrides in VARIANTS.items():
        overrides = [o.format(rank=args.rank) for o in overrides]
        out = subprocess.run([sys.executable, __file__, "--steps", str(args.steps), "--batch", str(args.batch),
                              "--child", json.dumps(overrides)], capture_output=True, text=True, cwd=ROOT)
        if out.returncode:
            raise SystemExit(out.stderr[-2000:])
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"| {name} | {r['all_params']:,} | {r['generator_trainable']:,} | {r['critic_trainable']:,} | {r['optimizer_state']:,} "
              f"| {r['build_peak_mib']:.0f} | {r['rss_built_mib']:.0f} | {r['rss_peak_mib']:.0f} |")


if __name__ == "__main__":
    main()
