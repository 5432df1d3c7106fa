"""StandardDiffusionLoss: hand-computed values, per-clip sigmas for video, kwargs routing."""
import math

import pytest
import torch

from diffusion_helpers import cfg
from sgm.modules.diffusionmodules.loss import StandardDiffusionLoss
from sgm.util import ConfigError, instantiate_from_config

P_MEAN = math.log(0.7)  # with p_std = 0, EDMSampling always returns sigma = 0.7


def make_loss(**params) -> StandardDiffusionLoss:
    params.setdefault("sigma_sampler_config", cfg("sigma_sampling.EDMSampling", p_mean=P_MEAN, p_std=0.0))
    params.setdefault("loss_weighting_config", cfg("loss_weighting.EDMWeighting", sigma_data=0.5))
    return StandardDiffusionLoss(**params)


class RecordingDenoiser:
    """Returns a fixed x0 estimate and records what it was called with."""

    def __init__(self, output: float | None = 0.0) -> None:
        self.output = output
        self.calls = []

    def __call__(self, network, x, sigma, cond, **kwargs):
        self.calls.append(dict(network=network, x=x, sigma=sigma, cond=cond, kwargs=kwargs))
        return torch.full_like(x, self.output)


class RecordingSigmaSampler:
    """Distinct sigma per requested row: 1, 2, 3, ..."""

    def __init__(self) -> None:
        self.requested = []

    def __call__(self, n_samples, rand=None):
        self.requested.append(n_samples)
        return torch.arange(1, n_samples + 1, dtype=torch.float32)


@pytest.mark.parametrize("loss_type", ["l2", "l1"])
def test_values_against_hand_computation(loss_type):
    x0 = torch.randn(3, 2, 4, 4)
    loss = make_loss(loss_type=loss_type)(None, RecordingDenoiser(0.0), lambda b: {}, x0, {})
    sigma, sd = 0.7, 0.5
    w = (sigma**2 + sd**2) / (sigma * sd) ** 2
    per_row = (x0**2 if loss_type == "l2" else x0.abs()).reshape(3, -1).mean(dim=1)
    assert loss.shape == (3,)
    torch.testing.assert_close(loss, w * per_row)


def test_noised_input_and_conditioning():
    x0 = torch.randn(2, 3, 4, 4)
    denoiser = RecordingDenoiser()
    network = object()
    batch = {"txt": ["a", "b"]}
    cond = {"crossattn": torch.ones(2, 1, 8)}
    make_loss()(network, denoiser, lambda b: cond if b is batch else None, x0, batch)
    call = denoiser.calls[0]
    assert call["network"] is network and call["cond"] is cond
    torch.testing.assert_close(call["sigma"], torch.full((2,), 0.7))
    noise = (call["x"] - x0) / 0.7
    assert abs(noise.std().item() - 1.0) < 0.15  # eps ~ N(0, I)


def test_batch2model_keys():
    denoiser = RecordingDenoiser()
    batch = {"num_video_frames": 2, "image_only_indicator": torch.zeros(1, 2), "other": 1}
    make_loss(batch2model_keys=["num_video_frames", "image_only_indicator", "absent"])(
        None, denoiser, lambda b: {}, torch.randn(2, 1, 2, 2), batch
    )
    kwargs = denoiser.calls[0]["kwargs"]
    assert set(kwargs) == {"num_video_frames", "image_only_indicator"}
    assert kwargs["num_video_frames"] == 2


def test_one_sigma_per_clip():
    B, T = 3, 4
    loss_fn = make_loss()
    loss_fn.sigma_sampler = sampler = RecordingSigmaSampler()
    denoiser = RecordingDenoiser()
    x0 = torch.zeros(B * T, 2, 3, 3)
    loss = loss_fn(None, denoiser, lambda b: {}, x0, {"num_video_frames": T})
    assert loss.shape == (B * T,)
    assert sampler.requested == [B]  # one draw per clip, not per frame
    sigma = denoiser.calls[0]["sigma"]
    torch.testing.assert_close(sigma, torch.tensor([1.0, 2.0, 3.0]).repeat_interleave(T))
    noise = denoiser.calls[0]["x"] / sigma.view(-1, 1, 1, 1)
    assert not torch.allclose(noise[0], noise[1])  # eps stays independent per frame


def test_image_batch_draws_per_row():
    loss_fn = make_loss()
    loss_fn.sigma_sampler = sampler = RecordingSigmaSampler()
    loss_fn(None, RecordingDenoiser(), lambda b: {}, torch.zeros(5, 1, 2, 2), {})
    assert sampler.requested == [5]


def test_offset_noise_is_shared_by_a_clip():
    B, T, C = 2, 3, 4
    denoiser = RecordingDenoiser()
    x0, batch = torch.zeros(B * T, C, 8, 8), {"num_video_frames": T}
    make_loss(offset_noise_level=100.0)(None, denoiser, lambda b: {}, x0, batch)
    noise = denoiser.calls[0]["x"] / 0.7  # x0 = 0
    channel_mean = noise.mean(dim=(2, 3)).reshape(B, T, C) / 100.0  # ~ offset (B, C), up to 1/(8*100)
    spread_in_clip = (channel_mean - channel_mean[:, :1]).abs().max().item()
    assert spread_in_clip < 0.01
    assert (channel_mean[0, 0] - channel_mean[1, 0]).abs().max().item() > 0.05


def test_offset_noise_image_batch_per_row_and_channel():
    denoiser = RecordingDenoiser()
    make_loss(offset_noise_level=100.0)(None, denoiser, lambda b: {}, torch.zeros(2, 3, 8, 8), {})
    channel_mean = (denoiser.calls[0]["x"] / 70.0).mean(dim=(2, 3))  # (2, 3)
    assert channel_mean.std().item() > 0.1


def test_rows_must_be_whole_clips():
    with pytest.raises(ValueError, match="num_video_frames=4"):
        make_loss()(None, RecordingDenoiser(), lambda b: {}, torch.zeros(6, 1, 2, 2), {"num_video_frames": 4})


def test_lpips_is_refused_with_explanation():
    with pytest.raises(ConfigError, match="VGG.*cannot download"):
        make_loss(loss_type="lpips")
    with pytest.raises(ConfigError, match="loss_type"):
        make_loss(loss_type="l3")


def test_public_seam_reuses_precomputed_cond_and_given_draws():
    denoiser = RecordingDenoiser()
    cond = {"vector": torch.ones(2, 3)}
    loss_fn = make_loss()
    x0 = torch.zeros(2, 1, 2, 2)
    sigma, noise = loss_fn.draw(x0)
    torch.testing.assert_close(sigma, torch.full((2,), 0.7))
    loss = loss_fn.loss(lambda x, s, c, **kw: denoiser(None, x, s, c, **kw), x0, sigma, noise, cond, extra=1)
    call = denoiser.calls[0]
    assert loss.shape == (2,) and call["cond"] is cond and call["kwargs"] == {"extra": 1}
    torch.testing.assert_close(call["x"], x0 + 0.7 * noise)  # x = x0 + sigma * eps with the given draws
    assert call["sigma"] is sigma


def test_upstream_style_config():
    loss_fn = instantiate_from_config(
        cfg(
            "loss.StandardDiffusionLoss",
            loss_weighting_config=cfg("loss_weighting.EpsWeighting"),
            sigma_sampler_config=cfg(
                "sigma_sampling.DiscreteSampling",
                num_idx=1000,
                discretization_config=cfg("discretizer.LegacyDDPMDiscretization"),
            ),
        )
    )
    loss = loss_fn(None, RecordingDenoiser(), lambda b: {}, torch.randn(4, 1, 2, 2), {})
    assert loss.shape == (4,) and torch.all(loss >= 0)
