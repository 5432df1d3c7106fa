"""Guiders: input batching, blending rules and upstream's per-frame scale vectors."""
import pytest
import torch

from diffusion_helpers import cfg, golden_facts
from sgm.modules.diffusionmodules.guiders import (
    IdentityGuider,
    LinearPredictionGuider,
    SpatiotemporalPredictionGuider,
    TrapezoidPredictionGuider,
    TrianglePredictionGuider,
    VanillaCFG,
)
from sgm.util import instantiate_from_config

GOLDEN = {
    "guider svd (Linear 1.0->2.5, T=14)": LinearPredictionGuider(max_scale=2.5, num_frames=14, min_scale=1.0),
    "guider svd_xt (Linear 1.5->3.0, T=25)": LinearPredictionGuider(max_scale=3.0, num_frames=25, min_scale=1.5),
    "guider sv3d (Triangle max 2.5 min 1.0, T=21)": TrianglePredictionGuider(max_scale=2.5, num_frames=21),
    "guider sv4d (Spatiotemporal max 2.0 min 1.0, 40 frames, 8 views)": SpatiotemporalPredictionGuider(
        max_scale=2.0, num_frames=40, num_views=8, min_scale=1.0
    ),
    "guider sv4d2 (Linear max 2.0 min 1.0, 48)": LinearPredictionGuider(max_scale=2.0, num_frames=48),
    "guider sv4d2_8views (Spatiotemporal max 2.5 min 1.5, 40 frames, 8 views)": SpatiotemporalPredictionGuider(
        max_scale=2.5, num_frames=40, num_views=8, min_scale=1.5
    ),
}


@pytest.mark.parametrize("key", list(GOLDEN))
def test_frame_scales_golden(key):
    want = torch.tensor(golden_facts()[key])
    torch.testing.assert_close(GOLDEN[key].frame_scales(), want, rtol=0, atol=1e-6)


def conds(rows: int) -> tuple[dict, dict]:
    c = {
        "vector": torch.full((rows, 3), 1.0),
        "crossattn": torch.full((rows, 1, 4), 2.0),
        "concat": torch.full((rows, 2, 2, 2), 3.0),
        "cond_view": torch.full((rows, 1), 4.0),
        "num_video_frames": 3,
    }
    uc = {k: (-v if isinstance(v, torch.Tensor) else v) for k, v in c.items()}
    return c, uc


def test_prepare_inputs_order_and_keys():
    c, uc = conds(3)
    x, s = torch.randn(3, 2, 2, 2), torch.tensor([1.0, 2.0, 3.0])
    guider = LinearPredictionGuider(max_scale=2.0, num_frames=3, additional_cond_keys="cond_view")
    x2, s2, c2 = guider.prepare_inputs(x, s, c, uc)
    torch.testing.assert_close(x2, torch.cat([x, x]))
    torch.testing.assert_close(s2, torch.cat([s, s]))
    for key in ("vector", "crossattn", "concat", "cond_view"):
        torch.testing.assert_close(c2[key], torch.cat([uc[key], c[key]]))  # [uncond; cond]
    assert c2["num_video_frames"] == 3


def test_keys_not_batched_come_from_c():
    c, uc = conds(3)
    guider = LinearPredictionGuider(max_scale=2.0, num_frames=3)
    _, _, c2 = guider.prepare_inputs(torch.zeros(3, 1), torch.ones(3), c, uc)
    assert c2["cond_view"] is c["cond_view"]


def test_vanilla_cfg_blend():
    guider = VanillaCFG(scale=7.5)
    u, c = torch.randn(4, 3), torch.randn(4, 3)
    torch.testing.assert_close(guider(torch.cat([u, c]), torch.ones(8)), u + 7.5 * (c - u))
    torch.testing.assert_close(VanillaCFG(scale=1.0)(torch.cat([u, c]), torch.ones(8)), c)


def test_vanilla_cfg_requires_shared_keys_equal():
    c, uc = conds(3)
    with pytest.raises(ValueError, match="cond_view"):
        VanillaCFG(scale=2.0).prepare_inputs(torch.zeros(3, 1), torch.ones(3), c, uc)
    uc["cond_view"] = c["cond_view"].clone()
    _, _, c2 = VanillaCFG(scale=2.0).prepare_inputs(torch.zeros(3, 1), torch.ones(3), c, uc)
    assert c2["num_video_frames"] == 3


def test_identity_guider():
    c, uc = conds(2)
    x, s = torch.randn(2, 5), torch.ones(2)
    x2, s2, c2 = IdentityGuider().prepare_inputs(x, s, c, uc)
    assert x2 is x and s2 is s and c2 == c
    assert IdentityGuider()(x, s) is x


def test_linear_guider_blends_per_frame():
    """Two clips of T = 4 frames, distinct values per frame: frame t gets u + s_t (c - u)."""
    B, T = 2, 4
    guider = LinearPredictionGuider(max_scale=4.0, num_frames=T, min_scale=1.0)  # scales 1, 2, 3, 4
    u = torch.arange(B * T, dtype=torch.float32).reshape(B * T, 1, 1).expand(B * T, 2, 3)
    c = u + 1.0  # c - u = 1, so the output is u + s_t
    out = guider(torch.cat([u, c]), torch.ones(2 * B * T))
    assert out.shape == (B * T, 2, 3)
    want = u + torch.tensor([1.0, 2.0, 3.0, 4.0]).repeat(B).reshape(B * T, 1, 1)
    torch.testing.assert_close(out, want)


def test_linear_guider_rejects_wrong_rows():
    guider = LinearPredictionGuider(max_scale=2.0, num_frames=4)
    with pytest.raises(ValueError, match="num_frames=4"):
        guider(torch.zeros(2 * 6, 3), torch.ones(12))


def test_num_frames_unset_error():
    guider = instantiate_from_config(cfg("guiders.LinearPredictionGuider", max_scale=2.5, min_scale=1.0))
    with pytest.raises(ValueError, match=r"guider_config\.params\.num_frames"):
        guider(torch.zeros(4, 3), torch.ones(4))
    assert guider.frame_scales(num_frames=2).tolist() == [1.0, 2.5]
    guider.num_frames = 2  # what sampling scripts do after loading a config
    assert guider(torch.zeros(4, 3), torch.ones(4)).shape == (2, 3)


def test_triangle_periods_and_fusing():
    # period 0.5 over 5 frames at v = 0, .25, .5, .75, 1: tri = 0, 1, 0, 1, 0
    half = TrianglePredictionGuider(max_scale=3.0, num_frames=5, min_scale=1.0, period=0.5)
    torch.testing.assert_close(half.frame_scales(), torch.tensor([1.0, 3.0, 1.0, 3.0, 1.0]))
    # period 1: 0, .5, 1, .5, 0; fused with period 0.5
    profiles = {"max": [0, 1, 1, 1, 0], "mean": [0, 0.75, 0.5, 0.75, 0], "multiply": [0, 0.5, 0, 0.5, 0]}
    for fusing, profile in profiles.items():
        guider = TrianglePredictionGuider(max_scale=3.0, num_frames=5, period=[1.0, 0.5], period_fusing=fusing)
        torch.testing.assert_close(guider.frame_scales(), 1.0 + 2.0 * torch.tensor(profile), msg=fusing)
    with pytest.raises(ValueError, match="period_fusing"):
        TrianglePredictionGuider(max_scale=2.0, num_frames=5, period_fusing="min")


def test_trapezoid():
    guider = TrapezoidPredictionGuider(max_scale=3.0, num_frames=10, min_scale=2.0, edge_perc=0.3)
    torch.testing.assert_close(guider.frame_scales(), torch.tensor([2.0, 2.5, 3.0, 1.0, 1.0, 1.0, 1.0, 3.0, 2.5, 2.0]))


def test_spatiotemporal_layout_time_outer_view_inner():
    guider = SpatiotemporalPredictionGuider(max_scale=3.0, num_frames=6, num_views=3, min_scale=1.0)
    # T' = 2: time term 0.5 * (0, 1); view term 0.5 * tri(0, .5, 1) = 0.5 * (0, 1, 0)
    want = 1.0 + 2.0 * torch.tensor([0.0, 0.5, 0.0, 0.5, 1.0, 0.5])
    torch.testing.assert_close(guider.frame_scales(), want)
    with pytest.raises(ValueError, match="multiple of num_views"):
        SpatiotemporalPredictionGuider(max_scale=2.0, num_frames=7, num_views=3).frame_scales()


def test_guided_sampler_step_uses_uc_first():
    """One Euler step to sigma = 0 returns the guided x0 estimate: u + s (c - u) per frame."""
    T = 3
    sampler = instantiate_from_config(
        cfg(
            "sampling.EulerEDMSampler",
            discretization_config=cfg("discretizer.EDMDiscretization"),
            guider_config=cfg("guiders.LinearPredictionGuider", max_scale=3.0, num_frames=T),
            num_steps=1,
        )
    )

    def denoiser(x, sigma, cond):  # x0_hat = the row's "vector" value, broadcast
        return cond["vector"][:, :1].expand_as(x)

    c = {"vector": torch.full((T, 1), 5.0)}
    uc = {"vector": torch.full((T, 1), 1.0)}
    out = sampler(denoiser, torch.randn(T, 2), c, uc)
    want = 1.0 + torch.tensor([1.0, 2.0, 3.0])[:, None] * (5.0 - 1.0)
    torch.testing.assert_close(out, want.expand(T, 2))
