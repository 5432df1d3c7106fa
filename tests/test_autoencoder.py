"""First-stage autoencoders: upstream key layout, golden numerics, distribution maths, contract."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file
from torch import nn

from sgm.models.autoencoder import (
    AutoencoderKL,
    AutoencoderKLModeOnly,
    AutoencodingEngine,
    IdentityFirstStage,
)
from sgm.modules.autoencoding.regularizers import DiagonalGaussianRegularizer, IdentityRegularizer
from sgm.modules.diffusionmodules.model import AttnBlock, Decoder, Encoder, make_attn
from sgm.modules.distributions.distributions import DiagonalGaussianDistribution
from sgm.util import ConfigError, instantiate_from_config

DATA = Path(__file__).parent / "data"

TINY_DDCONFIG = {
    "attn_type": "vanilla-xformers",
    "double_z": True,
    "z_channels": 4,
    "resolution": 16,
    "in_channels": 3,
    "out_ch": 3,
    "ch": 32,
    "ch_mult": [1, 2],
    "num_res_blocks": 1,
    "attn_resolutions": [8],
    "dropout": 0.0,
}


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).abs().max() / expected.abs().max()).item()


def load_golden(name: str) -> tuple[dict, dict[str, torch.Tensor]]:
    entry = json.loads((DATA / "golden" / "golden.json").read_text())[name]
    return entry, load_file(str(DATA / "golden" / entry["weights_file"]))


def manifest_entries(name: str, prefix: str) -> dict[str, list[int]]:
    state_dict = json.loads((DATA / "manifests" / f"{name}.json").read_text())["state_dict"]
    return {key[len(prefix):]: shape for key, shape in state_dict.items() if key.startswith(prefix)}


def model_params(name: str):
    return OmegaConf.load(DATA / "configs" / f"{name}.yaml").model.params


def shapes(module: nn.Module) -> dict[str, list[int]]:
    return {key: list(value.shape) for key, value in module.state_dict().items()}


# --- structure: state-dict keys and shapes of the released configs (meta device) ---------------


@pytest.mark.parametrize("config_name", ["svd", "svd_image_decoder", "sv3d_u"])
def test_first_stage_matches_upstream_manifest(config_name):
    with torch.device("meta"):
        first_stage = instantiate_from_config(model_params(config_name).first_stage_config)
    assert shapes(first_stage) == manifest_entries(config_name, "first_stage_model.")


def test_conditioning_vae_matches_upstream_manifest():
    embedder = model_params("svd").conditioner_config.params.emb_models[3]
    with torch.device("meta"):
        vae = instantiate_from_config(embedder.params.encoder_config)
    assert isinstance(vae, AutoencoderKLModeOnly)
    assert shapes(vae) == manifest_entries("svd", "conditioner.embedders.3.encoder.")


def test_image_decoder_parameter_count_matches_upstream():
    with torch.device("meta"):
        first_stage = instantiate_from_config(model_params("sv3d_u").first_stage_config)
    assert sum(p.numel() for p in first_stage.decoder.parameters()) == 49_490_179


# --- numerics -----------------------------------------------------------------------------------


def test_image_decoder_matches_golden():
    entry, tensors = load_golden("image_decoder_tiny")
    decoder = instantiate_from_config(entry["config"]).eval()
    weights = {key.removeprefix("model."): t for key, t in tensors.items() if key.startswith("model.")}
    decoder.load_state_dict(weights, strict=True)
    with torch.no_grad():
        out = decoder(tensors["in.z"])
    assert list(out.shape) == entry["out_shape"]
    assert relative_error(out, tensors["out"]) < 1e-5


def test_attention_block_is_single_head_softmax_attention():
    block = AttnBlock(32).eval()
    x = torch.randn(2, 32, 4, 4)
    h = block.norm(x)
    q, k, v = (conv(h).flatten(2) for conv in (block.q, block.k, block.v))  # (N, C, HW)
    weights = torch.softmax(q.transpose(1, 2) @ k / math.sqrt(32), dim=-1)  # (N, HW, HW)
    expected = x + block.proj_out((v @ weights.transpose(1, 2)).reshape(2, 32, 4, 4))
    torch.testing.assert_close(block(x), expected, rtol=1e-5, atol=1e-5)


# --- distribution and regularizers --------------------------------------------------------------


def test_distribution_matches_torch_normal():
    moments = torch.randn(3, 8, 4, 4)
    posterior = DiagonalGaussianDistribution(moments)
    mean, logvar = moments[:, :4], moments[:, 4:]
    reference = torch.distributions.Normal(mean, torch.exp(0.5 * logvar))
    standard = torch.distributions.Normal(torch.zeros_like(mean), torch.ones_like(mean))
    torch.testing.assert_close(posterior.mode(), mean)
    expected_kl = torch.distributions.kl_divergence(reference, standard).sum(dim=(1, 2, 3))
    torch.testing.assert_close(posterior.kl(), expected_kl)
    sample = torch.randn(3, 4, 4, 4)
    torch.testing.assert_close(posterior.nll(sample), -reference.log_prob(sample).sum(dim=(1, 2, 3)))
    other = DiagonalGaussianDistribution(torch.randn(3, 8, 4, 4))
    other_reference = torch.distributions.Normal(other.mean, other.std)
    torch.testing.assert_close(
        posterior.kl(other), torch.distributions.kl_divergence(reference, other_reference).sum(dim=(1, 2, 3))
    )


def test_distribution_sample_statistics_and_logvar_clamp():
    mean, logvar = torch.full((1, 1, 200, 200), 2.0), torch.full((1, 1, 200, 200), math.log(0.25))
    moments = torch.cat([mean, logvar], dim=1)
    sample = DiagonalGaussianDistribution(moments).sample(generator=torch.Generator().manual_seed(0))
    assert abs(sample.mean().item() - 2.0) < 0.01
    assert abs(sample.std().item() - 0.5) < 0.01
    extreme = DiagonalGaussianDistribution(torch.tensor([[0.0, 100.0], [0.0, -100.0]]))
    assert extreme.logvar.flatten().tolist() == [20.0, -30.0]


def test_distribution_rejects_odd_channel_count():
    with pytest.raises(ValueError, match="even"):
        DiagonalGaussianDistribution(torch.randn(2, 3, 4, 4))


def test_gaussian_regularizer_sample_and_mode():
    moments = torch.randn(2, 8, 4, 4)
    mean = moments[:, :4]
    z_mode, log = DiagonalGaussianRegularizer(sample=False)(moments)
    torch.testing.assert_close(z_mode, mean)
    torch.testing.assert_close(log["kl_loss"], DiagonalGaussianDistribution(moments).kl().mean())
    z_sample, _ = DiagonalGaussianRegularizer()(moments)
    assert z_sample.shape == mean.shape and not torch.allclose(z_sample, mean)
    z, log = IdentityRegularizer()(moments)
    assert z is moments and log == {}


# --- autoencoders -------------------------------------------------------------------------------


def test_kl_autoencoder_round_trip_shapes():
    identity = {"target": "torch.nn.Identity"}
    vae = AutoencoderKL(embed_dim=4, ddconfig=TINY_DDCONFIG, lossconfig=identity).eval()
    x = torch.randn(2, 3, 16, 16)
    z, reg_log = vae.encode(x, return_reg_log=True)
    assert z.shape == (2, 4, 8, 8) and "kl_loss" in reg_log
    assert vae.decode(z).shape == (2, 3, 16, 16)
    z, reconstruction, _ = vae(x)
    assert reconstruction.shape == x.shape
    assert isinstance(vae.encoder.down[1].attn[0], AttnBlock)  # 8×8 level has attention


def test_mode_only_encodes_the_posterior_mean():
    mode_only = AutoencoderKLModeOnly(embed_dim=4, ddconfig=TINY_DDCONFIG).eval()
    sampling = AutoencoderKL(embed_dim=4, ddconfig=TINY_DDCONFIG).eval()
    sampling.load_state_dict(mode_only.state_dict())
    x = torch.randn(1, 3, 16, 16)
    mean = mode_only.quant_conv(mode_only.encoder(x))[:, :4]
    torch.testing.assert_close(mode_only.encode(x), mean)
    assert not torch.allclose(sampling.encode(x), mean)


def test_engine_encoder_decoder_round_trip_shapes():
    ddconfig = dict(TINY_DDCONFIG, attn_type="vanilla")
    engine = AutoencodingEngine(
        encoder_config={"target": "sgm.modules.diffusionmodules.model.Encoder", "params": ddconfig},
        decoder_config={"target": "sgm.modules.diffusionmodules.model.Decoder", "params": ddconfig},
        regularizer_config={"target": "sgm.modules.autoencoding.regularizers.DiagonalGaussianRegularizer"},
        loss_config={"target": "torch.nn.Identity"},
    ).eval()
    z = engine.encode(torch.randn(3, 3, 16, 16))
    assert z.shape == (3, 4, 8, 8)
    assert engine.decode(z, num_video_frames=3).shape == (3, 3, 16, 16)  # image decoder ignores T


def test_identity_first_stage_is_identity_everywhere():
    first_stage = IdentityFirstStage()
    x = torch.randn(4, 1, 8, 8)
    assert first_stage.encode(x) is x
    assert first_stage.encode(x, return_reg_log=True) == (x, {})
    assert first_stage.decode(x, num_video_frames=2) is x
    assert isinstance(first_stage.decoder, nn.Identity) and len(first_stage.state_dict()) == 0


def test_ckpt_path_loads_weights(tmp_path):
    source = AutoencoderKLModeOnly(embed_dim=4, ddconfig=TINY_DDCONFIG)
    path = tmp_path / "vae.safetensors"
    save_file(source.state_dict(), str(path))
    loaded = AutoencoderKLModeOnly(embed_dim=4, ddconfig=TINY_DDCONFIG, ckpt_path=str(path))
    torch.testing.assert_close(loaded.post_quant_conv.weight, source.post_quant_conv.weight)
    with pytest.raises(FileNotFoundError, match="CKPT_PATH"):
        AutoencoderKL(embed_dim=4, ddconfig=TINY_DDCONFIG, ckpt_path="CKPT_PATH")


# --- bad inputs ---------------------------------------------------------------------------------


def test_wrong_channel_counts_give_clear_errors():
    vae = AutoencoderKL(embed_dim=4, ddconfig=TINY_DDCONFIG)
    with pytest.raises(ValueError, match=r"Encoder expects input of shape \(N, 3, H, W\)"):
        vae.encode(torch.randn(1, 4, 16, 16))
    decoder = Decoder(**TINY_DDCONFIG)
    with pytest.raises(ValueError, match="z_channels=4"):
        decoder(torch.randn(1, 8, 8, 8))
    with pytest.raises(ValueError, match="in_channels=3"):
        Encoder(**TINY_DDCONFIG)(torch.randn(16, 16))


def test_config_errors_name_the_problem():
    with pytest.raises(ValueError, match="'linear'"):
        make_attn(32, "linear")
    assert isinstance(make_attn(32, "none"), nn.Identity)
    with pytest.raises(ConfigError, match="lossconfig"):
        AutoencoderKL(embed_dim=4, ddconfig=TINY_DDCONFIG, loss_config={}, lossconfig={})
    with pytest.raises(TypeError, match="attn_resolution"):
        Encoder(**dict(TINY_DDCONFIG, attn_resolution=[]))  # typo is not swallowed
