"""The image U-Net (`UNetModel`) and the blocks and layout it shares with the video U-Net.

Parameter names follow upstream (`input_blocks.<i>.<j>`, `in_layers.2`, `emb_layers.1`, `label_emb.0.0`,
...) so released checkpoints load with `strict=True`. The layout (which block goes where) lives in
`UNetLayout` + `build_unet_blocks`; the block types come from a block factory (`ImageBlocks` here,
`VideoBlocks` in video_model.py), so the two U-Nets share one implementation of the layout.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence, Union

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from sgm.modules.attention import SpatialTransformer, check_attention_type
from sgm.modules.diffusionmodules.util import (
    avg_pool_nd,
    checkpoint,
    conv_nd,
    linear,
    normalization,
    timestep_embedding,
    zero_module,
)
from sgm.util import ConfigError, default

KernelSize = Union[int, Sequence[int]]


class Timestep(nn.Module):
    """Sinusoidal embedding of scalars as a module (no parameters): (N,) -> (N, dim)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return timestep_embedding(t, self.dim)


class TimestepEmbedSequential(nn.Sequential):
    """Runs its children in order, handing each one, by keyword, the inputs its class lists in
    `block_inputs` (ResBlock: emb; SpatialTransformer: context; the video blocks also take the frame
    count and image-only flags; the SV4D blocks the reference views). Children without
    `block_inputs` (convs, Up/Downsample) get only x; an input the caller did not give arrives as None."""

    def forward(
        self,
        x: torch.Tensor,  # (N, C, ...) features
        emb: torch.Tensor,  # (N, E) time (+ label) embedding
        **inputs: object,  # context, time_context, num_video_frames, image_only_indicator, cond_view, ...
    ) -> torch.Tensor:
        inputs["emb"] = emb
        for layer in self:
            x = layer(x, **{name: inputs.get(name) for name in getattr(layer, "block_inputs", ())})
        return x


class Upsample(nn.Module):
    """Nearest-neighbour x2 (spatial dims only when dims=3), then an optional 3x3 conv (key `conv`)."""

    def __init__(
        self,
        channels: int,  # input channels
        use_conv: bool,  # follow the upsampling by a conv
        dims: int = 2,  # 1, 2 or 3 (3 = keep the first, temporal, axis)
        out_channels: int | None = None,  # None = channels
        padding: int = 1,  # conv padding
    ):
        super().__init__()
        self.channels = channels
        self.dims = dims
        out_channels = default(out_channels, channels)
        if not use_conv and out_channels != channels:
            raise ConfigError(f"Upsample without conv cannot change channels ({channels} -> {out_channels})")
        self.conv = conv_nd(dims, channels, out_channels, 3, padding=padding) if use_conv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.channels:
            raise ValueError(f"Upsample expects {self.channels} channels, got shape {tuple(x.shape)}")
        if self.dims == 3:
            x = F.interpolate(x, (x.shape[2], x.shape[3] * 2, x.shape[4] * 2), mode="nearest")
        else:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        return x if self.conv is None else self.conv(x)


class Downsample(nn.Module):
    """Stride-2 3x3 conv (key `op`) or average pooling; with dims=3 only the spatial axes shrink."""

    def __init__(
        self,
        channels: int,  # input channels
        use_conv: bool,  # strided conv instead of average pooling
        dims: int = 2,  # 1, 2 or 3
        out_channels: int | None = None,  # None = channels
        padding: int = 1,  # conv padding
    ):
        super().__init__()
        self.channels = channels
        out_channels = default(out_channels, channels)
        stride = (1, 2, 2) if dims == 3 else 2
        if use_conv:
            self.op = conv_nd(dims, channels, out_channels, 3, stride=stride, padding=padding)
        elif out_channels != channels:
            raise ConfigError(f"Downsample without conv cannot change channels ({channels} -> {out_channels})")
        else:
            self.op = avg_pool_nd(dims, kernel_size=stride, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.channels:
            raise ValueError(f"Downsample expects {self.channels} channels, got shape {tuple(x.shape)}")
        return self.op(x)


class ResBlock(nn.Module):
    """Residual block conditioned on an embedding:
    h = in_layers(x); h = out_layers(h + emb_layers(emb))  (or scale/shift of the norm); skip(x) + h.
    """

    block_inputs = ("emb",)  # what TimestepEmbedSequential hands to this block

    def __init__(
        self,
        channels: int,  # input channels
        emb_channels: int,  # embedding width
        dropout: float,  # dropout before the last conv
        out_channels: int | None = None,  # None = channels
        use_conv: bool = False,  # skip path: kernel-size conv instead of 1x1 when channels change
        use_scale_shift_norm: bool = False,  # emb gives scale and shift of the out norm (FiLM)
        dims: int = 2,  # 1, 2 or 3
        use_checkpoint: bool = False,  # recompute activations in backward
        up: bool = False,  # upsample x2 inside the block
        down: bool = False,  # downsample x2 inside the block
        kernel_size: KernelSize = 3,  # conv kernel, int or one per dim (e.g. [3, 1, 1])
        exchange_temb_dims: bool = False,  # emb is (B, T, E) for features (B, C, T, H, W)
        skip_t_emb: bool = False,  # no embedding at all (no emb_layers)
    ):
        super().__init__()
        out_channels = default(out_channels, channels)
        kernel_size = kernel_size if isinstance(kernel_size, int) else tuple(kernel_size)
        padding = kernel_size // 2 if isinstance(kernel_size, int) else tuple(k // 2 for k in kernel_size)
        self.use_checkpoint = use_checkpoint
        self.use_scale_shift_norm = use_scale_shift_norm
        self.exchange_temb_dims = exchange_temb_dims
        self.in_layers = nn.Sequential(
            normalization(channels), nn.SiLU(), conv_nd(dims, channels, out_channels, kernel_size, padding=padding)
        )
        self.h_upd, self.x_upd = nn.Identity(), nn.Identity()
        if up:
            self.h_upd, self.x_upd = Upsample(channels, False, dims), Upsample(channels, False, dims)
        elif down:
            self.h_upd, self.x_upd = Downsample(channels, False, dims), Downsample(channels, False, dims)
        emb_out_channels = 2 * out_channels if use_scale_shift_norm else out_channels
        self.emb_layers = None if skip_t_emb else nn.Sequential(nn.SiLU(), linear(emb_channels, emb_out_channels))
        self.out_layers = nn.Sequential(
            normalization(out_channels),
            nn.SiLU(),
            nn.Dropout(p=dropout),
            zero_module(conv_nd(dims, out_channels, out_channels, kernel_size, padding=padding)),
        )
        if out_channels == channels:
            self.skip_connection = nn.Identity()
        elif use_conv:
            self.skip_connection = conv_nd(dims, channels, out_channels, kernel_size, padding=padding)
        else:
            self.skip_connection = conv_nd(dims, channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        return checkpoint(self._forward, x, emb, enabled=self.use_checkpoint)

    def _forward(
        self,
        x: torch.Tensor,  # (N, C, ...)
        emb: torch.Tensor | None,  # (N, E), or (B, T, E) with exchange_temb_dims; None if skip_t_emb
    ) -> torch.Tensor:
        h = self.in_layers[:-1](x)
        h = self.in_layers[-1](self.h_upd(h))  # (N, C_out, ...)
        x = self.x_upd(x)
        if self.emb_layers is None:
            return self.skip_connection(x) + self.out_layers(h)
        emb_out = self.emb_layers(emb).type(h.dtype)
        emb_out = emb_out[(...,) + (None,) * (h.ndim - emb_out.ndim)]  # broadcastable against h
        if self.exchange_temb_dims:
            emb_out = rearrange(emb_out, "b t c ... -> b c t ...")  # (B, C_out, T, 1, 1)
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = self.out_layers[1:](self.out_layers[0](h) * (1 + scale) + shift)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


# ------------------------------------------------------------------------------------------------
# Layout shared by the image and the video U-Net


class BlockFactory(Protocol):
    """Makes the residual and attention blocks of one U-Net family (image or video)."""

    def resblock(self, channels: int, out_channels: int, down: bool = False, up: bool = False) -> nn.Module:
        ...

    def attention(self, channels: int, n_heads: int, d_head: int, depth: int, level: int | None) -> nn.Module:
        ...


@dataclass(frozen=True)
class UNetLayout:
    """Where the blocks go: widths and res blocks per level, attention placement and heads."""

    model_channels: int  # width of level 0
    channel_mult: tuple[int, ...]  # width multiplier per level
    num_res_blocks: tuple[int, ...]  # res blocks per level (the decoder has one more)
    attention_resolutions: tuple[int, ...]  # downsampling factors (1, 2, 4, ...) that get attention
    transformer_depth: tuple[int, ...]  # transformer blocks per attention layer, per level
    transformer_depth_middle: int  # transformer blocks in the middle block
    num_heads: int  # fixed head count, or -1 to derive it from num_head_channels
    num_head_channels: int  # fixed head width, or -1 to derive it from num_heads
    num_attention_blocks: tuple[int, ...] | None  # per level, attention only on the first n res blocks
    conv_resample: bool  # convs in Up/Downsample
    resblock_updown: bool  # resample with ResBlock(up/down) instead of Up/Downsample

    def heads(self, channels: int) -> tuple[int, int]:
        """(n_heads, d_head) for an attention layer of this width."""
        if self.num_head_channels == -1:
            return self.num_heads, channels // self.num_heads
        return channels // self.num_head_channels, self.num_head_channels

    def has_attention(self, level: int, ds: int, index: int) -> bool:
        if ds not in self.attention_resolutions:
            return False
        return self.num_attention_blocks is None or index < self.num_attention_blocks[level]


def make_layout(
    *,
    model_channels: int,
    channel_mult: Sequence[int],
    num_res_blocks: int | Sequence[int],
    attention_resolutions: Sequence[int],
    transformer_depth: int | Sequence[int],
    transformer_depth_middle: int | None,
    num_heads: int,
    num_head_channels: int,
    num_attention_blocks: Sequence[int] | None,
    conv_resample: bool,
    resblock_updown: bool,
) -> UNetLayout:
    """Normalise per-level arguments (int = same for every level) and check they fit together."""
    levels = len(channel_mult)
    res_blocks = _per_level("num_res_blocks", num_res_blocks, levels)
    depth = _per_level("transformer_depth", transformer_depth, levels)
    if num_heads == -1 and num_head_channels == -1:
        raise ConfigError("set num_heads or num_head_channels (both are -1)")
    if num_attention_blocks is not None:
        num_attention_blocks = _per_level("num_attention_blocks", num_attention_blocks, levels)
        if any(n > r for n, r in zip(num_attention_blocks, res_blocks)):
            raise ConfigError(f"num_attention_blocks {num_attention_blocks} exceeds num_res_blocks {res_blocks}")
    return UNetLayout(
        model_channels=model_channels,
        channel_mult=tuple(channel_mult),
        num_res_blocks=res_blocks,
        attention_resolutions=tuple(attention_resolutions),
        transformer_depth=depth,
        transformer_depth_middle=default(transformer_depth_middle, depth[-1]),
        num_heads=num_heads,
        num_head_channels=num_head_channels,
        num_attention_blocks=num_attention_blocks,
        conv_resample=conv_resample,
        resblock_updown=resblock_updown,
    )


def _per_level(name: str, value: int | Sequence[int], levels: int) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * levels
    if len(value) != levels:
        raise ConfigError(f"{name} has {len(value)} entries but channel_mult has {levels} levels")
    return tuple(value)


def build_unet_blocks(
    layout: UNetLayout,
    blocks: BlockFactory,
    in_channels: int,
) -> tuple[nn.ModuleList, TimestepEmbedSequential, nn.ModuleList]:
    """input_blocks, middle_block, output_blocks of a U-Net with skip connections per block."""
    input_blocks, skip_channels = _build_encoder(layout, blocks, in_channels)
    ch = skip_channels[-1]
    n_heads, d_head = layout.heads(ch)
    middle_block = TimestepEmbedSequential(
        blocks.resblock(ch, ch),
        blocks.attention(ch, n_heads, d_head, layout.transformer_depth_middle, level=None),
        blocks.resblock(ch, ch),
    )
    return input_blocks, middle_block, _build_decoder(layout, blocks, skip_channels)


def _build_encoder(layout: UNetLayout, blocks: BlockFactory, in_channels: int) -> tuple[nn.ModuleList, list[int]]:
    ch = layout.model_channels
    input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(in_channels, ch, 3, padding=1))])
    skip_channels = [ch]
    ds = 1
    for level, mult in enumerate(layout.channel_mult):
        for index in range(layout.num_res_blocks[level]):
            layers = [blocks.resblock(ch, mult * layout.model_channels)]
            ch = mult * layout.model_channels
            if layout.has_attention(level, ds, index):
                layers.append(blocks.attention(ch, *layout.heads(ch), layout.transformer_depth[level], level))
            input_blocks.append(TimestepEmbedSequential(*layers))
            skip_channels.append(ch)
        if level != len(layout.channel_mult) - 1:
            if layout.resblock_updown:
                down = blocks.resblock(ch, ch, down=True)
            else:
                down = Downsample(ch, layout.conv_resample, out_channels=ch)
            input_blocks.append(TimestepEmbedSequential(down))
            skip_channels.append(ch)
            ds *= 2
    return input_blocks, skip_channels


def _build_decoder(layout: UNetLayout, blocks: BlockFactory, skip_channels: list[int]) -> nn.ModuleList:
    skip_channels = list(skip_channels)
    ch = skip_channels[-1]
    ds = 2 ** (len(layout.channel_mult) - 1)
    output_blocks = nn.ModuleList()
    for level, mult in reversed(list(enumerate(layout.channel_mult))):
        for index in range(layout.num_res_blocks[level] + 1):
            layers = [blocks.resblock(ch + skip_channels.pop(), mult * layout.model_channels)]
            ch = mult * layout.model_channels
            if layout.has_attention(level, ds, index):
                layers.append(blocks.attention(ch, *layout.heads(ch), layout.transformer_depth[level], level))
            if level and index == layout.num_res_blocks[level]:
                if layout.resblock_updown:
                    layers.append(blocks.resblock(ch, ch, up=True))
                else:
                    layers.append(Upsample(ch, layout.conv_resample, out_channels=ch))
                ds //= 2
            output_blocks.append(TimestepEmbedSequential(*layers))
    return output_blocks


def make_label_embedding(
    num_classes: int | str | None,  # int, "continuous", "sequential" or None
    embed_dim: int,  # time-embedding width
    adm_in_channels: int | None,  # width of y for "sequential"
) -> nn.Module | None:
    """The module that maps `y` onto the time embedding (added to it)."""
    if adm_in_channels is not None and num_classes != "sequential":
        raise ConfigError(f"adm_in_channels is only used with num_classes='sequential', got {num_classes!r}")
    if num_classes is None:
        return None
    if isinstance(num_classes, int):
        return nn.Embedding(num_classes, embed_dim)
    if num_classes == "continuous":
        return nn.Linear(1, embed_dim)
    if num_classes == "sequential":
        if adm_in_channels is None:
            raise ConfigError("num_classes='sequential' needs adm_in_channels (the width of y)")
        return nn.Sequential(
            nn.Sequential(linear(adm_in_channels, embed_dim), nn.SiLU(), linear(embed_dim, embed_dim))
        )
    raise ConfigError(f"unknown num_classes {num_classes!r}; expected an int, 'continuous' or 'sequential'")


class UNetBase(nn.Module):
    """Time/label embedding, encoder, middle and decoder with skips, output head; forward core.

    Subclasses choose the block family (image or video) and the inputs their blocks receive.
    """

    def __init__(
        self,
        layout: UNetLayout,  # where the blocks go
        blocks: BlockFactory,  # which blocks
        in_channels: int,  # channels of x (noisy input + channel-concatenated conditioning)
        out_channels: int,  # channels of the output
        num_classes: int | str | None,  # label embedding kind, see make_label_embedding
        adm_in_channels: int | None,  # width of y for num_classes="sequential"
        context_dim: int | None,  # width of the cross-attention context; None = no context
    ):
        super().__init__()
        if context_dim is not None and not isinstance(context_dim, int):
            raise ConfigError(f"context_dim must be an int or None, got {context_dim!r}")
        self.in_channels = in_channels
        self.model_channels = layout.model_channels
        self.out_channels = out_channels
        self.num_classes = num_classes
        self.context_dim = context_dim
        self.num_levels = len(layout.channel_mult)
        time_embed_dim = 4 * layout.model_channels
        self.time_embed = nn.Sequential(
            linear(layout.model_channels, time_embed_dim), nn.SiLU(), linear(time_embed_dim, time_embed_dim)
        )
        self.label_emb = make_label_embedding(num_classes, time_embed_dim, adm_in_channels)
        self.input_blocks, self.middle_block, self.output_blocks = build_unet_blocks(layout, blocks, in_channels)
        top_channels = layout.channel_mult[0] * layout.model_channels
        self.out = nn.Sequential(
            normalization(top_channels),
            nn.SiLU(),
            zero_module(nn.Conv2d(top_channels, out_channels, 3, padding=1)),
        )

    def run_unet(
        self,
        x: torch.Tensor,  # (N, C_in, H, W)
        timesteps: torch.Tensor,  # (N,)
        y: torch.Tensor | None,  # (N, ...) label input
        return_bottleneck: bool,  # also return the middle block's output
        **block_inputs: object,  # context, and the video inputs, for TimestepEmbedSequential
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        t_emb = timestep_embedding(timesteps, self.model_channels)  # (N, model_channels) float32
        emb = self.time_embed(t_emb.to(self.time_embed[0].weight.dtype))  # (N, 4*model_channels)
        if self.label_emb is not None:
            emb = emb + self.label_emb(y)
        skips = []
        h = x
        for block in self.input_blocks:
            h = block(h, emb, **block_inputs)
            skips.append(h)
        h_mid = self.middle_block(h, emb, **block_inputs)  # (N, C_mid, H / 2^(L-1), W / 2^(L-1))
        h = h_mid
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb, **block_inputs)
        out = self.out(h.type(x.dtype))  # (N, C_out, H, W)
        return (out, h_mid) if return_bottleneck else out

    def check_inputs(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        y: torch.Tensor | None,
        context: torch.Tensor | None,
        rows: str = "B",  # how the batch dimension is described in messages
        context_rows: int | None = None,  # rows of context; None = one per row of x
    ) -> None:
        """Raise a ValueError naming the expected and received shape of the first bad input."""
        name = type(self).__name__
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"{name} expects x with {self.in_channels} channels ({rows}, {self.in_channels}, H, W), "
                             f"got {tuple(x.shape)}")
        factor = 2 ** (self.num_levels - 1)
        if any(size % factor for size in x.shape[2:]):
            raise ValueError(f"{name} has {self.num_levels} levels and needs spatial sizes divisible by {factor}, "
                             f"got x of shape {tuple(x.shape)}")
        if timesteps is None or timesteps.shape != x.shape[:1]:
            got = None if timesteps is None else tuple(timesteps.shape)
            raise ValueError(f"{name} expects timesteps of shape ({x.shape[0]},), one per row of x, got {got}")
        self._check_label(x, y)
        self._check_context(x, context, default(context_rows, x.shape[0]))

    def _check_label(self, x: torch.Tensor, y: torch.Tensor | None) -> None:
        name = type(self).__name__
        if self.label_emb is None:
            if y is not None:
                raise ValueError(f"{name} was built without num_classes, so it takes no y; got y of shape "
                                 f"{tuple(y.shape)}")
            return
        if y is None:
            raise ValueError(f"{name} was built with num_classes={self.num_classes!r} and needs y")
        if y.shape[0] != x.shape[0]:
            raise ValueError(f"{name} expects y with one row per row of x ({x.shape[0]}), got {tuple(y.shape)}")

    def _check_context(self, x: torch.Tensor, context: torch.Tensor | None, rows: int) -> None:
        name = type(self).__name__
        if self.context_dim is None:
            if context is not None:
                raise ValueError(f"{name} was built without context_dim, so it takes no context; got context "
                                 f"of shape {tuple(context.shape)}")
            return
        got = None if context is None else tuple(context.shape)
        if got is None or len(got) != 3 or got[0] != rows or got[2] != self.context_dim:
            raise ValueError(f"{name} expects context of shape ({rows}, M, {self.context_dim}), got {got}")


@dataclass(frozen=True)
class ImageBlocks:
    """Block factory of the image U-Net: ResBlock and SpatialTransformer."""

    emb_channels: int  # time-embedding width
    dropout: float
    use_checkpoint: bool
    use_scale_shift_norm: bool
    context_dim: int | None
    use_linear: bool  # Linear proj_in/proj_out in the transformers
    attn_type: str
    disable_self_attentions: tuple[bool, ...] | None = None  # per level
    disable_middle_self_attn: bool = False

    def resblock(self, channels: int, out_channels: int, down: bool = False, up: bool = False) -> nn.Module:
        return ResBlock(
            channels,
            self.emb_channels,
            self.dropout,
            out_channels=out_channels,
            use_checkpoint=self.use_checkpoint,
            use_scale_shift_norm=self.use_scale_shift_norm,
            down=down,
            up=up,
        )

    def attention(self, channels: int, n_heads: int, d_head: int, depth: int, level: int | None) -> nn.Module:
        if level is None:
            disable_self_attn = self.disable_middle_self_attn
        else:
            disable_self_attn = bool(self.disable_self_attentions and self.disable_self_attentions[level])
        return SpatialTransformer(
            channels,
            n_heads,
            d_head,
            depth=depth,
            dropout=self.dropout,
            context_dim=self.context_dim,
            disable_self_attn=disable_self_attn,
            use_linear=self.use_linear,
            attn_type=self.attn_type,
            use_checkpoint=self.use_checkpoint,
        )


class UNetModel(UNetBase):
    """The image diffusion U-Net (upstream `openaimodel.UNetModel`, SpatialTransformer attention).

    The middle block always has a transformer (self-attention only when context_dim is None).
    """

    def __init__(
        self,
        in_channels: int,  # channels of x (after channel-concat conditioning)
        model_channels: int,  # width of the first level
        out_channels: int,  # output channels
        num_res_blocks: int | Sequence[int],  # res blocks per level
        attention_resolutions: Sequence[int],  # downsampling factors with attention, e.g. [4, 2, 1]
        dropout: float = 0.0,
        channel_mult: Sequence[int] = (1, 2, 4, 8),  # width multiplier per level
        conv_resample: bool = True,  # convs in Up/Downsample
        dims: int = 2,  # spatial dims; only 2 is supported (kept for config compatibility)
        num_classes: int | str | None = None,  # int (Embedding), "continuous" or "sequential"
        use_checkpoint: bool = False,  # activation checkpointing (non-reentrant)
        num_heads: int = -1,  # heads per attention layer (or derive from num_head_channels)
        num_head_channels: int = -1,  # width per head; takes precedence over num_heads
        num_heads_upsample: int = -1,  # legacy (upstream's removed AttentionBlock); must stay -1
        use_scale_shift_norm: bool = False,  # FiLM-style embedding in ResBlocks
        resblock_updown: bool = False,  # resample with ResBlocks
        transformer_depth: int | Sequence[int] = 1,  # transformer blocks per attention layer (per level)
        context_dim: int | None = None,  # cross-attention context width
        disable_self_attentions: Sequence[bool] | None = None,  # per level: attn1 attends to context
        num_attention_blocks: Sequence[int] | None = None,  # per level: attention on the first n blocks
        disable_middle_self_attn: bool = False,  # same for the middle transformer
        use_linear_in_transformer: bool = False,  # Linear proj_in/proj_out
        spatial_transformer_attn_type: str = "softmax",  # any ATTENTION_TYPES name; all run on SDPA
        adm_in_channels: int | None = None,  # width of y for num_classes="sequential"
        transformer_depth_middle: int | None = None,  # None = last level's transformer_depth
    ):
        if dims != 2:
            raise ConfigError(f"UNetModel supports dims=2 only (its transformers work on (B, C, H, W)), got {dims}")
        if num_heads_upsample != -1:
            raise ConfigError("num_heads_upsample has no effect (upstream's SpatialTransformer decoder uses "
                              "num_heads/num_head_channels); leave it at -1")
        if disable_self_attentions is not None and len(disable_self_attentions) != len(channel_mult):
            raise ConfigError(f"disable_self_attentions has {len(disable_self_attentions)} entries but "
                              f"channel_mult has {len(channel_mult)} levels")
        layout = make_layout(
            model_channels=model_channels,
            channel_mult=channel_mult,
            num_res_blocks=num_res_blocks,
            attention_resolutions=attention_resolutions,
            transformer_depth=transformer_depth,
            transformer_depth_middle=transformer_depth_middle,
            num_heads=num_heads,
            num_head_channels=num_head_channels,
            num_attention_blocks=num_attention_blocks,
            conv_resample=conv_resample,
            resblock_updown=resblock_updown,
        )
        blocks = ImageBlocks(
            emb_channels=4 * model_channels,
            dropout=dropout,
            use_checkpoint=use_checkpoint,
            use_scale_shift_norm=use_scale_shift_norm,
            context_dim=context_dim,
            use_linear=use_linear_in_transformer,
            attn_type=check_attention_type(spatial_transformer_attn_type),
            disable_self_attentions=None if disable_self_attentions is None else tuple(disable_self_attentions),
            disable_middle_self_attn=disable_middle_self_attn,
        )
        super().__init__(layout, blocks, in_channels, out_channels, num_classes, adm_in_channels, context_dim)

    def forward(
        self,
        x: torch.Tensor,  # (B, C_in, H, W)
        timesteps: torch.Tensor | None = None,  # (B,) noise levels / c_noise
        context: torch.Tensor | None = None,  # (B, M, context_dim)
        y: torch.Tensor | None = None,  # (B, adm_in_channels) / (B,) class ids / (B, 1)
        return_bottleneck: bool = False,  # also return the middle block output (DMD2 discriminator)
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """-> (B, C_out, H, W), or (out, h_mid) with return_bottleneck."""
        self.check_inputs(x, timesteps, y, context)
        return self.run_unet(x, timesteps, y, return_bottleneck, context=context)
