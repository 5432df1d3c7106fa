"""DMD math on tiny tensors: the generator loss's gradient, CFG of the teacher role, the few-step
schedule and backward simulation, and the role's weight loading / precision."""
import math

import pytest
import torch

from diffusion_helpers import cfg
from sgm.io.checkpoint import CheckpointError
from sgm.modules.distillation.losses import (
    BottleneckClassifier,
    RestrictedDiscreteSampling,
    dmd_loss,
    gan_critic_loss,
    gan_generator_loss,
)
from sgm.modules.distillation.roles import ScoreModel, ema_network_weights
from sgm.modules.distillation.rollout import (
    FewStepDiscretization,
    backward_simulation,
    draw_exit_step,
    few_step_indices,
    few_step_sigmas,
)
from sgm.modules.distillation.sampler import FewStepSampler
from sgm.modules.diffusionmodules.discretizer import EDMDiscretization
from sgm.modules.ema import LitEma

EDM = cfg("discretizer.EDMDiscretization", sigma_min=0.002, sigma_max=80.0)


# ------------------------------------------------------------------------------ DMD loss
def preds(shape=(4, 3, 2, 2)):
    x0 = torch.randn(shape, requires_grad=True)
    return x0, torch.randn(shape), torch.randn(shape)


def test_gradient_is_the_normalised_score_difference():
    x0, pred_real, pred_fake = preds()
    loss, stats = dmd_loss(x0, pred_real, pred_fake)
    loss.mean().backward()
    normalizer = (x0.detach() - pred_real).abs().mean(dim=(1, 2, 3))  # per sample
    expected = (pred_fake - pred_real) / normalizer[:, None, None, None]  # DMD2 eq. 7
    per_sample = x0[0].numel()
    torch.testing.assert_close(stats.normalizer, normalizer)
    torch.testing.assert_close(stats.grad, expected)
    torch.testing.assert_close(x0.grad * per_sample * x0.shape[0], expected)  # d mean(loss) / d x0
    torch.testing.assert_close(loss, 0.5 * (expected**2).mean(dim=(1, 2, 3)))


def test_zero_when_the_critic_equals_the_teacher():
    x0, pred_real, _ = preds()
    loss, stats = dmd_loss(x0, pred_real, pred_real.clone())
    loss.sum().backward()
    assert float(loss.detach().abs().max()) == 0.0 and float(x0.grad.abs().max()) == 0.0


def test_descent_moves_x0_toward_the_teacher():
    x0, pred_real, _ = preds()
    pred_fake = x0.detach().clone()  # the critic believes the generator's samples are clean
    loss, _ = dmd_loss(x0, pred_real, pred_fake)
    loss.mean().backward()
    stepped = x0.detach() - 10.0 * x0.grad
    before = (x0.detach() - pred_real).flatten(1).norm(dim=1)
    after = (stepped - pred_real).flatten(1).norm(dim=1)
    assert bool((after < before).all())
    cos = torch.nn.functional.cosine_similarity((-x0.grad).flatten(1), (pred_real - x0.detach()).flatten(1))
    torch.testing.assert_close(cos, torch.ones(4))


def test_video_normaliser_per_clip_and_mask_excludes_known_frames():
    B, T = 2, 3
    x0, pred_real, pred_fake = preds((B * T, 1, 2, 2))
    mask = torch.tensor([[0, 1, 1], [1, 1, 0]])  # frame 0 of clip 0, frame 2 of clip 1 are known
    loss, stats = dmd_loss(x0, pred_real, pred_fake, num_frames=T, mask=mask)
    loss.sum().backward()
    keep = mask.reshape(-1).bool()
    diff = (x0.detach() - pred_real).abs().reshape(B, T, -1)
    expected_norm = torch.stack([diff[b][mask[b].bool()].mean() for b in range(B)])
    torch.testing.assert_close(stats.normalizer, expected_norm)
    assert float(x0.grad[~keep].abs().max()) == 0.0 and float(stats.grad[~keep].abs().max()) == 0.0
    assert bool((x0.grad[keep].abs() > 0).all())
    # changing a known frame's teacher output changes nothing
    pred_real2 = pred_real.clone()
    pred_real2[0] += 100.0
    loss2, _ = dmd_loss(x0, pred_real2, pred_fake, num_frames=T, mask=mask)
    torch.testing.assert_close(loss2, loss)


def test_one_sigma_per_clip():
    from sgm.modules.diffusionmodules.loss import per_clip_sigmas

    sigma = per_clip_sigmas(lambda n: torch.arange(1.0, n + 1), num_rows=6, num_frames=3)
    torch.testing.assert_close(sigma, torch.tensor([1.0, 1, 1, 2, 2, 2]))


def test_restricted_discrete_sampling_stays_in_the_middle_of_the_schedule():
    sampler = RestrictedDiscreteSampling(EDM, num_idx=1000, min_fraction=0.02, max_fraction=0.98)
    full = EDMDiscretization(0.002, 80.0)(1000, do_append_zero=False)
    sigma = sampler(5000, generator=torch.Generator().manual_seed(0))
    assert float(sigma.max()) <= float(full[20]) and float(sigma.min()) >= float(full[979])
    assert float(sigma.max()) == pytest.approx(float(full[20]), rel=0.05)


def test_gan_losses_and_head_shapes():
    head = BottleneckClassifier(in_channels=16, hidden_channels=8, num_groups=4)
    assert head(torch.randn(5, 16, 2, 2)).shape == (5,)
    zero = torch.zeros(3)
    torch.testing.assert_close(gan_generator_loss(zero), torch.full((3,), math.log(2)))
    torch.testing.assert_close(gan_critic_loss(zero, zero), torch.tensor(2 * math.log(2)))


# ------------------------------------------------------------------------------ roles
def toy_role(guider=None, **params) -> ScoreModel:
    return ScoreModel(
        network_config={"target": "sgm.modules.distillation.toy.ToyMLP",
                        "params": {"dim": 2, "hidden": 16, "depth": 2, "cond_dim": 3}},
        denoiser_config=cfg("denoiser.Denoiser", scaling_config=cfg("denoiser_scaling.EDMScaling", sigma_data=1.0)),
        guider_config=guider,
        **params,
    )


def test_cfg_is_uncond_plus_scale_times_difference():
    role = toy_role(cfg("guiders.VanillaCFG", scale=3.0))
    x, sigma = torch.randn(4, 2), torch.rand(4) + 0.1
    c, uc = {"vector": torch.randn(4, 3)}, {"vector": torch.zeros(4, 3)}
    d_c, d_u = role(x, sigma, c), role(x, sigma, uc)  # no uc: one unguided pass
    torch.testing.assert_close(role(x, sigma, c, uc=uc), d_u + 3.0 * (d_c - d_u))


def test_cfg_per_frame_scales_for_video():
    B, T = 2, 3
    role = toy_role(cfg("guiders.LinearPredictionGuider", max_scale=3.0, min_scale=1.0, num_frames=T))
    x, sigma = torch.randn(B * T, 2), torch.full((B * T,), 0.7)
    c, uc = {"vector": torch.randn(B * T, 3)}, {"vector": torch.zeros(B * T, 3)}
    d_c, d_u = role(x, sigma, c), role(x, sigma, uc)
    scale = torch.tensor([1.0, 2.0, 3.0]).repeat(B)[:, None]  # frame t of every clip
    torch.testing.assert_close(role(x, sigma, c, uc=uc), d_u + scale * (d_c - d_u))


def test_frozen_role_and_bf16_network_keep_fp32_sigma_arithmetic():
    role32 = toy_role()
    assert all(not p.requires_grad for p in role32.parameters()) and not role32.training
    role16 = toy_role(dtype="bfloat16")
    role16.load_state_dict(role32.state_dict())  # load casts to the bf16 weights
    assert role16.model.diffusion_model.out.weight.dtype == torch.bfloat16
    x, sigma, c = torch.randn(4, 2) * 700, torch.full((4,), 700.0), {"vector": torch.randn(4, 3)}
    out32, out16 = role32(x, sigma, c), role16(x, sigma, c)
    assert out16.dtype == torch.float32
    torch.testing.assert_close(out16, out32, atol=0.05 * float(out32.abs().max()), rtol=0.0)


def test_role_loads_its_network_from_a_prefixed_checkpoint(tmp_path):
    source = toy_role(trainable=True)
    state = {f"model.{k}": v for k, v in source.model.state_dict().items()}
    path = str(tmp_path / "teacher.ckpt")
    torch.save({"state_dict": state}, path)
    role = toy_role(ckpt_path=path)
    for (k, a), b in zip(source.model.state_dict().items(), role.model.state_dict().values()):
        assert torch.equal(a, b), k
    torch.save({"state_dict": dict(list(state.items())[1:])}, path)
    with pytest.raises(CheckpointError, match="required keys are missing"):
        toy_role(ckpt_path=path)


def test_ema_weights_are_read_under_the_live_names():
    role = toy_role(trainable=True)
    ema = LitEma(role.model)
    with torch.no_grad():
        for buffer in ema.buffers():
            if buffer.dtype.is_floating_point and buffer.ndim > 0:
                buffer.add_(1.0)
    sd = {**{f"model.{k}": v for k, v in role.model.state_dict().items()},
          **{f"model_ema.{k}": v for k, v in ema.state_dict().items()}}
    weights = ema_network_weights(sd)
    name = "model.diffusion_model.out.weight"
    torch.testing.assert_close(weights[name], role.model.diffusion_model.out.weight + 1.0)


# ------------------------------------------------------------------------------ schedule & rollout
def test_few_step_sigmas_rule():
    assert few_step_indices(4, 1000) == [0, 250, 500, 750]
    assert few_step_indices(1, 1000) == [0]
    full = EDMDiscretization(0.002, 80.0)(1000, do_append_zero=False)
    sigmas = FewStepDiscretization(EDM, num_steps=4)(None)
    torch.testing.assert_close(sigmas, torch.cat([full[[0, 250, 500, 750]], torch.zeros(1)]))
    assert float(few_step_sigmas(EDMDiscretization(0.002, 80.0), 1)[0]) == pytest.approx(80.0)


class RecordingGenerator:
    """x0_hat = 0.5 * x; records each call's sigma, input and grad mode."""

    def __init__(self):
        self.weight = torch.tensor(0.5, requires_grad=True)
        self.calls = []

    def __call__(self, x, sigma):
        self.calls.append(dict(sigma=float(sigma[0]), x=x.clone(), grad=torch.is_grad_enabled()))
        return self.weight * x


@pytest.mark.parametrize("exit_step", [0, 1, 3])
def test_backward_simulation_runs_only_the_steps_before_the_exit(exit_step):
    sigmas = torch.tensor([80.0, 10.0, 2.0, 0.5])
    G = RecordingGenerator()
    noise = torch.randn(3, 1, 2, 2)
    x0 = backward_simulation(G, sigmas, noise, exit_step)
    assert [c["sigma"] for c in G.calls] == sigmas[: exit_step + 1].tolist()
    assert [c["grad"] for c in G.calls] == [False] * exit_step + [True]
    torch.testing.assert_close(G.calls[0]["x"], noise * math.sqrt(1 + 80.0**2))  # pure-noise start
    x0.sum().backward()
    torch.testing.assert_close(G.weight.grad, G.calls[-1]["x"].sum())  # grad through the exit step only
    for i in range(1, exit_step + 1):  # fresh noise: x_i - x0_hat_{i-1} is sigma_i eps, eps new
        eps = (G.calls[i]["x"] - 0.5 * G.calls[i - 1]["x"]) / sigmas[i]
        assert abs(float(eps.std()) - 1.0) < 0.8 and not torch.allclose(eps, noise)


def test_exit_step_is_seeded_by_step_not_global_rng():
    draws = [draw_exit_step(4, step, seed=7) for step in range(400)]
    torch.manual_seed(123)
    assert draws == [draw_exit_step(4, step, seed=7) for step in range(400)]
    assert set(draws) == {0, 1, 2, 3} and draw_exit_step(1, 5) == 0
    assert draws != [draw_exit_step(4, step, seed=8) for step in range(400)]


def test_few_step_sampler_runs_the_training_schedule():
    sigmas = [80.0, 10.0, 2.0, 0.5]
    sampler = FewStepSampler(cfg("discretizer.ExplicitDiscretization", sigmas=sigmas))
    G = RecordingGenerator()
    noise = torch.randn(3, 1, 2, 2)
    torch.manual_seed(1)
    sampled = sampler(lambda x, sigma, c: G(x, sigma), noise, {})
    torch.manual_seed(1)
    with torch.no_grad():
        rolled = backward_simulation(G, torch.tensor(sigmas), noise, exit_step=3)
    torch.testing.assert_close(sampled, rolled)
    assert [c["sigma"] for c in G.calls] == sigmas + sigmas
