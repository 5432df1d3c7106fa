"""Our VideoUNet <-> diffusers' `UNetSpatioTemporalConditionModel`: config and state-dict keys.

Both are the SVD U-Net; only the names differ. Module prefixes (level l, res block j, i = L-1-l):

    ours                                   diffusers
    input_blocks.0.0                       conv_in
    time_embed.{0,2}                       time_embedding.linear_{1,2}
    label_emb.0.{0,2}                      add_embedding.linear_{1,2}
    input_blocks.<n>.0  (res block j)      down_blocks.l.resnets.j
    input_blocks.<n>.1  (attention j)      down_blocks.l.attentions.j
    input_blocks.<n>.0.op (downsample)     down_blocks.l.downsamplers.0.conv
    middle_block.{0,1,2}                   mid_block.{resnets.0, attentions.0, resnets.1}
    output_blocks.<n>.0 / .1               up_blocks.i.resnets.j / up_blocks.i.attentions.j
    output_blocks.<n>.<last>.conv          up_blocks.i.upsamplers.0.conv
    out.{0,2}                              conv_norm_out, conv_out

inside a res block: in_layers.{0,2} -> spatial_res_block.{norm1,conv1}, emb_layers.1 -> .time_emb_proj,
out_layers.{0,3} -> .{norm2,conv2}, skip_connection -> .conv_shortcut, time_stack.<same> ->
temporal_res_block.<same>; inside an attention block: time_stack.k -> temporal_transformer_blocks.k,
time_pos_embed.{0,2} -> time_pos_embed.linear_{1,2}; every other leaf keeps its name.

Conditioning: our `context` (B*T, 1, D) is diffusers' `encoder_hidden_states` (B, 1, D) per clip; our
`y` is `add_time_proj(added_time_ids)` flattened, i.e. the sinusoidal embeddings of
(fps_id, motion_bucket_id, cond_aug) concatenated, which is what our ConcatTimestepEmbedderND
conditioner produces; the concat latent is channel-concatenated to the noisy input in both.

Only networks that diffusers can express convert; `diffusers_config` names the first option that
does not fit.
"""
from __future__ import annotations

from typing import Any

import torch

from sgm.modules.diffusionmodules.openaimodel import UNetLayout, make_layout
from sgm.util import ConfigError

NETWORK_TARGET = "sgm.modules.diffusionmodules.video_model.VideoUNet"
RESBLOCK_LEAVES = {  # ours -> diffusers, inside one VideoResBlock
    "in_layers.0.": "spatial_res_block.norm1.",
    "in_layers.2.": "spatial_res_block.conv1.",
    "emb_layers.1.": "spatial_res_block.time_emb_proj.",
    "out_layers.0.": "spatial_res_block.norm2.",
    "out_layers.3.": "spatial_res_block.conv2.",
    "skip_connection.": "spatial_res_block.conv_shortcut.",
    "time_stack.in_layers.0.": "temporal_res_block.norm1.",
    "time_stack.in_layers.2.": "temporal_res_block.conv1.",
    "time_stack.emb_layers.1.": "temporal_res_block.time_emb_proj.",
    "time_stack.out_layers.0.": "temporal_res_block.norm2.",
    "time_stack.out_layers.3.": "temporal_res_block.conv2.",
    "time_mixer.": "time_mixer.",
}
ATTENTION_LEAVES = {  # ours -> diffusers, inside one SpatialVideoTransformer (other leaves unchanged)
    "time_stack.": "temporal_transformer_blocks.",
    "time_pos_embed.0.": "time_pos_embed.linear_1.",
    "time_pos_embed.2.": "time_pos_embed.linear_2.",
}
TOP_LEVEL = {  # ours -> diffusers, outside the blocks
    "input_blocks.0.0.": "conv_in.",
    "time_embed.0.": "time_embedding.linear_1.",
    "time_embed.2.": "time_embedding.linear_2.",
    "label_emb.0.0.": "add_embedding.linear_1.",
    "label_emb.0.2.": "add_embedding.linear_2.",
    "out.0.": "conv_norm_out.",
    "out.2.": "conv_out.",
}
# VideoUNet options diffusers hard-codes, with the value it uses (None: must be unset)
FIXED = {
    "num_classes": "sequential",
    "merge_strategy": "learned_with_images",
    "video_kernel_size": [3, 1, 1],
    "use_linear_in_transformer": True,
    "use_spatial_context": True,
    "extra_ff_mix_layer": True,
    "disable_temporal_crossattention": False,
    "use_scale_shift_norm": False,
    "resblock_updown": False,
    "conv_resample": True,
    "max_ddpm_temb_period": 10000,
    "transformer_depth_middle": None,
    "time_context_dim": None,
}
DEFAULTS = {"num_classes": None, "merge_strategy": "fixed", "video_kernel_size": 3, "use_linear_in_transformer": False,
            "use_spatial_context": False, "extra_ff_mix_layer": False, "disable_temporal_crossattention": False,
            "use_scale_shift_norm": False, "resblock_updown": False, "conv_resample": True,
            "max_ddpm_temb_period": 10000, "transformer_depth_middle": None, "time_context_dim": None,
            "transformer_depth": 1, "num_heads": -1, "num_head_channels": -1, "channel_mult": (1, 2, 4, 8)}


def network_layout(params: dict) -> UNetLayout:
    """Our UNetLayout of a VideoUNet's params (checked against what diffusers can express)."""
    p = {**DEFAULTS, **dict(params)}
    for name, wanted in FIXED.items():
        value = p[name]
        value = list(value) if isinstance(value, (list, tuple)) else value
        if name == "transformer_depth_middle" and value is not None:
            depth = p["transformer_depth"]
            last = depth if isinstance(depth, int) else list(depth)[-1]
            if value == last:
                continue
        if name == "time_context_dim" and value in (None, p.get("context_dim")):
            continue
        if value != wanted:
            raise ConfigError(f"network_config.params.{name}={value!r}: diffusers' UNetSpatioTemporalConditionModel "
                              f"only expresses {name}={wanted!r}")
    if p.get("adm_in_channels") is None or p.get("context_dim") is None:
        raise ConfigError("network_config.params: diffusers needs adm_in_channels (added_time_ids) and context_dim "
                          "(encoder_hidden_states)")
    layout = make_layout(
        model_channels=p["model_channels"],
        channel_mult=p["channel_mult"],
        num_res_blocks=p["num_res_blocks"],
        attention_resolutions=p["attention_resolutions"],
        transformer_depth=p["transformer_depth"],
        transformer_depth_middle=p["transformer_depth_middle"],
        num_heads=p["num_heads"],
        num_head_channels=p["num_head_channels"],
        num_attention_blocks=None,
        conv_resample=True,
        resblock_updown=False,
    )
    widths = [m * layout.model_channels for m in layout.channel_mult]
    odd = [w for w in widths if w % 32]
    if odd:
        raise ConfigError(f"network_config.params: widths {widths} must be multiples of 32 (GroupNorm(32))")
    return layout


def attention_levels(layout: UNetLayout) -> list[bool]:
    return [2 ** level in layout.attention_resolutions for level in range(len(layout.channel_mult))]


def diffusers_config(
    params: dict,  # our VideoUNet's network_config.params
    addition_time_embed_dim: int,  # width of each added-time-id embedding (our ConcatTimestepEmbedderND outdim)
    num_frames: int = 14,  # diffusers' default clip length (config only)
    sample_size: int | None = None,  # latent size (config only)
) -> dict[str, Any]:
    """diffusers' config.json for the same network."""
    layout = network_layout(params)
    attn = attention_levels(layout)
    widths = [m * layout.model_channels for m in layout.channel_mult]
    heads = [layout.heads(w)[0] for w in widths]
    if params["adm_in_channels"] % addition_time_embed_dim:
        raise ConfigError(f"adm_in_channels={params['adm_in_channels']} is not a multiple of the added-time-id "
                          f"embedding width {addition_time_embed_dim}")
    if layout.transformer_depth_middle != layout.transformer_depth[-1]:
        raise ConfigError("diffusers' mid block uses the last level's transformer depth")
    return {
        "_class_name": "UNetSpatioTemporalConditionModel",
        "sample_size": sample_size,
        "in_channels": int(params["in_channels"]),
        "out_channels": int(params["out_channels"]),
        "down_block_types": ["CrossAttnDownBlockSpatioTemporal" if a else "DownBlockSpatioTemporal" for a in attn],
        "up_block_types": ["CrossAttnUpBlockSpatioTemporal" if a else "UpBlockSpatioTemporal" for a in attn[::-1]],
        "block_out_channels": widths,
        "addition_time_embed_dim": int(addition_time_embed_dim),
        "projection_class_embeddings_input_dim": int(params["adm_in_channels"]),
        "layers_per_block": list(layout.num_res_blocks),
        "cross_attention_dim": int(params["context_dim"]),
        "transformer_layers_per_block": list(layout.transformer_depth),
        "num_attention_heads": heads,
        "num_frames": int(num_frames),
    }


def block_prefixes(layout: UNetLayout) -> dict[str, tuple[str, str]]:
    """ours block prefix -> (diffusers prefix, kind: 'res' | 'attn' | 'down' | 'up')."""
    attn = attention_levels(layout)
    levels = len(layout.channel_mult)
    out: dict[str, tuple[str, str]] = {}
    n = 1
    for level in range(levels):
        for j in range(layout.num_res_blocks[level]):
            out[f"input_blocks.{n}.0."] = (f"down_blocks.{level}.resnets.{j}.", "res")
            if attn[level]:
                out[f"input_blocks.{n}.1."] = (f"down_blocks.{level}.attentions.{j}.", "attn")
            n += 1
        if level != levels - 1:
            out[f"input_blocks.{n}.0.op."] = (f"down_blocks.{level}.downsamplers.0.conv.", "down")
            n += 1
    out["middle_block.0."] = ("mid_block.resnets.0.", "res")
    out["middle_block.1."] = ("mid_block.attentions.0.", "attn")
    out["middle_block.2."] = ("mid_block.resnets.1.", "res")
    n = 0
    for i, level in enumerate(reversed(range(levels))):
        for j in range(layout.num_res_blocks[level] + 1):
            out[f"output_blocks.{n}.0."] = (f"up_blocks.{i}.resnets.{j}.", "res")
            if attn[level]:
                out[f"output_blocks.{n}.1."] = (f"up_blocks.{i}.attentions.{j}.", "attn")
            if level and j == layout.num_res_blocks[level]:
                out[f"output_blocks.{n}.{1 + attn[level]}.conv."] = (f"up_blocks.{i}.upsamplers.0.conv.", "up")
            n += 1
    return out


LEAVES = {"res": RESBLOCK_LEAVES, "attn": ATTENTION_LEAVES, "down": {}, "up": {}}


def _rename(key: str, table: dict[str, str]) -> str | None:
    """`key` with its longest matching prefix in `table` replaced, or None."""
    match = max((p for p in table if key.startswith(p)), key=len, default=None)
    return None if match is None else table[match] + key[len(match):]


def key_map(layout: UNetLayout, our_keys: list[str]) -> dict[str, str]:
    """ours -> diffusers for every key in `our_keys`; a key with no place is a KeyError naming it."""
    blocks = block_prefixes(layout)
    out = {}
    for key in our_keys:
        top = _rename(key, TOP_LEVEL)
        if top is not None:
            out[key] = top
            continue
        prefix = max((p for p in blocks if key.startswith(p)), key=len, default=None)
        if prefix is None:
            raise KeyError(f"{key}: no diffusers counterpart (is this a VideoUNet state dict?)")
        theirs, kind = blocks[prefix]
        leaf = key[len(prefix):]
        out[key] = theirs + (_rename(leaf, LEAVES[kind]) or leaf)
    return out


def to_diffusers(state_dict: dict[str, torch.Tensor], layout: UNetLayout) -> dict[str, torch.Tensor]:
    """Our VideoUNet weights (keys relative to the network) under diffusers' names."""
    names = key_map(layout, list(state_dict))
    return {names[k]: v for k, v in state_dict.items()}


def from_diffusers(state_dict: dict[str, torch.Tensor], layout: UNetLayout,
                   our_keys: list[str]) -> dict[str, torch.Tensor]:
    """diffusers' weights under our names; `our_keys` (the network's state-dict keys) fixes the inverse."""
    inverse = {theirs: ours for ours, theirs in key_map(layout, our_keys).items()}
    unknown = sorted(set(state_dict) - set(inverse))
    if unknown:
        raise KeyError(f"{len(unknown)} diffusers keys have no place in the VideoUNet, e.g. {unknown[:5]}")
    return {inverse[k]: v for k, v in state_dict.items()}


def added_time_embedding(added_time_ids: torch.Tensor, dim: int) -> torch.Tensor:
    """(B, n) ids -> (B, n*dim) = our conditioner's vector `y`, diffusers' add_time_proj flattened."""
    from sgm.modules.diffusionmodules.util import timestep_embedding

    rows, n = added_time_ids.shape
    return timestep_embedding(added_time_ids.flatten(), dim).reshape(rows, n * dim)  # cos | sin per id


__all__ = ["added_time_embedding", "diffusers_config", "from_diffusers", "key_map", "network_layout", "to_diffusers"]
