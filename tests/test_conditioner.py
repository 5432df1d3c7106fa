"""GeneralConditioner: routing, dropout (images per row, videos per clip), zeroing, uc, freezing, errors."""
import pytest
import torch
from torch import nn

from sgm.modules import GeneralConditioner
from sgm.modules.encoders.modules import AbstractEmbModel, MissingBatchKeyError
from sgm.util import ConfigError

IDENTITY = "sgm.modules.encoders.modules.IdentityEncoder"
HERE = __name__  # test-local embedders are addressed as f"{HERE}.Class"


class FrameAndClipEmbedder(AbstractEmbModel):
    """Returns a per-frame rank-4 tensor and a per-clip rank-2 tensor (like latents + sigma_cond)."""

    def __init__(self, num_frames: int):
        super().__init__()
        self.num_frames = num_frames

    def forward(self, x):  # x: ((b t), 1)
        per_frame = x[:, :, None, None]  # ((b t), 1, 1, 1)
        per_clip = x[:: self.num_frames]  # (b, 1)
        return per_frame, per_clip


class SumEmbedder(AbstractEmbModel):
    """Two inputs (input_keys) -> their sum."""

    def forward(self, a, b):
        return a + b


class FailingEmbedder(AbstractEmbModel):
    def forward(self, x):
        raise RuntimeError("boom")


class NotAnEmbedder(nn.Module):
    pass


def entry(input_key, target=IDENTITY, **extra):
    return {"target": target, "input_key": input_key, **extra}


def test_routing_by_rank_and_concatenation_order():
    cond = GeneralConditioner([
        entry("v1"), entry("x1"), entry("v2"), entry("c1"), entry("x2"), entry("c2"),
    ])
    batch = {
        "v1": torch.full((2, 3), 1.0), "v2": torch.full((2, 5), 2.0),
        "x1": torch.full((2, 4, 6), 3.0), "x2": torch.full((2, 4, 2), 4.0),
        "c1": torch.full((2, 1, 8, 8), 5.0), "c2": torch.full((2, 3, 8, 8), 6.0),
    }
    out = cond(batch)
    assert set(out) == {"vector", "crossattn", "concat"}
    assert out["vector"].shape == (2, 8)
    assert torch.equal(out["vector"], torch.cat([batch["v1"], batch["v2"]], dim=1))
    assert out["crossattn"].shape == (2, 4, 8)
    assert torch.equal(out["crossattn"], torch.cat([batch["x1"], batch["x2"]], dim=2))
    assert out["concat"].shape == (2, 4, 8, 8)
    assert torch.equal(out["concat"], torch.cat([batch["c1"], batch["c2"]], dim=1))


def test_tuple_outputs_route_each_element():
    cond = GeneralConditioner([entry("x", f"{HERE}.FrameAndClipEmbedder", params={"num_frames": 1})])
    out = cond({"x": torch.arange(3.0)[:, None]})
    assert out["concat"].shape == (3, 1, 1, 1)
    assert out["vector"].shape == (3, 1)


def test_explicit_output_key_str_and_list():
    cond = GeneralConditioner([
        entry("view", output_key="cond_view"),
        entry("x", f"{HERE}.FrameAndClipEmbedder", params={"num_frames": 1}, output_key=[None, "extra"]),
        entry("view2", output_key="cond_view"),
    ])
    out = cond({
        "view": torch.ones(2, 4, 3, 3), "view2": torch.zeros(2, 1, 3, 3), "x": torch.ones(2, 1),
    })
    assert set(out) == {"cond_view", "concat", "extra"}
    assert out["cond_view"].shape == (2, 5, 3, 3)  # concatenated along dim 1
    assert out["concat"].shape == (2, 1, 1, 1) and out["extra"].shape == (2, 1)


def test_input_keys_embedder_gets_all_inputs():
    cond = GeneralConditioner([{"target": f"{HERE}.SumEmbedder", "input_keys": ["a", "b"]}])
    out = cond({"a": torch.ones(2, 3), "b": torch.full((2, 3), 2.0)})
    assert torch.equal(out["vector"], torch.full((2, 3), 3.0))
    zeroed = cond({"a": torch.ones(2, 3), "b": torch.ones(2, 3)}, force_zero_embeddings=["b"])
    assert torch.equal(zeroed["vector"], torch.zeros(2, 3))


def test_rank_without_slot_needs_output_key():
    cond = GeneralConditioner([entry("x")])
    with pytest.raises(ValueError, match="rank 5"):
        cond({"x": torch.ones(1, 1, 1, 1, 1)})


def test_force_zero_embeddings_only_listed_keys():
    cond = GeneralConditioner([entry("a"), entry("b")])
    out = cond({"a": torch.ones(2, 2), "b": torch.ones(2, 3)}, force_zero_embeddings=["b"])
    assert torch.equal(out["vector"], torch.cat([torch.ones(2, 2), torch.zeros(2, 3)], dim=1))


def test_ucg_dropout_per_row_for_images():
    rate, n = 0.3, 4000
    cond = GeneralConditioner([entry("x", ucg_rate=rate)])
    out = cond({"x": torch.ones(n, 2)})["vector"]
    dropped = (out == 0).all(dim=1)
    assert ((out == 0) | (out == 1)).all()
    assert abs(dropped.float().mean().item() - rate) < 0.03  # ~4.6 sigma
    # Rows are independent: neighbouring rows disagree about half the time that p(1-p) predicts.
    disagree = (dropped[1:] != dropped[:-1]).float().mean().item()
    assert abs(disagree - 2 * rate * (1 - rate)) < 0.04


def test_ucg_dropout_whole_clips_for_video_batches():
    rate, clips, frames = 0.4, 1000, 5
    cond = GeneralConditioner([
        entry("per_frame", ucg_rate=rate),
        entry("x", f"{HERE}.FrameAndClipEmbedder", params={"num_frames": frames}, ucg_rate=rate,
              output_key=[None, "clip_vector"]),
        entry("per_clip", ucg_rate=rate),
    ])
    batch = {
        "per_frame": torch.ones(clips * frames, 1),
        "x": torch.ones(clips * frames, 1),
        "per_clip": torch.ones(clips, 1, 1),
        "num_video_frames": frames,
    }
    out = cond(batch)
    frame_keep = out["vector"][:, 0].reshape(clips, frames)  # embedder 0
    # All frames of a clip share one decision.
    assert (frame_keep == frame_keep[:, :1]).all()
    assert abs((frame_keep[:, 0] == 0).float().mean().item() - rate) < 0.05
    # One embedder's per-frame and per-clip outputs share their per-clip decisions.
    concat_keep = out["concat"][:, 0, 0, 0].reshape(clips, frames)
    assert (concat_keep == concat_keep[:, :1]).all()
    assert torch.equal(concat_keep[:, 0], out["clip_vector"][:, 0])
    # A per-clip output (b rows) gets one decision per row, at the same rate.
    clip_keep = out["crossattn"][:, 0, 0]
    assert abs((clip_keep == 0).float().mean().item() - rate) < 0.05
    # Different embedders decide independently.
    assert not torch.equal(frame_keep[:, 0], concat_keep[:, 0])


def test_ucg_dropout_is_seeded_by_torch():
    cond = GeneralConditioner([entry("x", ucg_rate=0.5)])
    batch = {"x": torch.ones(64, 1)}
    torch.manual_seed(123)
    first = cond(batch)["vector"]
    torch.manual_seed(123)
    assert torch.equal(first, cond(batch)["vector"])


def test_legacy_ucg_value_replaces_inputs_without_mutating_batch():
    cond = GeneralConditioner([entry("ids", ucg_rate=0.5, legacy_ucg_value=0, output_key="ids")])
    ids = torch.arange(1, 2001)
    out = cond({"ids": ids})["ids"]
    replaced = out == 0
    assert abs(replaced.float().mean().item() - 0.5) < 0.05
    assert torch.equal(out[~replaced], ids[~replaced])  # kept rows untouched, no output mask
    assert torch.equal(ids, torch.arange(1, 2001))  # the caller's batch is not modified
    _, uc = cond.get_unconditional_conditioning({"ids": ids})
    assert torch.equal(uc["ids"], ids)  # no replacement while computing (c, uc)


def test_get_unconditional_conditioning_turns_dropout_off_and_restores():
    cond = GeneralConditioner([entry("a", ucg_rate=1.0), entry("b", ucg_rate=0.7)])
    batch = {"a": torch.ones(8, 2), "b": torch.ones(8, 3)}
    c, uc = cond.get_unconditional_conditioning(batch, force_uc_zero_embeddings=["b"])
    assert torch.equal(c["vector"], torch.ones(8, 5))
    assert torch.equal(uc["vector"], torch.cat([torch.ones(8, 2), torch.zeros(8, 3)], dim=1))
    assert [e.ucg_rate for e in cond.embedders] == [1.0, 0.7]
    c2, uc2 = cond.get_unconditional_conditioning(
        batch, batch_uc={"a": torch.zeros(8, 2), "b": torch.ones(8, 3)}, force_cond_zero_embeddings=["a"]
    )
    assert torch.equal(c2["vector"][:, :2], torch.zeros(8, 2))
    assert torch.equal(uc2["vector"][:, 2:], torch.ones(8, 3))


def test_get_unconditional_conditioning_restores_rates_on_error():
    cond = GeneralConditioner([
        entry("a", ucg_rate=0.25), entry("b", f"{HERE}.FailingEmbedder", ucg_rate=0.5),
    ])
    with pytest.raises(RuntimeError, match="boom"):
        cond.get_unconditional_conditioning({"a": torch.ones(2, 2), "b": torch.ones(2, 2)})
    assert [e.ucg_rate for e in cond.embedders] == [0.25, 0.5]


CLASS_EMBEDDER = "sgm.modules.encoders.modules.ClassEmbedder"


def test_trainable_vs_frozen():
    cond = GeneralConditioner([
        entry("cls", CLASS_EMBEDDER, params={"embed_dim": 4, "n_classes": 10}, is_trainable=True),
        entry("cls", CLASS_EMBEDDER, params={"embed_dim": 3, "n_classes": 10}),
    ])
    trainable, frozen = cond.embedders
    assert trainable.is_trainable is True and frozen.is_trainable is False
    assert all(p.requires_grad for p in trainable.parameters())
    assert not any(p.requires_grad for p in frozen.parameters())
    cond.train()
    assert trainable.training and not frozen.training and not frozen.embedding.training

    frozen_before = frozen.embedding.weight.clone()
    trainable_before = trainable.embedding.weight.clone()
    optimizer = torch.optim.SGD([p for p in cond.parameters() if p.requires_grad], lr=1.0)
    out = cond({"cls": torch.tensor([1, 2, 3])})["vector"]
    assert out.shape == (3, 7)
    out.square().sum().backward()
    optimizer.step()
    assert frozen.embedding.weight.grad is None
    assert torch.equal(frozen.embedding.weight, frozen_before)  # bit-identical after a step
    assert not torch.equal(trainable.embedding.weight, trainable_before)


def test_frozen_embedder_runs_without_grad():
    cond = GeneralConditioner([entry("x", CLASS_EMBEDDER, params={"embed_dim": 2, "n_classes": 4})])
    out = cond({"x": torch.tensor([0, 1])})["vector"]
    assert not out.requires_grad and out.grad_fn is None


def test_missing_batch_key_names_key_and_embedder():
    cond = GeneralConditioner([entry("a"), entry("cond_frames")])
    with pytest.raises(KeyError) as info:
        cond({"a": torch.ones(1, 1), "other": 1})
    assert isinstance(info.value, MissingBatchKeyError)
    message = str(info.value)
    assert "conditioner embedder 1 (IdentityEncoder)" in message
    assert "'cond_frames'" in message and "['a', 'other']" in message


def test_missing_input_key_config_error_names_entry():
    with pytest.raises(ConfigError, match=r"emb_models\[1\].*IdentityEncoder.*input_key"):
        GeneralConditioner([entry("a"), {"target": IDENTITY}])


def test_non_embedder_target_rejected():
    with pytest.raises(ConfigError, match="AbstractEmbModel"):
        GeneralConditioner([entry("a", f"{HERE}.NotAnEmbedder")])


def test_empty_conditioner_returns_empty_dict():
    assert GeneralConditioner([])({"anything": torch.ones(1)}) == {}
