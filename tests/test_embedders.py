"""Embedders: closed-form checks, the CLIP embedder's upstream layout (meta device) and a tiny real
CLIP forward, the VAE-latent embedder with a stand-in encoder and with AutoencoderKLModeOnly."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sgm.modules import GeneralConditioner
from sgm.modules.diffusionmodules.util import timestep_embedding
from sgm.modules.encoders.modules import (
    ClassEmbedder,
    ConcatTimestepEmbedderND,
    FrozenOpenCLIPImageEmbedder,
    FrozenOpenCLIPImagePredictionEmbedder,
    IdentityEncoder,
    VideoPredictionEmbedderWithEncoder,
)

MODULES = "sgm.modules.encoders.modules"
HERE = __name__
SVD_MANIFEST = Path(__file__).parent / "data" / "manifests" / "svd.json"
CLIP_VIT_H_PARAMS = 683_800_065  # UPSTREAM.md §18


# ---------------------------------------------------------------------------------------------
# Small embedders
# ---------------------------------------------------------------------------------------------


def test_concat_timestep_embedder_matches_timestep_embedding():
    embedder = ConcatTimestepEmbedderND(outdim=8)
    assert sum(p.numel() for p in embedder.parameters()) == 0
    x = torch.tensor([0.0, 6.0, 127.0])
    assert torch.equal(embedder(x), timestep_embedding(x, 8))  # (B,) -> (B, outdim)
    pairs = torch.tensor([[576.0, 1024.0], [0.0, 3.0]])  # (B, d) -> (B, d·outdim)
    out = embedder(pairs)
    assert out.shape == (2, 16)
    assert torch.equal(out[:, :8], timestep_embedding(pairs[:, 0], 8))
    assert torch.equal(out[:, 8:], timestep_embedding(pairs[:, 1], 8))
    # Integer inputs (fps_id, motion_bucket_id) embed like their float values.
    assert torch.equal(embedder(torch.tensor([6, 127])), timestep_embedding(torch.tensor([6.0, 127.0]), 8))
    # Closed form at one point: [cos(t f_k), sin(t f_k)], f_k = 10000^(-k/4).
    t, k = 127.0, 1
    value = embedder(torch.tensor([t]))[0, k].item()
    assert math.isclose(value, math.cos(t * 10000 ** (-k / 4)), abs_tol=1e-4)


def test_class_embedder_shapes_and_keys():
    embedder = ClassEmbedder(embed_dim=6, n_classes=10)
    assert list(embedder.state_dict()) == ["embedding.weight"]
    assert embedder(torch.tensor([1, 9])).shape == (2, 6)
    seq = ClassEmbedder(embed_dim=6, n_classes=10, add_sequence_dim=True)
    assert seq(torch.tensor([1, 9])).shape == (2, 1, 6)


def test_identity_encoder():
    x = torch.randn(2, 3)
    assert IdentityEncoder()(x) is x and IdentityEncoder().encode(x) is x


def test_importing_module_does_not_import_open_clip_or_kornia():
    code = (
        "import sys, sgm.modules.encoders.modules; "
        "assert 'open_clip' not in sys.modules and 'kornia' not in sys.modules, sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])


# ---------------------------------------------------------------------------------------------
# CLIP image embedder
# ---------------------------------------------------------------------------------------------


def _svd_clip_entry():  # conditioner entry 0 of the SVD configs (UPSTREAM.md §10.1)
    return {
        "target": f"{MODULES}.FrozenOpenCLIPImagePredictionEmbedder",
        "input_key": "cond_frames_without_noise",
        "is_trainable": False,
        "params": {
            "n_cond_frames": 1,
            "n_copies": 1,
            "open_clip_embedding_config": {
                "target": f"{MODULES}.FrozenOpenCLIPImageEmbedder",
                "params": {"freeze": True},
            },
        },
    }


def _manifest_entries(prefix):
    state_dict = json.loads(SVD_MANIFEST.read_text())["state_dict"]
    return {k: tuple(v) for k, v in state_dict.items() if k.startswith(prefix)}


def test_clip_vit_h_layout_on_meta_matches_svd_manifest():
    pytest.importorskip("open_clip")
    with torch.device("meta"):
        conditioner = GeneralConditioner([_svd_clip_entry()])
    embedder = conditioner.embedders[0]
    clip = embedder.open_clip
    assert isinstance(clip, FrozenOpenCLIPImageEmbedder)
    got = {f"conditioner.{k}": tuple(v.shape) for k, v in conditioner.state_dict().items()}
    assert got == _manifest_entries("conditioner.embedders.0.")
    assert sum(p.numel() for p in embedder.parameters()) == CLIP_VIT_H_PARAMS
    assert all(p.is_meta for p in embedder.parameters())
    assert not hasattr(clip.model, "transformer")  # the text tower is gone, its leftovers stay
    assert clip.mean.shape == (3,) and clip.std.shape == (3,)
    assert not any(k.endswith((".mean", ".std")) for k in conditioner.state_dict())  # non-persistent
    assert clip.device == "cuda"  # recorded only


@pytest.fixture(scope="module")
def tiny_clip_arch(tmp_path_factory):
    """A one-layer ViT registered with open_clip (random init, no download)."""
    open_clip = pytest.importorskip("open_clip")
    config = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 224, "layers": 1, "width": 32, "head_width": 16, "patch_size": 32},
        "text_cfg": {"context_length": 77, "vocab_size": 100, "width": 32, "heads": 2, "layers": 1},
    }
    path = tmp_path_factory.mktemp("open_clip_cfg") / "sgm-test-tiny-vit.json"
    path.write_text(json.dumps(config))
    open_clip.add_model_config(path)
    return "sgm-test-tiny-vit"


def test_tiny_clip_preprocess_and_pooled_output(tiny_clip_arch):
    embedder = FrozenOpenCLIPImageEmbedder(arch=tiny_clip_arch)
    assert not embedder.training and not any(p.requires_grad for p in embedder.parameters())
    # A constant image in [-1, 1] becomes ((v + 1) / 2 - mean) / std at 224 x 224.
    value = 0.5
    pre = embedder.preprocess(torch.full((2, 3, 32, 48), value))
    assert pre.shape == (2, 3, 224, 224)
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073])
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711])
    expected = ((value + 1) / 2 - mean) / std
    assert torch.allclose(pre, expected[None, :, None, None].expand_as(pre), atol=1e-5)
    # Forward: the visual tower's pooled, projected embedding of the preprocessed image.
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    z = embedder(x)
    assert z.shape == (2, 16)
    assert torch.allclose(z, embedder.model.visual(embedder.preprocess(x)))


def test_tiny_clip_output_options(tiny_clip_arch):
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert FrozenOpenCLIPImageEmbedder(arch=tiny_clip_arch, unsqueeze_dim=True)(x).shape == (2, 1, 16)
    tokens, z = FrozenOpenCLIPImageEmbedder(arch=tiny_clip_arch, output_tokens=True)(x)
    assert tokens.shape == (2, 49, 32) and z.shape == (2, 16)  # 7x7 patches of 32 px
    seq, z = FrozenOpenCLIPImageEmbedder(arch=tiny_clip_arch, repeat_to_max_len=True, max_length=5)(x)
    assert seq.shape == (2, 5, 16) and torch.equal(seq[:, 3], z)
    crops = FrozenOpenCLIPImageEmbedder(arch=tiny_clip_arch, num_image_crops=3)(torch.rand(2, 3, 3, 32, 32))
    assert crops.shape == (2, 3, 16)


def test_tiny_clip_own_dropout_only_when_standalone(tiny_clip_arch):
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    standalone = FrozenOpenCLIPImageEmbedder(arch=tiny_clip_arch, ucg_rate=1.0)
    assert torch.equal(standalone(x), torch.zeros(3, 16))
    assert standalone(x, no_dropout=True).abs().sum() > 0
    # Inside a conditioner, the conditioner applies the entry's ucg_rate (no double dropout).
    conditioner = GeneralConditioner([{
        "target": f"{MODULES}.FrozenOpenCLIPImageEmbedder", "input_key": "img",
        "params": {"arch": tiny_clip_arch, "ucg_rate": 1.0},
    }])
    assert conditioner.embedders[0].ucg_rate == 0.0
    assert conditioner({"img": x})["vector"].abs().sum() > 0


def test_clip_prediction_embedder_groups_frames_and_repeats(tiny_clip_arch):
    embedder = FrozenOpenCLIPImagePredictionEmbedder(
        open_clip_embedding_config={"target": f"{MODULES}.FrozenOpenCLIPImageEmbedder",
                                    "params": {"arch": tiny_clip_arch}},
        n_cond_frames=2,
        n_copies=3,
    )
    x = torch.rand(4, 3, 32, 32) * 2 - 1  # 2 clips x 2 conditioning frames
    out = embedder(x)
    assert out.shape == (6, 2, 16)  # (b·n_copies, n_cond_frames, D)
    per_frame = embedder.open_clip(x)
    assert torch.allclose(out[0], per_frame[0:2]) and torch.allclose(out[2], per_frame[0:2])
    assert torch.allclose(out[3], per_frame[2:4])


def test_get_unconditional_conditioning_disables_nested_dropout(tiny_clip_arch):
    conditioner = GeneralConditioner([{
        "target": f"{MODULES}.FrozenOpenCLIPImagePredictionEmbedder", "input_key": "img",
        "params": {"n_cond_frames": 1, "n_copies": 1, "open_clip_embedding_config": {
            "target": f"{MODULES}.FrozenOpenCLIPImageEmbedder",
            "params": {"arch": tiny_clip_arch, "ucg_rate": 1.0}}},
    }])
    batch = {"img": torch.rand(2, 3, 32, 32) * 2 - 1}
    assert torch.equal(conditioner(batch)["crossattn"], torch.zeros(2, 1, 16))  # nested dropout active
    c, _ = conditioner.get_unconditional_conditioning(batch)
    assert c["crossattn"].abs().sum() > 0
    assert conditioner.embedders[0].open_clip.ucg_rate == 1.0  # restored


# ---------------------------------------------------------------------------------------------
# VAE-latent embedder
# ---------------------------------------------------------------------------------------------


class PoolEncoder(nn.Module):
    """Closed-form stand-in VAE: latents = 4x4 average-pooled RGB plus their channel mean (4 channels).

    `encode` is the AE path; calling the module returns the negated latents (the non-AE path).
    Records each call's row count and whether autocast was on.
    """

    def __init__(self):
        super().__init__()
        self.calls = []

    def encode(self, x):
        self.calls.append((x.shape[0], torch.is_autocast_enabled("cpu")))
        pooled = F.avg_pool2d(x, 4)
        return torch.cat([pooled, pooled.mean(dim=1, keepdim=True)], dim=1)

    def forward(self, x):
        return -self.encode(x)


class ConstantSigma:
    """Stand-in sigma sampler: one constant σ per requested sample; records the request sizes."""

    def __init__(self, sigma: float):
        self.sigma = sigma
        self.requests = []

    def __call__(self, n_samples):
        self.requests.append(n_samples)
        return torch.full((n_samples,), self.sigma)


def _reference_latents(x):
    pooled = F.avg_pool2d(x, 4)
    return torch.cat([pooled, pooled.mean(dim=1, keepdim=True)], dim=1)


def _video_embedder(**params):
    params.setdefault("encoder_config", {"target": f"{HERE}.PoolEncoder"})
    return VideoPredictionEmbedderWithEncoder(**params)


def test_video_embedder_single_frame_repeats_copies():
    embedder = _video_embedder(n_cond_frames=1, n_copies=3, is_ae=True)
    x = torch.randn(2, 3, 8, 8)
    out = embedder(x)
    assert out.shape == (6, 4, 2, 2)  # (b·n_copies, C, h, w)
    expected = _reference_latents(x).repeat_interleave(3, dim=0)  # clip-major, copy-minor
    assert torch.equal(out, expected)


def test_video_embedder_encoder_call_and_scale():
    x = torch.randn(2, 3, 8, 8)
    not_ae = _video_embedder(n_cond_frames=1, n_copies=1, is_ae=False, scale_factor=0.5)
    assert torch.equal(not_ae(x), -0.5 * _reference_latents(x))


def test_video_embedder_encodes_in_chunks():
    x = torch.randn(5, 3, 8, 8)
    embedder = _video_embedder(n_cond_frames=1, n_copies=1, is_ae=True, en_and_decode_n_samples_a_time=2)
    out = embedder(x)
    assert [rows for rows, _ in embedder.encoder.calls] == [2, 2, 1]
    assert torch.equal(out, _reference_latents(x))


def test_video_embedder_disables_autocast_when_asked():
    x = torch.randn(1, 3, 8, 8)
    on = _video_embedder(n_cond_frames=1, n_copies=1, is_ae=True)
    off = _video_embedder(n_cond_frames=1, n_copies=1, is_ae=True, disable_encoder_autocast=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        on(x)
        off(x)
    assert on.encoder.calls[0][1] is True and off.encoder.calls[0][1] is False


def test_video_embedder_sigma_noise_and_sigma_cond_multi_frame():
    embedder = _video_embedder(
        n_cond_frames=3, n_copies=1, is_ae=True,
        sigma_sampler_config={"target": f"{HERE}.ConstantSigma", "params": {"sigma": 0.5}},
        sigma_cond_config={"target": f"{MODULES}.ConcatTimestepEmbedderND", "params": {"outdim": 8}},
    )
    x = torch.randn(6, 3, 8, 8)  # 2 clips x 3 conditioning frames
    torch.manual_seed(7)
    latents, sigma_cond = embedder(x)
    assert embedder.sigma_sampler.requests == [2]  # one σ per clip
    torch.manual_seed(7)
    expected = _reference_latents(x + 0.5 * torch.randn_like(x))
    assert latents.shape == (6, 4, 2, 2) and torch.allclose(latents, expected)
    assert sigma_cond.shape == (6, 8)  # one row per latent row
    assert torch.equal(sigma_cond, timestep_embedding(torch.full((6,), 0.5), 8))


def test_video_embedder_sigma_cond_single_frame_follows_copies():
    embedder = _video_embedder(
        n_cond_frames=1, n_copies=2, is_ae=True,
        sigma_sampler_config={"target": f"{HERE}.ConstantSigma", "params": {"sigma": 0.0}},
        sigma_cond_config={"target": f"{MODULES}.ConcatTimestepEmbedderND", "params": {"outdim": 4}},
    )
    x = torch.randn(3, 3, 8, 8)
    latents, sigma_cond = embedder(x)
    assert latents.shape == (6, 4, 2, 2) and sigma_cond.shape == (6, 4)
    assert torch.equal(latents, _reference_latents(x).repeat_interleave(2, dim=0))  # σ = 0: no noise


def test_video_embedder_in_conditioner_routes_concat_and_vector():
    conditioner = GeneralConditioner([{
        "target": f"{MODULES}.VideoPredictionEmbedderWithEncoder", "input_key": "cond_frames",
        "params": {
            "n_cond_frames": 2, "n_copies": 1, "is_ae": True,
            "encoder_config": {"target": f"{HERE}.PoolEncoder"},
            "sigma_sampler_config": {"target": f"{HERE}.ConstantSigma", "params": {"sigma": 0.0}},
            "sigma_cond_config": {"target": f"{MODULES}.ConcatTimestepEmbedderND", "params": {"outdim": 4}},
        },
    }, {
        "target": f"{MODULES}.ConcatTimestepEmbedderND", "input_key": "polar_rad", "params": {"outdim": 6},
    }])
    out = conditioner({"cond_frames": torch.randn(4, 3, 8, 8), "polar_rad": torch.rand(4)})
    assert out["concat"].shape == (4, 4, 2, 2)
    assert out["vector"].shape == (4, 10)  # sigma_cond (4) then polar (6), in embedder order


def test_video_embedder_with_zero_sampler():
    sigma_sampling = pytest.importorskip("sgm.modules.diffusionmodules.sigma_sampling")
    if not hasattr(sigma_sampling, "ZeroSampler"):
        pytest.skip("ZeroSampler not available yet")
    embedder = _video_embedder(
        n_cond_frames=2, n_copies=1, is_ae=True,
        sigma_sampler_config={"target": "sgm.modules.diffusionmodules.sigma_sampling.ZeroSampler"},
        sigma_cond_config={"target": f"{MODULES}.ConcatTimestepEmbedderND", "params": {"outdim": 4}},
    )
    x = torch.randn(4, 3, 8, 8)
    latents, sigma_cond = embedder(x)
    assert torch.allclose(latents, _reference_latents(x), atol=1e-4)
    assert torch.allclose(sigma_cond, timestep_embedding(torch.full((4,), 1e-5), 4))


TINY_DDCONFIG = {
    "attn_type": "vanilla", "double_z": True, "z_channels": 4, "resolution": 16, "in_channels": 3,
    "out_ch": 3, "ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0,
}


def _autoencoder_kl_mode_only():
    autoencoder = pytest.importorskip("sgm.models.autoencoder")
    if not hasattr(autoencoder, "AutoencoderKLModeOnly"):
        pytest.skip("sgm.models.autoencoder.AutoencoderKLModeOnly not available yet")
    return autoencoder.AutoencoderKLModeOnly


def test_video_embedder_with_autoencoder_kl_mode_only():
    _autoencoder_kl_mode_only()
    conditioner = GeneralConditioner([{
        "target": f"{MODULES}.VideoPredictionEmbedderWithEncoder", "input_key": "cond_frames",
        "params": {
            "n_cond_frames": 1, "n_copies": 1, "is_ae": True, "disable_encoder_autocast": True,
            "encoder_config": {"target": "sgm.models.autoencoder.AutoencoderKLModeOnly", "params": {
                "embed_dim": 4, "monitor": "val/rec_loss", "ddconfig": TINY_DDCONFIG,
                "lossconfig": {"target": "torch.nn.Identity"}}},
        },
    }])
    embedder = conditioner.embedders[0]
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    out = conditioner({"cond_frames": x})["concat"]
    assert out.shape == (2, 4, 8, 8)
    assert torch.equal(out, embedder.encoder.encode(x))  # the posterior mode: deterministic
    assert {k.split(".")[3] for k in conditioner.state_dict()} >= {"encoder", "decoder", "quant_conv"}


def _svd_conditioner_entries():  # UPSTREAM.md §10.1
    ddconfig = dict(TINY_DDCONFIG, attn_type="vanilla-xformers", resolution=256, ch=128, ch_mult=[1, 2, 4, 4],
                    num_res_blocks=2)
    timestep = f"{MODULES}.ConcatTimestepEmbedderND"
    return [
        _svd_clip_entry(),
        {"target": timestep, "input_key": "fps_id", "params": {"outdim": 256}},
        {"target": timestep, "input_key": "motion_bucket_id", "params": {"outdim": 256}},
        {"target": f"{MODULES}.VideoPredictionEmbedderWithEncoder", "input_key": "cond_frames", "params": {
            "disable_encoder_autocast": True, "n_cond_frames": 1, "n_copies": 1, "is_ae": True,
            "encoder_config": {"target": "sgm.models.autoencoder.AutoencoderKLModeOnly", "params": {
                "embed_dim": 4, "monitor": "val/rec_loss", "ddconfig": ddconfig,
                "lossconfig": {"target": "torch.nn.Identity"}}}}},
        {"target": timestep, "input_key": "cond_aug", "params": {"outdim": 256}},
    ]


def test_svd_conditioner_layout_on_meta_matches_manifest():
    pytest.importorskip("open_clip")
    _autoencoder_kl_mode_only()
    with torch.device("meta"):
        conditioner = GeneralConditioner(_svd_conditioner_entries())
    got = {f"conditioner.{k}": tuple(v.shape) for k, v in conditioner.state_dict().items()}
    assert got == _manifest_entries("conditioner.")
    assert sum(p.numel() for p in conditioner.parameters()) == 767_453_928
