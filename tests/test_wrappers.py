"""OpenAIWrapper: how the conditioner's dict reaches the network, and upstream's key layout."""
import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from sgm.modules.diffusionmodules.video_model import VideoUNet
from sgm.modules.diffusionmodules.wrappers import IdentityWrapper, OpenAIWrapper, OpenAIWrapperWithViews

DATA = Path(__file__).parent / "data"


class Recorder(nn.Module):
    """Network stand-in that records its call."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))
        self.calls = []

    def forward(self, x, **kwargs):
        self.calls.append((x, kwargs))
        return x * self.scale


def test_openai_wrapper_maps_cond_keys():
    wrapper = OpenAIWrapper(Recorder())
    x, t = torch.randn(2, 4, 8, 8), torch.rand(2)
    cond = {
        "concat": torch.randn(2, 3, 8, 8),
        "crossattn": torch.randn(2, 1, 16),
        "vector": torch.randn(2, 24),
        "cond_view": torch.randn(2, 3),  # not one of the network's inputs: not passed
    }
    out = wrapper(x, t, cond, num_video_frames=2, image_only_indicator=torch.zeros(1, 2))
    (seen_x, kwargs), = wrapper.diffusion_model.calls
    torch.testing.assert_close(seen_x, torch.cat([x, cond["concat"]], dim=1))
    assert out.shape == (2, 7, 8, 8)
    assert set(kwargs) == {"timesteps", "context", "y", "num_video_frames", "image_only_indicator"}
    assert kwargs["timesteps"] is t and kwargs["context"] is cond["crossattn"] and kwargs["y"] is cond["vector"]


def test_openai_wrapper_without_concat_or_context():
    wrapper = OpenAIWrapper(Recorder())
    x = torch.randn(2, 4, 8, 8)
    wrapper(x, torch.rand(2), {})
    (seen_x, kwargs), = wrapper.diffusion_model.calls
    assert seen_x is x and kwargs["context"] is None and kwargs["y"] is None


def test_checkpoint_keys_are_model_diffusion_model():
    engine = nn.Module()
    engine.model = OpenAIWrapper(Recorder())
    assert list(engine.state_dict()) == ["model.diffusion_model.scale"]
    compiled = nn.Module()
    compiled.model = IdentityWrapper(Recorder(), compile_model=True)
    assert list(compiled.state_dict()) == ["model.diffusion_model.scale"]  # no `_orig_mod.`


def v_scaling_with_edm_c_noise(sigma: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """c_skip, c_out, c_in, c_noise of upstream's VScalingWithEDMcNoise (sigma_data = 1)."""
    c_skip = 1.0 / (sigma**2 + 1.0)
    c_out = -sigma / (sigma**2 + 1.0) ** 0.5
    c_in = 1.0 / (sigma**2 + 1.0) ** 0.5
    return c_skip, c_out, c_in, 0.25 * sigma.log()


def test_golden_denoiser_through_wrapper():
    golden = json.loads((DATA / "golden" / "golden.json").read_text())
    entry = golden["denoiser_vscaling_edmcnoise_videounet_tiny"]
    facts = golden["_facts"]["VScalingWithEDMcNoise"]
    coefficients = v_scaling_with_edm_c_noise(torch.tensor(facts["sigma"]))
    for name, value in zip(("c_skip", "c_out", "c_in", "c_noise"), coefficients):
        torch.testing.assert_close(value, torch.tensor(facts[name]), msg=name)

    weights = load_file(DATA / "golden" / entry["weights_file"])
    net = VideoUNet(**entry["config"]["network"]["params"])
    net.load_state_dict({k[len("model."):]: v for k, v in weights.items() if k.startswith("model.")}, strict=True)
    wrapper = OpenAIWrapper(net)
    t = load_file(DATA / "golden" / "denoiser_vscaling_edmcnoise_videounet_tiny.safetensors")
    cond = {key: t[f"in.c.{key}"] for key in ("concat", "crossattn", "vector")}
    sigma = t["in.sigma"]
    c_skip, c_out, c_in, c_noise = (c.reshape(-1, 1, 1, 1) for c in v_scaling_with_edm_c_noise(sigma))
    with torch.no_grad():
        f = wrapper(t["in.x_noisy"] * c_in, c_noise.reshape(-1), cond, num_video_frames=3,
                    image_only_indicator=t["in.image_only_indicator"])
    denoised = c_skip * t["in.x_noisy"] + c_out * f  # EDM eq. 7
    error = ((denoised - t["out"]).abs().max() / t["out"].abs().max()).item()
    assert error < 1e-5


def test_openai_wrapper_with_views_also_passes_cond_view():
    wrapper = OpenAIWrapperWithViews(Recorder())
    cond = {"crossattn": torch.randn(1, 2, 16), "cond_view": torch.randn(3, 4, 8, 8), "cond_motion": torch.randn(2)}
    wrapper(torch.randn(6, 4, 8, 8), torch.rand(6), cond, num_video_frames=6)
    (_, kwargs), = wrapper.diffusion_model.calls
    assert kwargs["cond_view"] is cond["cond_view"] and "cond_motion" not in kwargs  # the network ignores it
