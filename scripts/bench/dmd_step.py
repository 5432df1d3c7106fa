"""DMDEngine's iteration time against a minimal hand-written DMD2 step, and the full-size SVD DMD step's memory.

    OMP_NUM_THREADS=1 python scripts/bench/dmd_step.py [--iterations 10] [--warmup 5]

Timing, per network set (the digits U-Nets of configs/dmd/digits_dmd.yaml at 4 generator steps; the tiny
video model of configs/dmd/moving_digits_dmd.yaml): one engine is built, and on its very networks
- `engine`: DMDEngine.training_step through a Lightning Trainer (what main.py runs: both optimisers,
  clipping, the non-finite guard, EMA, logging), with `critic.reuse_generator_sample` off and on;
- `minimal DMD2`: `minimal_dmd2` below, ~60 lines: the generator step is the DMD gradient from the teacher's
  and the critic's x0 at one random sigma (backward simulation as the engine's), the critic step the
  denoising loss on the generator's detached sample (the generator step's own on generator steps).
Seconds per iteration are this process's CPU seconds (it runs on one thread; CPU time holds on a machine
other jobs share), the mean over `--iterations` (a multiple of the generator interval, 5) after `--warmup`,
on one fixed batch, weights random (init.allow_random_teacher); the ratio is engine / minimal.

Memory: configs/dmd/dmd_svd.yaml built on the meta device (no weights, no download): parameters per role
times their bytes (teacher bf16, the rest fp32), gradients and AdamW's two moments for the trainable roles,
and the activations one U-Net forward with grad keeps for backward (the generator's exit step and the critic's
denoising forward each hold one): autograd's saved tensors counted in a meta-device forward of the SVD
U-Net at one clip of the config's frames and latent size, with the config's activation checkpointing and
without. fp32 activations; under bf16-mixed most are bf16 (about half).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

import sgm  # noqa: E402,F401  (torchvision shim before Lightning)
import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

CASES = {  # name -> (configs, overrides)
    "digits U-Nets, 4-step": (["configs/dmd/digits_dmd.yaml", "configs/dmd/digits_dmd_4step.yaml"],
                              ["data.params.batch_size=32"]),
    "tiny video (moving digits)": (["configs/dmd/moving_digits_dmd.yaml"], ["data.params.batch_size=4"]),
}
RANDOM = ["model.params.teacher_ckpt_path=null", "model.params.init.allow_random_teacher=True"]
SVD_CONFIG = "configs/dmd/dmd_svd.yaml"
GIB = 2**30


def minimal_dmd2(engine, batch: dict, iterations: int, interval: int = 5, clip: float = 10.0) -> list[float]:
    """DMD2 written out on the engine's networks -> seconds of each iteration."""
    gen_params = [p for p in engine.model.parameters() if p.requires_grad]
    critic_params = [p for p in engine.fake_score.parameters() if p.requires_grad]
    gen_opt = torch.optim.AdamW(gen_params, lr=1e-5, betas=(0.0, 0.999), weight_decay=0.0)
    critic_opt = torch.optim.AdamW(critic_params, lr=1e-5, betas=(0.0, 0.999), weight_decay=0.0)
    sigmas = engine.sampler.generator_sigmas().float()  # (K,) the generator's schedule
    seconds = []
    for it in range(iterations):
        start = time.process_time()
        inputs = engine.prepare_inputs(batch)  # conditioner, latent shape, frames per clip
        c, kw, rows, frames = inputs.cond, inputs.model_kwargs, inputs.shape[0], inputs.num_frames

        def per_clip(values: torch.Tensor) -> torch.Tensor:  # (B,) -> (N,), one value per clip
            return values.repeat_interleave(frames)

        def bcast(s: torch.Tensor) -> torch.Tensor:
            return s.view(-1, *[1] * (len(inputs.shape) - 1))

        def generate(grad: bool) -> torch.Tensor:  # backward simulation: grad only through the exit step
            k = int(torch.randint(len(sigmas), ()))
            x = torch.randn(inputs.shape) * math.sqrt(1 + float(sigmas[0]) ** 2)
            with torch.no_grad():
                for i in range(k):
                    x0 = engine.denoiser(engine.model, x, sigmas[i].expand(rows), c, **kw)
                    x = x0 + sigmas[i + 1] * torch.randn_like(x0)
            with torch.set_grad_enabled(grad):
                return engine.denoiser(engine.model, x, sigmas[k].expand(rows), c, **kw)  # (N, ...)

        if it % interval == 0:  # generator step: DMD gradient (DMD eq. 7) at one random sigma per clip
            x0 = generate(grad=True)
            sigma = per_clip(torch.exp(torch.empty(rows // frames).uniform_(math.log(0.02), math.log(80.0))))
            x_t = x0.detach() + bcast(sigma) * torch.randn_like(x0)
            with torch.no_grad():
                pred_real = engine.real_score(x_t, sigma, c, uc=inputs.uc, **kw)  # teacher, with CFG
                pred_fake = engine.fake_score(x_t, sigma, c, **kw)  # critic
                normalizer = (x0 - pred_real).abs().flatten(1).mean(1).clamp_min(1e-8)  # (N,)
                grad = (pred_fake - pred_real) / bcast(normalizer)
            loss = 0.5 * torch.nn.functional.mse_loss(x0, (x0 - grad).detach())
            gen_opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(gen_params, clip)
            gen_opt.step()
            sample = x0.detach()  # DMD2: the critic trains on this step's sample
        else:
            sample = generate(grad=False)
        sigma = per_clip(torch.exp(torch.randn(rows // frames) * 1.2 - 1.2))  # critic step: EDM log-normal
        noised = sample + bcast(sigma) * torch.randn_like(sample)
        weight = (sigma**2 + 0.25) / (sigma * 0.5) ** 2  # EDM weighting, sigma_data 0.5
        pred = engine.fake_score(noised, sigma, c, **kw)
        loss = (bcast(weight) * (pred - sample) ** 2).mean()
        critic_opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(critic_params, clip)
        critic_opt.step()
        seconds.append(time.process_time() - start)
    return seconds


def engine_seconds(engine, batch: dict, iterations: int) -> list[float]:
    """DMDEngine.training_step through a Lightning Trainer on one repeated batch -> seconds per iteration."""
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader

    class Timer(pl.Callback):
        def __init__(self):
            self.seconds, self.start = [], 0.0

        def on_train_batch_start(self, *args):
            self.start = time.process_time()

        def on_train_batch_end(self, *args):
            self.seconds.append(time.process_time() - self.start)

    timer = Timer()
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=iterations, logger=False, callbacks=[timer],
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0)
    trainer.fit(engine, DataLoader([batch] * iterations, batch_size=None))
    return timer.seconds


def build(configs: list[str], overrides: list[str]):
    from sgm.config import load_configs
    from sgm.util import instantiate_from_config

    config = load_configs([os.path.join(ROOT, c) for c in configs], [*overrides, *RANDOM])
    data = instantiate_from_config(config.data)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    return config, batch


def timing(args: argparse.Namespace) -> list[str]:
    from sgm.util import instantiate_from_config

    lines = ["| networks | batch (samples / clips) | engine, fresh critic rollout (CPU s/it) | engine, reused sample (CPU s/it) | "
             "minimal DMD2 (CPU s/it) | engine / minimal (reused) |", "|---|---:|---:|---:|---:|---:|"]
    for name, (configs, overrides) in CASES.items():
        config, batch = build(configs, overrides)
        total = args.warmup + args.iterations
        means = []
        for reuse in (False, True):
            torch.manual_seed(0)
            OmegaConf.update(config, "model.params.critic.reuse_generator_sample", reuse)
            engine = instantiate_from_config(config.model, learning_rate=1e-5)
            means.append(sum(engine_seconds(engine, batch, total)[args.warmup:]) / args.iterations)
        torch.manual_seed(0)
        engine = instantiate_from_config(config.model, learning_rate=1e-5)
        minimal = sum(minimal_dmd2(engine, batch, total)[args.warmup:]) / args.iterations
        lines.append(f"| {name} | {config.data.params.batch_size} | {means[0]:.3f} | {means[1]:.3f} | {minimal:.3f} | "
                     f"{means[1] / minimal:.2f} |")
        print(lines[-1], flush=True)
    return lines


def saved_activation_bytes(network, x: torch.Tensor, **kwargs) -> int:
    """Bytes of the tensors autograd keeps for backward in one forward with grad (meta tensors)."""
    saved = [0]

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        network(x, **kwargs)
    return saved[0]


def memory(args: argparse.Namespace) -> list[str]:
    from sgm.config import load_configs
    from sgm.util import instantiate_from_config

    config = load_configs([os.path.join(ROOT, SVD_CONFIG)])
    p = config.model.params
    with torch.device("meta"):  # as main.py --dry-run: full size, nothing loaded
        engine = instantiate_from_config(config.model, learning_rate=1e-5)
    count = lambda module: sum(t.numel() for t in module.parameters())  # noqa: E731
    gen, critic = sum(t.numel() for t in engine.generator_parameters()), sum(t.numel() for t in engine.critic_parameters())
    teacher_bytes = sum(t.numel() * t.element_size() for t in engine.real_score.parameters())
    ema = sum(t.numel() for t in engine.model_ema.buffers() if t.is_floating_point() and t.ndim > 0)
    frozen = count(engine.conditioner) + count(engine.first_stage_model)
    rows = [("generator weights (fp32)", count(engine.model), 4 * count(engine.model)),
            ("generator EMA (fp32)", ema, 4 * ema),
            ("teacher weights (bf16)", count(engine.real_score), teacher_bytes),
            ("critic weights (fp32)", count(engine.fake_score), 4 * count(engine.fake_score)),
            ("conditioner + VAE, frozen (fp32)", frozen, 4 * frozen),
            ("gradients, generator + critic (fp32; both kept between steps)", gen + critic, 4 * (gen + critic)),
            ("AdamW moments, generator + critic (2 x fp32)", gen + critic, 8 * (gen + critic))]
    frames = int(config.data.params.num_frames)
    channels, height, width = (int(v) for v in p.inputs.latent_shape)
    net_cfg = p.network_config.params
    activations = {}
    for checkpointing in (True, False):
        overrides = [f"model.params.network_config.params.use_checkpoint={checkpointing}"]
        net_config = load_configs([os.path.join(ROOT, SVD_CONFIG)], overrides).model.params.network_config
        with torch.device("meta"):
            net = instantiate_from_config(net_config)
            x = torch.empty(frames, int(net_cfg.in_channels), height, width)  # latent + concat conditioning
            activations[checkpointing] = saved_activation_bytes(
                net, x, timesteps=torch.empty(frames), context=torch.empty(frames, 1, int(net_cfg.context_dim)),
                y=torch.empty(frames, int(net_cfg.adm_in_channels)), num_video_frames=frames,
                image_only_indicator=torch.zeros(1, frames))
    state = sum(b for _, _, b in rows)
    lines = [f"Full-size SVD DMD step (`{SVD_CONFIG}`, one clip of {frames} frames, latent {channels}x{height}x{width}), "
             "parameter counts from the engine built on the meta device:", "",
             "| component | parameters | GiB |", "|---|---:|---:|"]
    lines += [f"| {name} | {n / 1e6:,.0f} M | {b / GIB:.1f} |" for name, n, b in rows]
    lines += [f"| activations kept for backward, one U-Net forward with grad, checkpointing on (fp32) | | "
              f"{activations[True] / GIB:.1f} |",
              f"| *same without checkpointing (fp32)* | | *{activations[False] / GIB:.1f}* |",
              f"| **total, checkpointing on** | | **{(state + activations[True]) / GIB:.1f}** |"]
    print("\n".join(lines), flush=True)
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=10, help="timed iterations (a multiple of 5)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--skip_timing", action="store_true", help="only the memory estimate")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    lines = [] if args.skip_timing else timing(args) + [""]
    lines += memory(args)
    print("\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
