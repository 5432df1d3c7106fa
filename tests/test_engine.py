"""DiffusionEngine in-process on a tiny pixel-space model: training step pieces, EMA, optimisers,
checkpoint loading (fp16 safetensors and Lightning .ckpt), clear errors."""
import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import save_file

from sgm.io.checkpoint import CheckpointError
from sgm.models.diffusion import DiffusionEngine
from sgm.util import ConfigError, instantiate_from_config

TINY = {
    "target": "sgm.models.diffusion.DiffusionEngine",
    "params": {
        "use_ema": True,
        "ema_decay_rate": 0.5,
        "denoiser_config": {
            "target": "sgm.modules.diffusionmodules.denoiser.Denoiser",
            "params": {"scaling_config": {"target": "sgm.modules.diffusionmodules.denoiser_scaling.EDMScaling"}},
        },
        "network_config": {
            "target": "sgm.modules.diffusionmodules.openaimodel.UNetModel",
            "params": {"in_channels": 1, "out_channels": 1, "model_channels": 32, "attention_resolutions": [],
                       "num_res_blocks": 1, "channel_mult": [1, 2], "num_head_channels": 32,
                       "num_classes": "sequential", "adm_in_channels": 8},
        },
        "conditioner_config": {
            "target": "sgm.modules.GeneralConditioner",
            "params": {"emb_models": [{"is_trainable": True, "input_key": "cls", "ucg_rate": 0.2,
                                       "target": "sgm.modules.encoders.modules.ClassEmbedder",
                                       "params": {"embed_dim": 8, "n_classes": 10}}]},
        },
        "first_stage_config": {"target": "sgm.models.autoencoder.IdentityFirstStage"},
        "loss_fn_config": {
            "target": "sgm.modules.diffusionmodules.loss.StandardDiffusionLoss",
            "params": {
                "loss_weighting_config": {"target": "sgm.modules.diffusionmodules.loss_weighting.EDMWeighting"},
                "sigma_sampler_config": {"target": "sgm.modules.diffusionmodules.sigma_sampling.EDMSampling"},
            },
        },
        "sampler_config": {
            "target": "sgm.modules.diffusionmodules.sampling.EulerEDMSampler",
            "params": {"num_steps": 3,
                       "discretization_config": {"target": "sgm.modules.diffusionmodules.discretizer.EDMDiscretization"},
                       "guider_config": {"target": "sgm.modules.diffusionmodules.guiders.VanillaCFG",
                                         "params": {"scale": 2.0}}},
        },
        "scheduler_config": {"target": "sgm.lr_scheduler.LambdaLinearScheduler",
                             "params": {"warm_up_steps": [10], "f_start": [0.1], "f_max": [1.0], "f_min": [1.0],
                                        "cycle_lengths": [1000]}},
    },
}


def build(**overrides) -> DiffusionEngine:
    config = OmegaConf.merge(OmegaConf.create(TINY), {"params": overrides})
    return instantiate_from_config(config)


def batch(n=4):
    return {"jpg": torch.randn(n, 1, 8, 8), "cls": torch.arange(n) % 10}


def test_shared_step_gives_a_finite_scalar_loss_with_gradients():
    engine = build()
    loss, logs = engine.shared_step(batch())
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(loss) and "loss" in logs
    assert engine.model.diffusion_model.out[-1].weight.grad is not None
    assert engine.conditioner.embedders[0].embedding.weight.grad is not None  # trainable embedder


def test_optimizer_uses_config_learning_rate_and_scheduler():
    engine = build(learning_rate=2e-3)
    (opt,), (sched,) = engine.configure_optimizers()
    assert opt.param_groups[0]["lr"] == pytest.approx(2e-4)  # f_start 0.1 x 2e-3
    n_embedder = sum(p.numel() for p in engine.conditioner.parameters())
    n_model = sum(p.numel() for p in engine.model.parameters())
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == n_model + n_embedder
    assert sched["interval"] == "step"
    with pytest.raises(ConfigError, match="base_learning_rate"):
        build(optimizer_config={"target": "torch.optim.AdamW", "params": {"lr": 1.0}}).configure_optimizers()


def test_ema_scope_swaps_and_restores_weights():
    engine = build()
    weight = engine.model.diffusion_model.out[-1].weight
    live = weight.detach().clone()
    with torch.no_grad():
        weight.add_(1.0)
    engine.on_train_batch_end()
    with engine.ema_scope():
        inside = weight.detach().clone()
    assert not torch.allclose(inside, live + 1.0) and torch.allclose(weight, live + 1.0)


def test_sample_and_log_images_shapes():
    engine = build().eval()
    logs = engine.log_images(batch(6), N=4)
    assert logs["samples"].shape == (4, 1, 8, 8) and torch.isfinite(logs["samples"]).all()
    assert logs["inputs"].shape == logs["reconstructions"].shape == (4, 1, 8, 8)


def test_missing_input_key_names_the_key():
    with pytest.raises(KeyError, match="batch has no key 'jpg'"):
        build().shared_step({"cls": torch.zeros(2, dtype=torch.long)})


def test_fp16_safetensors_and_lightning_ckpt_load_into_fp32(tmp_path):
    source = build()
    state = {k: v.half() for k, v in source.state_dict().items()}
    path = tmp_path / "weights.safetensors"
    save_file(state, str(path))
    engine = build(ckpt_path=str(path))
    for key, value in engine.state_dict().items():
        if value.is_floating_point():
            assert value.dtype == torch.float32
            assert torch.equal(value, state[key].float()), key
    ckpt = tmp_path / "last.ckpt"
    torch.save({"state_dict": source.state_dict(), "global_step": 3}, ckpt)
    again = build(ckpt_path=str(ckpt))
    assert torch.equal(again.model.diffusion_model.out[-1].weight, source.model.diffusion_model.out[-1].weight)


def test_checkpoint_missing_network_keys_is_one_clear_error(tmp_path):
    state = {k: v for k, v in build().state_dict().items() if "input_blocks.0" not in k}
    path = tmp_path / "partial.safetensors"
    save_file(state, str(path))
    with pytest.raises(CheckpointError, match=r"required keys are missing, e\.g\. model\.diffusion_model\.input_blocks\.0"):
        build(ckpt_path=str(path))


def test_checkpoint_unexpected_and_missing_side_keys_are_reported(tmp_path, capsys):
    state = {k: v for k, v in build().state_dict().items() if not k.startswith("conditioner.")}
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "side.safetensors"
    save_file(state, str(path))
    build(ckpt_path=str(path))
    out = capsys.readouterr().out
    assert "missing keys: conditioner.embedders.0.embedding.weight" in out and "unexpected keys: extra.weight" in out


def test_wrong_shape_and_unknown_format_are_named(tmp_path):
    state = build().state_dict()
    state["model.diffusion_model.out.2.weight"] = torch.zeros(3, 3)
    path = tmp_path / "bad.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    with pytest.raises(CheckpointError, match=r"model\.diffusion_model\.out\.2\.weight: file \(3, 3\)"):
        build(ckpt_path=str(path))
    with pytest.raises(CheckpointError, match="unsupported checkpoint format '.bin'"):
        (tmp_path / "w.bin").write_bytes(b"")
        build(ckpt_path=str(tmp_path / "w.bin"))


def test_video_decode_chunks_hold_whole_clips():
    engine = build(en_and_decode_n_samples_a_time=5)
    assert engine._chunks(12, 3) == 3 and engine._chunks(12, None) == 5 and engine._chunks(12, 4) == 4
