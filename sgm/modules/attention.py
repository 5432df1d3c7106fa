"""Transformer pieces of the U-Nets: attention, gated feed-forward, and the spatial transformer.

Parameter names follow upstream (`to_q`, `to_out.0`, `ff.net.0.proj`, `proj_in`, ...) so released
checkpoints load unchanged. All attention runs on `torch.nn.functional.scaled_dot_product_attention`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from sgm.modules.diffusionmodules.util import checkpoint, zero_module
from sgm.util import ConfigError, default

# Names upstream configs use for attention implementations. xformers is not a dependency: every one
# of them runs on torch SDPA, which picks a fused kernel by itself.
ATTENTION_TYPES = ("softmax", "softmax-xformers", "vanilla", "vanilla-xformers")

# Fused CUDA attention kernels fail with "invalid configuration argument" when the batch dimension
# reaches 2**16 (pytorch#146704); temporal attention has one batch row per pixel, so split the batch.
MAX_ATTENTION_BATCH = 32768


def check_attention_type(attn_type: str) -> str:
    """Return `attn_type` if it names a known attention implementation, else raise a ConfigError."""
    if attn_type not in ATTENTION_TYPES:
        raise ConfigError(
            f"unknown attention type {attn_type!r}; expected one of {ATTENTION_TYPES} (all run on torch SDPA)"
        )
    return attn_type


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v over (B, heads, N, d) tensors, in batches of MAX_ATTENTION_BATCH."""
    if q.shape[0] <= MAX_ATTENTION_BATCH:
        return F.scaled_dot_product_attention(q, k, v)
    chunks = zip(*(t.split(MAX_ATTENTION_BATCH) for t in (q, k, v)))
    return torch.cat([F.scaled_dot_product_attention(*chunk) for chunk in chunks])


class CrossAttention(nn.Module):
    """Multi-head attention of `x` over `context` (self-attention when `context` is None)."""

    def __init__(
        self,
        query_dim: int,  # width of x
        context_dim: int | None = None,  # width of context; None = query_dim
        heads: int = 8,  # number of heads
        dim_head: int = 64,  # width per head
        dropout: float = 0.0,  # dropout after the output projection
    ):
        super().__init__()
        inner_dim = heads * dim_head
        context_dim = default(context_dim, query_dim)
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner_dim, bias=False)
        self.to_k = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_v = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner_dim, query_dim), nn.Dropout(dropout))

    def forward(
        self,
        x: torch.Tensor,  # (B, N, query_dim)
        context: torch.Tensor | None = None,  # (B, M, context_dim)
    ) -> torch.Tensor:
        context = default(context, x)
        q, k, v = (
            rearrange(t, "b n (h d) -> b h n d", h=self.heads)
            for t in (self.to_q(x), self.to_k(context), self.to_v(context))
        )  # (B, heads, N or M, d)
        out = attention(q, k, v)  # (B, heads, N, d)
        return self.to_out(rearrange(out, "b h n d -> b n (h d)"))  # (B, N, query_dim)


class GEGLU(nn.Module):
    """Gated GELU: one projection to twice the width, half of it gates the other half."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


class FeedForward(nn.Module):
    """`net` = [GEGLU or (Linear, GELU), Dropout, Linear]: dim -> mult*dim -> dim_out."""

    def __init__(
        self,
        dim: int,  # input width
        dim_out: int | None = None,  # output width; None = dim
        mult: int = 4,  # hidden width = mult * dim
        glu: bool = False,  # gated GELU (GEGLU) instead of Linear + GELU
        dropout: float = 0.0,  # dropout before the output projection
    ):
        super().__init__()
        inner_dim = int(dim * mult)
        project_in = GEGLU(dim, inner_dim) if glu else nn.Sequential(nn.Linear(dim, inner_dim), nn.GELU())
        self.net = nn.Sequential(project_in, nn.Dropout(dropout), nn.Linear(inner_dim, default(dim_out, dim)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    """Pre-norm block: self-attention, cross-attention to `context`, gated feed-forward; each residual."""

    def __init__(
        self,
        dim: int,  # token width
        n_heads: int,  # attention heads
        d_head: int,  # width per head
        dropout: float = 0.0,  # attention / feed-forward dropout
        context_dim: int | None = None,  # width of the cross-attention context; None = self-attention
        gated_ff: bool = True,  # GEGLU feed-forward
        checkpoint: bool = False,  # recompute activations in backward
        disable_self_attn: bool = False,  # attn1 attends to the context instead of to x
        attn_mode: str = "softmax",  # one of ATTENTION_TYPES
    ):
        super().__init__()
        check_attention_type(attn_mode)
        self.disable_self_attn = disable_self_attn
        self.use_checkpoint = checkpoint
        self.attn1 = CrossAttention(dim, context_dim if disable_self_attn else None, n_heads, d_head, dropout)
        self.ff = FeedForward(dim, dropout=dropout, glu=gated_ff)
        self.attn2 = CrossAttention(dim, context_dim, n_heads, d_head, dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        return checkpoint(self._forward, x, context, enabled=self.use_checkpoint)

    def _forward(
        self,
        x: torch.Tensor,  # (B, N, dim)
        context: torch.Tensor | None,  # (B, M, context_dim)
    ) -> torch.Tensor:
        x = self.attn1(self.norm1(x), context if self.disable_self_attn else None) + x
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Module):
    """Transformer over the pixels of a feature map, with a residual around the whole.

    norm (GroupNorm 32, eps 1e-6) -> proj_in (1x1 conv, or Linear if `use_linear`) -> tokens ->
    `depth` BasicTransformerBlocks -> zero-initialised proj_out -> + input.
    """

    block_inputs = ("context",)  # what TimestepEmbedSequential hands to this block

    def __init__(
        self,
        in_channels: int,  # feature-map channels
        n_heads: int,  # attention heads
        d_head: int,  # width per head (token width = n_heads * d_head)
        depth: int = 1,  # number of transformer blocks
        dropout: float = 0.0,  # attention / feed-forward dropout
        context_dim: int | None = None,  # cross-attention context width; None = self-attention
        disable_self_attn: bool = False,  # attn1 attends to the context too
        use_linear: bool = False,  # Linear projections on tokens instead of 1x1 convs
        attn_type: str = "softmax",  # one of ATTENTION_TYPES
        use_checkpoint: bool = False,  # recompute block activations in backward
    ):
        super().__init__()
        inner_dim = n_heads * d_head
        self.in_channels = in_channels
        self.use_linear = use_linear
        self.norm = nn.GroupNorm(num_groups=32, num_channels=in_channels, eps=1e-6)
        self.proj_in = nn.Linear(in_channels, inner_dim) if use_linear else nn.Conv2d(in_channels, inner_dim, 1)
        self.transformer_blocks = nn.ModuleList(
            [
                BasicTransformerBlock(
                    inner_dim,
                    n_heads,
                    d_head,
                    dropout=dropout,
                    context_dim=context_dim,
                    checkpoint=use_checkpoint,
                    disable_self_attn=disable_self_attn,
                    attn_mode=attn_type,
                )
                for _ in range(depth)
            ]
        )
        proj_out = nn.Linear(inner_dim, in_channels) if use_linear else nn.Conv2d(inner_dim, in_channels, 1)
        self.proj_out = zero_module(proj_out)

    def to_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> normalised, projected tokens (B, H*W, inner)."""
        x = self.norm(x)
        if not self.use_linear:
            x = self.proj_in(x)
        x = rearrange(x, "b c h w -> b (h w) c")
        return self.proj_in(x) if self.use_linear else x

    def from_tokens(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """(B, H*W, inner) -> projected back to (B, C, H, W)."""
        if self.use_linear:
            x = self.proj_out(x)
        x = rearrange(x, "b (h w) c -> b c h w", h=height, w=width)
        return x if self.use_linear else self.proj_out(x)

    def forward(
        self,
        x: torch.Tensor,  # (B, C, H, W)
        context: torch.Tensor | None = None,  # (B, M, context_dim)
    ) -> torch.Tensor:
        tokens = self.to_tokens(x)  # (B, H*W, inner)
        for block in self.transformer_blocks:
            tokens = block(tokens, context)
        return self.from_tokens(tokens, x.shape[2], x.shape[3]) + x  # (B, C, H, W)
