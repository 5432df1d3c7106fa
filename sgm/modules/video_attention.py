"""Temporal attention for the video U-Net: attention across the frames of each clip, per pixel.

Video tensors are flattened clip-major / frame-minor, `(B*T, ...)` (see sgm.util.fold_frames).
"""
from __future__ import annotations

import torch
from einops import rearrange, repeat
from torch import nn

from sgm.modules.attention import CrossAttention, FeedForward, SpatialTransformer, check_attention_type
from sgm.modules.diffusionmodules.util import AlphaBlender, checkpoint, linear, timestep_embedding
from sgm.util import ConfigError, default


class VideoTransformerBlock(nn.Module):
    """Transformer block over time: tokens (B*T, S, C) are regrouped to (B*S, T, C), i.e. each
    spatial position of a clip attends over that clip's T frames, and regrouped back.

    [x = ff_in(norm_in(x)) (+ x)]; x += attn1(norm1(x)); x += attn2(norm2(x), context);
    x = ff(norm3(x)) (+ x). The residuals around ff_in and ff exist when inner_dim == dim.
    """

    def __init__(
        self,
        dim: int,  # token width
        n_heads: int,  # attention heads
        d_head: int,  # width per head; n_heads * d_head must equal inner_dim
        dropout: float = 0.0,
        context_dim: int | None = None,  # width of attn2's context; None = self-attention
        gated_ff: bool = True,  # GEGLU feed-forwards
        checkpoint: bool = False,  # recompute activations in backward
        ff_in: bool = False,  # extra feed-forward (norm_in, ff_in) before the attention
        inner_dim: int | None = None,  # working width; None = dim (a value implies ff_in)
        attn_mode: str = "softmax",  # one of ATTENTION_TYPES
        disable_temporal_crossattention: bool = False,  # no attn2 / norm2
    ):
        super().__init__()
        check_attention_type(attn_mode)
        self.use_ff_in = ff_in or inner_dim is not None
        inner_dim = default(inner_dim, dim)
        if n_heads * d_head != inner_dim:
            raise ConfigError(f"n_heads * d_head = {n_heads * d_head} must equal inner_dim = {inner_dim}")
        self.is_res = inner_dim == dim
        self.use_checkpoint = checkpoint
        if self.use_ff_in:
            self.norm_in = nn.LayerNorm(dim)
            self.ff_in = FeedForward(dim, dim_out=inner_dim, dropout=dropout, glu=gated_ff)
        self.attn1 = CrossAttention(inner_dim, None, n_heads, d_head, dropout)
        self.ff = FeedForward(inner_dim, dim_out=dim, dropout=dropout, glu=gated_ff)
        self.attn2 = None
        if not disable_temporal_crossattention:
            self.norm2 = nn.LayerNorm(inner_dim)
            self.attn2 = CrossAttention(inner_dim, context_dim, n_heads, d_head, dropout)
        self.norm1 = nn.LayerNorm(inner_dim)
        self.norm3 = nn.LayerNorm(inner_dim)

    def forward(
        self,
        x: torch.Tensor,  # (B*T, S, dim)
        context: torch.Tensor | None = None,  # (B*S, M, context_dim), one row per clip and position
        timesteps: int | None = None,  # T, frames per clip (upstream's name)
    ) -> torch.Tensor:
        if timesteps is None:
            raise ValueError("VideoTransformerBlock needs timesteps (the number of frames per clip)")
        return checkpoint(self._forward, x, context, timesteps, enabled=self.use_checkpoint)

    def _forward(self, x: torch.Tensor, context: torch.Tensor | None, timesteps: int) -> torch.Tensor:
        rows, tokens, _ = x.shape
        if rows % timesteps:
            raise ValueError(f"{rows} rows are not a whole number of {timesteps}-frame clips")
        x = rearrange(x, "(b t) s c -> (b s) t c", t=timesteps)  # (B*S, T, dim)
        if self.use_ff_in:
            x = self.ff_in(self.norm_in(x)) + x if self.is_res else self.ff_in(self.norm_in(x))
        x = self.attn1(self.norm1(x)) + x
        if self.attn2 is not None:
            x = self.attn2(self.norm2(x), context) + x
        x = self.ff(self.norm3(x)) + x if self.is_res else self.ff(self.norm3(x))
        return rearrange(x, "(b s) t c -> (b t) s c", s=tokens)  # (B*T, S, dim)


class SpatialVideoTransformer(SpatialTransformer):
    """SpatialTransformer whose every block is followed by a temporal block, blended per frame.

    Per depth: x = block(x, context) (spatial, per frame); x_t = time_stack(x + time_pos_embed(frame
    index)); x = alpha * x + (1 - alpha) * x_t (time_mixer). With `use_spatial_context` the temporal
    cross-attention attends to the spatial context of each clip's first frame.
    """

    block_inputs = ("context", "time_context", "num_video_frames", "image_only_indicator")

    def __init__(
        self,
        in_channels: int,  # feature-map channels (= n_heads * d_head)
        n_heads: int,  # attention heads (spatial and temporal)
        d_head: int,  # width per head
        depth: int = 1,  # spatial/temporal block pairs
        dropout: float = 0.0,
        use_linear: bool = False,  # Linear proj_in/proj_out
        context_dim: int | None = None,  # spatial cross-attention context width
        use_spatial_context: bool = False,  # temporal context = first frame's spatial context
        merge_strategy: str = "fixed",  # AlphaBlender strategy
        merge_factor: float = 0.5,  # AlphaBlender initial mix_factor
        time_context_dim: int | None = None,  # temporal context width without use_spatial_context
        ff_in: bool = False,  # extra feed-forward at the start of each temporal block
        checkpoint: bool = False,  # activation checkpointing
        attn_mode: str = "softmax",  # one of ATTENTION_TYPES
        disable_temporal_crossattention: bool = False,  # temporal blocks without attn2
        max_time_embed_period: int = 10000,  # max period of the frame-index embedding
    ):
        super().__init__(
            in_channels,
            n_heads,
            d_head,
            depth=depth,
            dropout=dropout,
            context_dim=context_dim,
            use_linear=use_linear,
            attn_type=attn_mode,
            use_checkpoint=checkpoint,
        )
        inner_dim = n_heads * d_head
        if inner_dim != in_channels:
            raise ConfigError(f"SpatialVideoTransformer needs n_heads * d_head ({inner_dim}) == in_channels "
                              f"({in_channels}): the frame-index embedding is added to the tokens")
        self.use_spatial_context = use_spatial_context
        self.max_time_embed_period = max_time_embed_period
        time_context_dim = context_dim if use_spatial_context else time_context_dim
        self.time_stack = nn.ModuleList(
            [
                VideoTransformerBlock(
                    inner_dim,
                    n_heads,
                    d_head,
                    dropout=dropout,
                    context_dim=time_context_dim,
                    checkpoint=checkpoint,
                    ff_in=ff_in,
                    inner_dim=inner_dim,
                    attn_mode=attn_mode,
                    disable_temporal_crossattention=disable_temporal_crossattention,
                )
                for _ in range(depth)
            ]
        )
        self.time_pos_embed = nn.Sequential(
            linear(in_channels, 4 * in_channels), nn.SiLU(), linear(4 * in_channels, in_channels)
        )
        self.time_mixer = AlphaBlender(alpha=merge_factor, merge_strategy=merge_strategy)

    def temporal_context(
        self,
        context: torch.Tensor | None,  # (B*T, M, context_dim)
        time_context: torch.Tensor | None,  # (B, M, time_context_dim) or (B, time_context_dim)
        num_frames: int,
        num_pixels: int,
    ) -> torch.Tensor | None:
        """Context of the temporal blocks, one row per (clip, pixel): (B*S, M, C)."""
        if self.use_spatial_context:
            if context is None or context.ndim != 3:
                got = None if context is None else tuple(context.shape)
                raise ValueError(f"use_spatial_context needs context of shape (B*T, M, C), got {got}")
            time_context = context[::num_frames]  # (B, M, C): first frame of each clip
        if time_context is None:
            return None
        time_context = repeat(time_context, "b ... -> (b s) ...", s=num_pixels)
        return time_context[:, None] if time_context.ndim == 2 else time_context

    def forward(
        self,
        x: torch.Tensor,  # (B*T, C, H, W)
        context: torch.Tensor | None = None,  # (B*T, M, context_dim)
        time_context: torch.Tensor | None = None,  # (B, ...), used without use_spatial_context
        num_video_frames: int | None = None,  # T
        image_only_indicator: torch.Tensor | None = None,  # (B, T), 1 = still image
    ) -> torch.Tensor:
        if num_video_frames is None:
            raise ValueError("SpatialVideoTransformer needs num_video_frames")
        height, width = x.shape[2], x.shape[3]
        time_context = self.temporal_context(context, time_context, num_video_frames, height * width)
        tokens = self.to_tokens(x)  # (B*T, S, C)
        frame_index = torch.arange(num_video_frames, device=x.device).repeat(x.shape[0] // num_video_frames)
        t_emb = timestep_embedding(frame_index, self.in_channels, max_period=self.max_time_embed_period)
        frame_emb = self.time_pos_embed(t_emb.to(self.time_pos_embed[0].weight.dtype))[:, None]  # (B*T, 1, C)
        for block, time_block in zip(self.transformer_blocks, self.time_stack):
            tokens = block(tokens, context)  # spatial, per frame
            tokens_t = time_block(tokens + frame_emb, time_context, timesteps=num_video_frames)
            tokens = self.time_mixer(tokens, tokens_t, image_only_indicator)
        return self.from_tokens(tokens, height, width) + x  # (B*T, C, H, W)
