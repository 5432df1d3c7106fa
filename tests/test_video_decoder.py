"""SVD's temporal VideoDecoder: golden numerics, clip handling, blend convention, errors."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sgm.models.autoencoder import AutoencodingEngine
from sgm.modules.autoencoding.temporal_ae import VideoDecoder, VideoResBlock
from sgm.modules.diffusionmodules.model import ResnetBlock
from sgm.util import instantiate_from_config

GOLDEN = Path(__file__).parent / "data" / "golden"
NAME = "video_decoder_tiny"


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).abs().max() / expected.abs().max()).item()


@pytest.fixture(scope="module")
def golden():
    from safetensors.torch import load_file

    entry = json.loads((GOLDEN / "golden.json").read_text())[NAME]
    tensors = load_file(str(GOLDEN / entry["weights_file"]))
    decoder = instantiate_from_config(entry["config"]).eval()
    weights = {key.removeprefix("model."): t for key, t in tensors.items() if key.startswith("model.")}
    decoder.load_state_dict(weights, strict=True)
    return entry, tensors, decoder


def test_video_decoder_matches_golden(golden):
    entry, tensors, decoder = golden
    with torch.no_grad():
        out = decoder(tensors["in.z"], timesteps=entry["non_tensor_inputs"]["timesteps"])
    assert list(out.shape) == entry["out_shape"]
    assert relative_error(out, tensors["out"]) < 1e-5


def test_clips_are_decoded_independently(golden):
    _, tensors, decoder = golden
    z = tensors["in.z"]  # 2 clips × 3 frames
    with torch.no_grad():
        together = decoder(z, timesteps=3)
        separately = torch.cat([decoder(z[:3], timesteps=3), decoder(z[3:], timesteps=3)])
    torch.testing.assert_close(together, separately, rtol=1e-5, atol=1e-5)


def test_engine_passes_num_video_frames_as_timesteps(golden):
    entry, tensors, decoder = golden
    engine = AutoencodingEngine(
        encoder_config={"target": "torch.nn.Identity"},
        decoder_config=entry["config"],
        regularizer_config={"target": "sgm.modules.autoencoding.regularizers.DiagonalGaussianRegularizer"},
    ).eval()
    engine.decoder.load_state_dict(decoder.state_dict())
    with torch.no_grad():
        out = engine.decode(tensors["in.z"], num_video_frames=3)
    torch.testing.assert_close(out, tensors["out"], rtol=1e-5, atol=1e-5)


def test_frames_must_form_whole_clips(golden):
    _, tensors, decoder = golden
    with pytest.raises(ValueError, match="not a whole number of 4-frame clips"):
        decoder(tensors["in.z"], timesteps=4)
    with pytest.raises(ValueError, match="timesteps=T"):
        decoder(tensors["in.z"])


def test_blend_weights_temporal_branch_by_sigmoid_of_mix_factor():
    block = VideoResBlock(32, 32, video_kernel_size=[3, 1, 1]).eval()
    torch.nn.init.normal_(block.time_stack.out_layers[-1].weight, std=0.1)
    spatial_block = ResnetBlock(32, 32).eval()
    spatial_block.load_state_dict(block.state_dict(), strict=False)
    x = torch.randn(4, 32, 4, 4)  # 2 clips × 2 frames
    with torch.no_grad():
        spatial = spatial_block(x)
        clips = spatial.reshape(2, 2, 32, 4, 4).transpose(1, 2)  # (b, c, t, h, w)
        temporal = block.time_stack(clips).transpose(1, 2).reshape(4, 32, 4, 4)
        block.mix_factor.fill_(1.5)
        alpha = torch.sigmoid(torch.tensor(1.5))
        torch.testing.assert_close(block(x, timesteps=2), alpha * temporal + (1 - alpha) * spatial)


def test_fixed_merge_uses_alpha_as_a_buffer():
    block = VideoResBlock(32, 32, alpha=0.0, merge_strategy="fixed").eval()
    assert "mix_factor" in dict(block.named_buffers())
    assert "mix_factor" in block.state_dict()
    torch.nn.init.normal_(block.time_stack.out_layers[-1].weight)
    spatial_block = ResnetBlock(32, 32).eval()
    spatial_block.load_state_dict(block.state_dict(), strict=False)
    x = torch.randn(6, 32, 4, 4)
    torch.testing.assert_close(block(x, timesteps=3), spatial_block(x))  # α = 0: spatial only


def test_unsupported_modes_raise_clearly():
    tiny = {
        "ch": 32,
        "out_ch": 3,
        "ch_mult": [1],
        "num_res_blocks": 1,
        "attn_resolutions": [],
        "resolution": 8,
        "z_channels": 4,
    }
    with pytest.raises(NotImplementedError, match="attn-only"):
        VideoDecoder(time_mode="attn-only", **tiny)
    with pytest.raises(ValueError, match="'bogus'"):
        VideoDecoder(time_mode="bogus", **tiny)
    with pytest.raises(ValueError, match="learned_with_images"):
        VideoDecoder(merge_strategy="learned_with_images", **tiny)
