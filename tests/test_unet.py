"""Image U-Net and its blocks: attention maths, checkpointing, input errors, bottleneck output."""
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from sgm.modules.attention import CrossAttention, SpatialTransformer
from sgm.modules.diffusionmodules.openaimodel import ResBlock, TimestepEmbedSequential, UNetModel
from sgm.modules.diffusionmodules.util import GroupNorm32, checkpoint
from sgm.util import ConfigError

DATA = Path(__file__).parent / "data"


def mnist_params(**overrides) -> dict:
    """Network params of upstream's toy/mnist_cond.yaml (sequential label embedding, no attention levels)."""
    config = OmegaConf.load(DATA / "configs" / "mnist_cond.yaml")
    params = OmegaConf.to_container(config.model.params.network_config.params)
    params.update(overrides)
    return params


def mnist_inputs(batch: int = 2) -> dict:
    return {
        "x": torch.randn(batch, 1, 32, 32),
        "timesteps": torch.rand(batch),
        "y": torch.randn(batch, 128),
    }


def test_cross_attention_matches_softmax_formula():
    attn = CrossAttention(query_dim=8, context_dim=6, heads=2, dim_head=4)
    x, context = torch.randn(3, 5, 8), torch.randn(3, 7, 6)
    q = attn.to_q(x).view(3, 5, 2, 4).transpose(1, 2)
    k = attn.to_k(context).view(3, 7, 2, 4).transpose(1, 2)
    v = attn.to_v(context).view(3, 7, 2, 4).transpose(1, 2)
    weights = torch.softmax(q @ k.transpose(-1, -2) / 2.0, dim=-1)  # scale 1/sqrt(dim_head)
    expected = attn.to_out((weights @ v).transpose(1, 2).reshape(3, 5, 8))
    torch.testing.assert_close(attn(x, context), expected)
    assert attn.to_q.bias is None and attn.to_k.bias is None and attn.to_v.bias is None


def test_attention_splits_huge_batches(monkeypatch):
    import sgm.modules.attention as attention

    attn = CrossAttention(query_dim=8, heads=2, dim_head=4)
    x = torch.randn(5, 3, 8)
    expected = attn(x)
    monkeypatch.setattr(attention, "MAX_ATTENTION_BATCH", 2)
    torch.testing.assert_close(attn(x), expected)


def test_unknown_attention_type_is_named():
    with pytest.raises(ConfigError, match="flash-v9"):
        SpatialTransformer(64, 2, 32, attn_type="flash-v9")
    for name in ("softmax", "softmax-xformers", "vanilla", "vanilla-xformers"):
        SpatialTransformer(32, 1, 32, attn_type=name)


def test_spatial_transformer_starts_as_identity_and_keeps_upstream_keys():
    block = SpatialTransformer(32, n_heads=2, d_head=16, context_dim=12, use_linear=True)
    x = torch.randn(2, 32, 4, 4)
    torch.testing.assert_close(block(x, torch.randn(2, 3, 12)), x)  # zero-initialised proj_out
    keys = set(block.state_dict())
    assert {"norm.weight", "proj_in.weight", "proj_out.weight", "transformer_blocks.0.ff.net.0.proj.weight",
            "transformer_blocks.0.ff.net.2.weight", "transformer_blocks.0.attn2.to_out.0.bias"} <= keys
    assert block.transformer_blocks[0].ff.net[0].proj.out_features == 8 * 32


def test_group_norm32_computes_in_float32():
    norm = GroupNorm32(2, 4)
    x = torch.randn(2, 4, 3, 3).to(torch.bfloat16)
    out = norm(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, norm(x.float()).to(torch.bfloat16))


def test_checkpoint_gives_parameter_grads_when_no_input_requires_grad():
    # Upstream's re-entrant checkpoint silently drops these (partial / adapter training trap).
    layer = torch.nn.Linear(3, 3)
    checkpoint(layer, torch.randn(2, 3), enabled=True).sum().backward()
    assert layer.weight.grad is not None


def test_timestep_embed_sequential_hands_each_block_its_inputs():
    block = TimestepEmbedSequential(
        torch.nn.Conv2d(32, 32, 1), ResBlock(32, 16, 0.0), SpatialTransformer(32, 1, 32, context_dim=8)
    )
    out = block(torch.randn(2, 32, 4, 4), torch.randn(2, 16), context=torch.randn(2, 3, 8))
    assert out.shape == (2, 32, 4, 4)


def test_resblock_with_scale_shift_and_resampling():
    emb = torch.randn(2, 16)
    x = torch.randn(2, 32, 8, 8)
    assert ResBlock(32, 16, 0.0, out_channels=64, use_scale_shift_norm=True)(x, emb).shape == (2, 64, 8, 8)
    assert ResBlock(32, 16, 0.0, down=True)(x, emb).shape == (2, 32, 4, 4)
    assert ResBlock(32, 16, 0.0, up=True)(x, emb).shape == (2, 32, 16, 16)
    assert ResBlock(32, 16, 0.0, skip_t_emb=True).emb_layers is None


def test_mnist_unet_forward_and_bottleneck():
    net = UNetModel(**mnist_params())
    inputs = mnist_inputs()
    out = net(**inputs)
    assert out.shape == (2, 1, 32, 32)
    out2, h_mid = net(**inputs, return_bottleneck=True)
    torch.testing.assert_close(out2, out)
    assert h_mid.shape == (2, 64, 8, 8)  # channel_mult [1, 2, 2] -> 64 channels at 1/4 resolution
    assert set(k.split(".")[0] for k in net.state_dict()) == {
        "time_embed", "label_emb", "input_blocks", "middle_block", "output_blocks", "out"
    }
    assert "label_emb.0.0.weight" in net.state_dict() and "label_emb.0.2.weight" in net.state_dict()
    assert "middle_block.1.transformer_blocks.0.attn1.to_q.weight" in net.state_dict()


def test_checkpointing_changes_neither_outputs_nor_gradients():
    plain = UNetModel(**mnist_params(use_checkpoint=False))
    checkpointed = UNetModel(**mnist_params(use_checkpoint=True))
    checkpointed.load_state_dict(plain.state_dict())
    for module in (plain.out[-1], checkpointed.out[-1]):  # make the zero-initialised head contribute
        torch.nn.init.constant_(module.weight, 0.01)
    inputs = mnist_inputs()
    results = []
    for net in (plain, checkpointed):
        net.zero_grad()
        out = net(**inputs)
        (out**2).sum().backward()
        results.append((out, {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}))
    torch.testing.assert_close(results[1][0], results[0][0])
    assert results[0][1].keys() == results[1][1].keys() and len(results[0][1]) > 100
    for name, grad in results[0][1].items():
        torch.testing.assert_close(results[1][1][name], grad, msg=name)


def test_cross_attention_unet_with_context():
    net = UNetModel(
        in_channels=4,
        model_channels=32,
        out_channels=4,
        num_res_blocks=1,
        attention_resolutions=[1, 2],
        channel_mult=[1, 2],
        num_heads=2,
        context_dim=16,
        num_classes=10,
        use_linear_in_transformer=True,
        disable_self_attentions=[True, False],
        transformer_depth=[1, 2],
    )
    out = net(torch.randn(2, 4, 8, 8), torch.rand(2), context=torch.randn(2, 3, 16), y=torch.tensor([1, 7]))
    assert out.shape == (2, 4, 8, 8)
    assert net.input_blocks[1][1].transformer_blocks[0].attn1.to_k.in_features == 16  # self-attn disabled
    assert len(net.input_blocks[3][1].transformer_blocks) == 2


@pytest.mark.parametrize(
    "change, message",
    [
        ({"x": torch.randn(2, 4, 32, 32)}, r"expects x with 1 channels \(B, 1, H, W\), got \(2, 4, 32, 32\)"),
        ({"x": torch.randn(2, 1, 32)}, r"expects x with 1 channels \(B, 1, H, W\), got \(2, 1, 32\)"),
        ({"x": torch.randn(2, 1, 30, 30)}, "divisible by 4"),
        ({"y": None}, "needs y"),
        ({"y": torch.randn(3, 128)}, "one row per row of x"),
        ({"timesteps": torch.rand(2, 1)}, r"timesteps of shape \(2,\)"),
        ({"context": torch.randn(2, 1, 8)}, "built without context_dim"),
    ],
)
def test_bad_inputs_raise_clear_errors(change, message):
    net = UNetModel(**mnist_params())
    with pytest.raises(ValueError, match=message):
        net(**{**mnist_inputs(), **change})


def test_bad_configs_raise_config_errors():
    with pytest.raises(ConfigError, match="num_heads or num_head_channels"):
        UNetModel(**mnist_params(num_head_channels=-1))
    with pytest.raises(ConfigError, match="adm_in_channels"):
        UNetModel(**mnist_params(num_classes=None))
    with pytest.raises(ConfigError, match="num_res_blocks has 2 entries"):
        UNetModel(**mnist_params(num_res_blocks=[1, 2]))
    with pytest.raises(ConfigError, match="num_heads_upsample"):
        UNetModel(**mnist_params(num_heads_upsample=4))
