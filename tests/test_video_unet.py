"""Video U-Net: parity with upstream's golden output, exact state-dict structure of SVD / SV3D, and
the temporal blending semantics."""
import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from sgm.modules.diffusionmodules.util import AlphaBlender
from sgm.modules.diffusionmodules.video_model import VideoUNet
from sgm.modules.video_attention import SpatialVideoTransformer, VideoTransformerBlock

DATA = Path(__file__).parent / "data"
NETWORK_PREFIX = "model.diffusion_model."


def golden(name: str) -> tuple[dict, dict]:
    entry = json.loads((DATA / "golden" / "golden.json").read_text())[name]
    return entry, load_file(DATA / "golden" / entry["weights_file"])


def tiny_video_unet() -> tuple[VideoUNet, dict, dict]:
    """The `videounet_tiny` fixture: network with upstream's weights, and the fixture's tensors."""
    entry, tensors = golden("videounet_tiny")
    net = VideoUNet(**entry["config"]["params"])
    net.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}, strict=True)
    assert sum(p.numel() for p in net.parameters()) == entry["n_params"]
    return net, entry, tensors


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).abs().max() / expected.abs().max()).item()


def test_golden_videounet_tiny():
    net, entry, t = tiny_video_unet()
    with torch.no_grad():
        out = net(
            t["in.x"],
            timesteps=t["in.timesteps"],
            context=t["in.context"],
            y=t["in.y"],
            num_video_frames=entry["non_tensor_inputs"]["num_video_frames"],
            image_only_indicator=t["in.image_only_indicator"],
        )
    assert out.shape == tuple(entry["out_shape"])
    assert relative_error(out, t["out"]) < 1e-5


def test_bottleneck_and_default_image_only_indicator():
    net, entry, t = tiny_video_unet()
    inputs = dict(x=t["in.x"], timesteps=t["in.timesteps"], context=t["in.context"], y=t["in.y"], num_video_frames=3)
    with torch.no_grad():
        out_default = net(**inputs)
        out_zeros = net(**inputs, image_only_indicator=torch.zeros(2, 3))
        out, h_mid = net(**inputs, return_bottleneck=True)
    torch.testing.assert_close(out_default, out_zeros)
    torch.testing.assert_close(out, out_default)
    assert h_mid.shape == (6, 64, 8, 8)


@pytest.mark.parametrize("name", ["svd", "sv3d_u", "sv3d_p"])
def test_state_dict_matches_upstream_manifest(name):
    config = OmegaConf.load(DATA / "configs" / f"{name}.yaml").model.params.network_config
    assert config.target == "sgm.modules.diffusionmodules.video_model.VideoUNet"
    with torch.device("meta"):
        net = VideoUNet(**config.params)
    assert_network_matches_manifest(net, name)


def assert_network_matches_manifest(net: torch.nn.Module, name: str) -> None:
    """The network's keys, shapes and parameter count equal the released model's (tests/data/manifests)."""
    manifest = json.loads((DATA / "manifests" / f"{name}.json").read_text())
    expected = {
        key[len(NETWORK_PREFIX):]: tuple(shape)
        for key, shape in manifest["state_dict"].items()
        if key.startswith(NETWORK_PREFIX)
    }
    actual = {key: tuple(value.shape) for key, value in net.state_dict().items()}
    assert sorted(set(expected) - set(actual)) == [] and sorted(set(actual) - set(expected)) == [], name
    assert actual == expected, name
    assert sum(p.numel() for p in net.parameters()) == manifest["params_by_top_prefix"]["model"], name


@pytest.mark.parametrize("strategy", ["fixed", "learned", "learned_with_images"])
def test_alpha_blender_strategies(strategy):
    blender = AlphaBlender(0.3, strategy, rearrange_pattern="b t -> (b t) 1")
    spatial, temporal = torch.ones(4, 2), torch.zeros(4, 2)
    indicator = torch.tensor([[0.0, 1.0], [1.0, 0.0]])  # (B=2, T=2)
    alpha = blender(spatial, temporal, indicator)[:, 0]
    mixed = 0.3 if strategy == "fixed" else torch.sigmoid(torch.tensor(0.3)).item()
    if strategy == "learned_with_images":  # sigmoid first, then image rows get exactly 1
        expected = torch.tensor([mixed, 1.0, 1.0, mixed])
    else:
        expected = torch.full((4,), mixed)
    torch.testing.assert_close(alpha, expected)
    assert isinstance(blender.mix_factor, torch.nn.Parameter) == (strategy != "fixed")
    assert "mix_factor" in blender.state_dict()


def test_temporal_block_mixes_frames_only_within_a_clip():
    block = VideoTransformerBlock(8, n_heads=2, d_head=4, ff_in=True).eval()
    x = torch.randn(6, 5, 8)  # 2 clips x 3 frames, 5 tokens
    out = block(x, timesteps=3)
    x2 = x.clone()
    x2[3:] = torch.randn(3, 5, 8)  # change the second clip only
    torch.testing.assert_close(block(x2, timesteps=3)[:3], out[:3])
    x3 = x.clone()
    x3[:, 1] = 0.0  # change one spatial position: others are unaffected
    torch.testing.assert_close(block(x3, timesteps=3)[:, [0, 2, 3, 4]], out[:, [0, 2, 3, 4]])


def test_spatial_video_transformer_options():
    block = SpatialVideoTransformer(
        32, 2, 16, context_dim=12, time_context_dim=6, merge_strategy="learned",
        disable_temporal_crossattention=False, max_time_embed_period=100,
    )
    x = torch.randn(4, 32, 4, 4)
    out = block(x, context=torch.randn(4, 3, 12), time_context=torch.randn(2, 6), num_video_frames=2)
    assert out.shape == x.shape
    no_ca = SpatialVideoTransformer(32, 2, 16, disable_temporal_crossattention=True)
    assert no_ca.time_stack[0].attn2 is None and "time_stack.0.norm2.weight" not in no_ca.state_dict()


def test_video_checkpointing_matches_plain_gradients():
    net, entry, t = tiny_video_unet()
    params = {**entry["config"]["params"], "use_checkpoint": True}
    checkpointed = VideoUNet(**params)
    checkpointed.load_state_dict(net.state_dict())
    inputs = dict(x=t["in.x"][:3, :, :8, :8], timesteps=t["in.timesteps"][:3], context=t["in.context"][:3],
                  y=t["in.y"][:3], num_video_frames=3)
    grads = []
    for model in (net, checkpointed):
        model(**inputs).square().sum().backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, msg=name)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"num_video_frames": None}, "needs num_video_frames"),
        ({"num_video_frames": 4}, "needs num_video_frames"),
        ({"x": torch.randn(6, 4, 16, 16)}, r"expects x with 8 channels \(B\*T, 8, H, W\), got \(6, 4, 16, 16\)"),
        ({"image_only_indicator": torch.zeros(6)}, r"image_only_indicator of shape \(B, T\) = \(2, 3\)"),
        ({"context": None}, r"expects context of shape \(6, M, 32\), got None"),
        ({"y": None}, "needs y"),
    ],
)
def test_bad_video_inputs_raise_clear_errors(change, message):
    net, _, t = tiny_video_unet()
    inputs = dict(x=t["in.x"], timesteps=t["in.timesteps"], context=t["in.context"], y=t["in.y"], num_video_frames=3)
    with pytest.raises(ValueError, match=message):
        net(**{**inputs, **change})
