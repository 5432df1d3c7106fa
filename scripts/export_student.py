"""Export a distilled student (or any DiffusionEngine run) as an upstream-style checkpoint.

    python scripts/export_student.py logs/<run dir> --out students/svd_4step
    python scripts/export_student.py logs/<run dir>/checkpoints/last.ckpt --out out/ --no-ema

Writes `<out>/model.safetensors` with upstream's key names (`model.diffusion_model.*`,
`conditioner.*`, `first_stage_model.*`; EMA weights of the generator by default) and
`<out>/inference.yaml`, a plain `DiffusionEngine` config with the run's few-step sampler, so the
student samples through `scripts/sampling/simple_video_sample.py` and its weights load anywhere
upstream SVD weights load. Roles that exist only for training (teacher, critic, EMA buffers,
GAN heads) are left out.
"""
from __future__ import annotations

import argparse
import glob
import inspect
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import sgm  # noqa: E402,F401
from sgm.io.checkpoint import read_state_dict  # noqa: E402

INFERENCE_TARGET = "sgm.models.diffusion.DiffusionEngine"
KEPT_PREFIXES = ("model.diffusion_model.", "conditioner.", "first_stage_model.")


def resolve_run(path: str) -> tuple[str, list[str]]:
    """A run directory or a checkpoint inside one -> (checkpoint, the run's saved configs)."""
    if os.path.isdir(path):
        run_dir, ckpt = path, os.path.join(path, "checkpoints", "last.ckpt")
    else:
        run_dir, ckpt = os.path.dirname(os.path.dirname(os.path.abspath(path))), path
    if not os.path.isfile(ckpt):
        raise SystemExit(f"error: checkpoint not found: {ckpt}")
    configs = sorted(glob.glob(os.path.join(run_dir, "configs", "*-project.yaml")))
    if not configs:
        raise SystemExit(f"error: no saved configs in {run_dir}/configs (is this a main.py run directory?)")
    return ckpt, configs


def student_state_dict(state: dict[str, torch.Tensor], use_ema: bool) -> dict[str, torch.Tensor]:
    """Generator, conditioner and first stage under upstream key names; EMA weights if asked and present."""
    out = {k: v for k, v in state.items() if k.startswith(KEPT_PREFIXES)}
    if not use_ema:
        return out
    ema_keys = [k for k in state if k.startswith("model_ema.")]
    if not ema_keys:
        raise SystemExit("error: the checkpoint has no EMA weights (model_ema.*); export with --no-ema")
    for key in [k for k in out if k.startswith("model.")]:
        shadow = "model_ema." + key[len("model."):].replace(".", "")  # LitEma's naming
        if shadow in state:
            out[key] = state[shadow].to(out[key].dtype)
    return out


def inference_config(run_config):
    """The run's model section as a plain DiffusionEngine config (training-only keys dropped)."""
    from omegaconf import OmegaConf

    from sgm.models.diffusion import DiffusionEngine

    allowed = set(inspect.signature(DiffusionEngine.__init__).parameters) - {"self"}
    params = OmegaConf.to_container(run_config.model.params, resolve=True)
    kept = {k: v for k, v in params.items() if k in allowed and k not in ("ckpt_path", "loss_fn_config",
                                                                          "use_ema", "ema_decay_rate")}
    return OmegaConf.create({"model": {"target": INFERENCE_TARGET, "params": kept}})


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="run directory or a checkpoint inside its checkpoints/")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--no-ema", dest="ema", action="store_false", help="export the live weights, not EMA")
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float16",
                        help="dtype of the written tensors (released SVD files are float16)")
    args = parser.parse_args(argv)

    from omegaconf import OmegaConf
    from safetensors.torch import save_file

    from sgm.config import load_configs

    ckpt, configs = resolve_run(args.run)
    run_config = load_configs(configs)
    state = read_state_dict(ckpt)
    weights = student_state_dict(state, use_ema=args.ema)
    dtype = getattr(torch, args.dtype)
    weights = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in weights.items()}
    os.makedirs(args.out, exist_ok=True)
    weights_path = os.path.join(args.out, "model.safetensors")
    save_file(weights, weights_path, metadata={"source": os.path.abspath(ckpt), "ema": str(args.ema)})
    OmegaConf.save(inference_config(run_config), os.path.join(args.out, "inference.yaml"))
    print(f"wrote {weights_path} ({len(weights)} tensors, {'EMA' if args.ema else 'live'} "
          f"generator weights) and {os.path.join(args.out, 'inference.yaml')}")
    return weights_path


if __name__ == "__main__":
    main()
