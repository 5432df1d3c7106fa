"""Export a distilled student (or any DiffusionEngine run) as an upstream-style checkpoint.

    python scripts/export_student.py logs/<run dir> --out students/svd_4step
    python scripts/export_student.py logs/<run dir>/checkpoints/last.ckpt --out out/ --no-ema

Writes `<out>/model.safetensors` with upstream's key names (`model.diffusion_model.*`,
`conditioner.*`, `first_stage_model.*`; EMA weights of the generator by default) and
`<out>/inference.yaml`, a plain `DiffusionEngine` config with the run's few-step sampler, so the
student samples through `scripts/sampling/simple_video_sample.py` and its weights load anywhere
upstream SVD weights load. Roles that exist only for training (teacher, critic, EMA buffers,
GAN heads) are left out.

    python scripts/export_student.py logs/<run dir> --out students/svd_4step_diffusers --format diffusers

writes the generator network alone for diffusers: `config.json` + `diffusion_pytorch_model.safetensors`
(diffusers' key names, sgm/modules/diffusionmodules/diffusers_keys.py), which
`UNetSpatioTemporalConditionModel.from_pretrained(<out>)` loads, and a model card `README.md` with the
student's sigmas and how to sample it with `StableVideoDiffusionPipeline` (`sigmas=`). diffusers itself
is not needed to export.
"""
from __future__ import annotations

import argparse
import glob
import inspect
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import sgm  # noqa: E402,F401
from sgm.io.checkpoint import atomic_save_safetensors, read_state_dict  # noqa: E402

INFERENCE_TARGET = "sgm.models.diffusion.DiffusionEngine"
TIME_ID_EMBEDDER = "sgm.modules.encoders.modules.ConcatTimestepEmbedderND"
V_EDM_SCALING = "sgm.modules.diffusionmodules.denoiser_scaling.VScalingWithEDMcNoise"
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


def merge_generator_lora(weights: dict[str, torch.Tensor], run_config) -> dict[str, torch.Tensor]:
    """A LoRA generator (model.params.lora.generator) folded into plain weights under upstream names."""
    if not any(".lora_" in k for k in weights):
        return weights
    from omegaconf import OmegaConf

    from sgm.modules.distillation.lora import LoRAOptions, merge_lora

    given = OmegaConf.to_container(run_config.model.params.get("lora", {}) or {}, resolve=True).get("generator")
    if given is None:
        raise SystemExit("error: the checkpoint holds LoRA adapters but the run config has no model.params.lora.generator")
    return merge_lora(weights, LoRAOptions(**given).scale)


def inference_config(run_config):
    """The run's model section as a plain DiffusionEngine config (training-only keys dropped)."""
    from omegaconf import OmegaConf

    from sgm.models.diffusion import DiffusionEngine

    allowed = set(inspect.signature(DiffusionEngine.__init__).parameters) - {"self"}
    params = OmegaConf.to_container(run_config.model.params, resolve=True)
    kept = {k: v for k, v in params.items() if k in allowed and k not in ("ckpt_path", "loss_fn_config", "lora",
                                                                          "use_ema", "ema_decay_rate")}
    return OmegaConf.create({"model": {"target": INFERENCE_TARGET, "params": kept}})


def time_id_embed_dim(run_config) -> int:
    """Width of each added-time-id embedding: the outdim of the run's ConcatTimestepEmbedderND embedders."""
    embedders = run_config.model.params.conditioner_config.params.emb_models
    dims = {int(e.params.outdim) for e in embedders if e.target == TIME_ID_EMBEDDER}
    if len(dims) != 1:
        raise SystemExit(f"error: diffusers' added_time_ids need the conditioner's {TIME_ID_EMBEDDER} embedders "
                         f"to share one outdim, found {sorted(dims) or 'none'}")
    return dims.pop()


def student_sigmas(run_config) -> list[float]:
    """The generator's K sigmas (its FewStepSampler schedule), descending."""
    from sgm.util import instantiate_from_config

    sampler = instantiate_from_config(run_config.model.params.sampler_config)
    return [round(float(s), 4) for s in sampler.generator_sigmas()]


def model_card(sigmas: list[float], config: dict, scaling: str, source: str) -> str:
    """README.md of a diffusers export: what the student is and how the SVD pipeline samples it."""
    warning = "" if scaling == V_EDM_SCALING else (
        f"\n**Warning**: this run's denoiser scaling is `{scaling}`; diffusers' SVD pipeline assumes "
        f"`{V_EDM_SCALING}` (v-prediction, c_noise = 0.25 log sigma), so its samples will be wrong.\n")
    return f"""# Distilled SVD student (DMD2), diffusers format

Exported by `scripts/export_student.py --format diffusers` from `{source}`. This folder holds the
U-Net only (`UNetSpatioTemporalConditionModel`, {len(config["block_out_channels"])} levels, widths
{config["block_out_channels"]}); the VAE, image encoder and feature extractor are the teacher's.
{warning}
Student sigmas (the generator's schedule, {len(sigmas)} step{"s" if len(sigmas) > 1 else ""}): `sigmas={sigmas}`

```python
import torch
from diffusers import StableVideoDiffusionPipeline, UNetSpatioTemporalConditionModel
from diffusers.utils import load_image, export_to_video

unet = UNetSpatioTemporalConditionModel.from_pretrained("<this folder>", torch_dtype=torch.float16)
pipe = StableVideoDiffusionPipeline.from_pretrained(
    "<the teacher, e.g. stabilityai/stable-video-diffusion-img2vid>", unet=unet, torch_dtype=torch.float16
).to("cuda")
frames = pipe(
    load_image("first_frame.png"),
    sigmas={sigmas},          # the student's schedule; the scheduler appends the final 0
    min_guidance_scale=1.0,   # DMD bakes the teacher's guidance into the student: no CFG
    max_guidance_scale=1.0,
    fps=7, motion_bucket_id=127, noise_aug_strength=0.02,  # fps_id = fps - 1 inside the pipeline
).frames[0]
export_to_video(frames, "student.mp4", fps=7)
```

- **1 step** (`sigmas=[sigma_0]`): the pipeline's Euler step to sigma = 0 returns the student's x0
  estimate, exactly what our `FewStepSampler` returns.
- **Few steps**: the student was trained on `x_(i+1) = x0_hat(x_i; sigma_i) + sigma_(i+1) * fresh noise`
  (our `FewStepSampler`). The pipeline's `EulerDiscreteScheduler` takes deterministic Euler steps between
  the same sigmas instead, a close but not identical sampler; for the exact one sample with
  `scripts/sampling/simple_video_sample.py` and the `--format sgm` export.
"""


def export_diffusers(run_config, weights: dict[str, torch.Tensor], out: str, source: str) -> str:
    """config.json + diffusion_pytorch_model.safetensors + README.md for diffusers."""
    from omegaconf import OmegaConf

    from sgm.modules.diffusionmodules import diffusers_keys

    network = run_config.model.params.network_config
    if network.target != diffusers_keys.NETWORK_TARGET:
        raise SystemExit(f"error: --format diffusers exports a {diffusers_keys.NETWORK_TARGET}, "
                         f"this run's network is {network.target}")
    params = OmegaConf.to_container(network.params, resolve=True)
    config = diffusers_keys.diffusers_config(params, time_id_embed_dim(run_config))
    prefix = "model.diffusion_model."
    network_weights = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
    mapped = diffusers_keys.to_diffusers(network_weights, diffusers_keys.network_layout(params))
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "diffusion_pytorch_model.safetensors")
    atomic_save_safetensors(mapped, path, metadata={"format": "pt", "source": source})
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    scaling = run_config.model.params.denoiser_config.params.scaling_config.target
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write(model_card(student_sigmas(run_config), config, scaling, source))
    return path


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="run directory or a checkpoint inside its checkpoints/")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--no-ema", dest="ema", action="store_false", help="export the live weights, not EMA")
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float16",
                        help="dtype of the written tensors (released SVD files are float16)")
    parser.add_argument("--format", choices=("sgm", "diffusers"), default="sgm",
                        help="sgm: upstream checkpoint + inference.yaml; diffusers: the U-Net for diffusers")
    args = parser.parse_args(argv)

    from omegaconf import OmegaConf

    from sgm.config import load_configs

    ckpt, configs = resolve_run(args.run)
    run_config = load_configs(configs)
    state = read_state_dict(ckpt)
    weights = merge_generator_lora(student_state_dict(state, use_ema=args.ema), run_config)
    dtype = getattr(torch, args.dtype)
    weights = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in weights.items()}
    if args.format == "diffusers":
        path = export_diffusers(run_config, weights, args.out, os.path.abspath(ckpt))
        print(f"wrote {path}, config.json and README.md (diffusers UNetSpatioTemporalConditionModel)")
        return path
    os.makedirs(args.out, exist_ok=True)
    weights_path = os.path.join(args.out, "model.safetensors")
    atomic_save_safetensors(weights, weights_path, metadata={"source": os.path.abspath(ckpt), "ema": str(args.ema)})
    OmegaConf.save(inference_config(run_config), os.path.join(args.out, "inference.yaml"))
    print(f"wrote {weights_path} ({len(weights)} tensors, {'EMA' if args.ema else 'live'} "
          f"generator weights) and {os.path.join(args.out, 'inference.yaml')}")
    return weights_path


if __name__ == "__main__":
    main()
