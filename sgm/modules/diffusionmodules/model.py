"""The LDM convolutional VAE: `Encoder`, `Decoder` and their blocks.

Module and parameter names follow upstream exactly because released checkpoints depend on them:
`conv_in`, `down.<l>.block.<i>`, `down.<l>.attn.<i>`, `down.<l>.downsample.conv`, `mid.block_1`,
`mid.attn_1`, `mid.block_2`, `up.<l>.block.<i>`, `up.<l>.upsample.conv`, `norm_out`, `conv_out`.
`up.0` is the highest resolution (upstream builds the list bottom-up and inserts at the front).

Levels without attention hold `nn.Identity` in their `attn` lists and the last encoder / first
decoder level holds an `nn.Identity` resampler; neither adds state-dict keys.

`Decoder` builds its residual blocks, attention blocks and output conv through the factory methods
`_make_resblock`, `_make_attn` and `_make_conv`; subclasses (the temporal `VideoDecoder`) override
them. Keyword arguments given to `Decoder.forward` are passed to every residual block and to the
output conv (attention blocks are spatial and take none).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

ATTN_TYPES = ("vanilla", "vanilla-xformers", "none")


def Normalize(in_channels: int) -> nn.GroupNorm:
    """GroupNorm(32) with eps 1e-6, as in every LDM VAE block."""
    return nn.GroupNorm(num_groups=32, num_channels=in_channels, eps=1e-6, affine=True)


def nonlinearity(x: torch.Tensor) -> torch.Tensor:
    return F.silu(x)  # swish: x·σ(x)


class ResnetBlock(nn.Module):
    """norm1 → swish → conv1 → norm2 → swish → dropout → conv2, plus a (1×1) shortcut."""

    def __init__(
        self,
        in_channels: int,  # input channels
        out_channels: int | None = None,  # output channels (default: in_channels)
        dropout: float = 0.0,  # dropout before conv2
    ):
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.norm1 = Normalize(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.norm2 = Normalize(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(nonlinearity(self.norm1(x)))  # (N, out, H, W)
        h = self.conv2(self.dropout(nonlinearity(self.norm2(h))))
        shortcut = self.nin_shortcut(x) if self.in_channels != self.out_channels else x
        return shortcut + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the H·W positions, with 1×1-conv projections (SDPA)."""

    def __init__(
        self,
        in_channels: int,  # channels = attention width
    ):
        super().__init__()
        self.norm = Normalize(in_channels)
        self.q = nn.Conv2d(in_channels, in_channels, kernel_size=1)
        self.k = nn.Conv2d(in_channels, in_channels, kernel_size=1)
        self.v = nn.Conv2d(in_channels, in_channels, kernel_size=1)
        self.proj_out = nn.Conv2d(in_channels, in_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, height, width = x.shape
        h = self.norm(x)

        def tokens(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(n, 1, c, height * width).transpose(2, 3)  # (N, 1, HW, C)

        h = F.scaled_dot_product_attention(tokens(self.q(h)), tokens(self.k(h)), tokens(self.v(h)))
        h = h.transpose(2, 3).reshape(n, c, height, width)  # (N, C, H, W)
        return x + self.proj_out(h)


def make_attn(in_channels: int, attn_type: str = "vanilla") -> nn.Module:
    """`vanilla` and `vanilla-xformers` -> `AttnBlock` (torch SDPA); `none` -> Identity."""
    if attn_type in ("vanilla", "vanilla-xformers"):
        return AttnBlock(in_channels)
    if attn_type == "none":
        return nn.Identity()
    raise ValueError(f"unknown attn_type {attn_type!r}; supported: {', '.join(ATTN_TYPES)}")


class Downsample(nn.Module):
    """Halve H and W: pad right/bottom by 1 then a stride-2 3×3 conv, or 2×2 average pooling."""

    def __init__(
        self,
        in_channels: int,  # channels (unchanged)
        with_conv: bool,  # learned stride-2 conv instead of average pooling
    ):
        super().__init__()
        self.with_conv = with_conv
        if with_conv:
            self.conv = nn.Conv2d(in_channels, in_channels, kernel_size=3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.with_conv:
            return F.avg_pool2d(x, kernel_size=2, stride=2)
        x = F.pad(x, (0, 1, 0, 1), mode="constant", value=0.0)  # (N, C, H+1, W+1)
        return self.conv(x)  # (N, C, H/2, W/2)


class Upsample(nn.Module):
    """Double H and W: nearest-neighbour ×2, then an optional 3×3 conv."""

    def __init__(
        self,
        in_channels: int,  # channels (unchanged)
        with_conv: bool,  # 3×3 conv after the interpolation
    ):
        super().__init__()
        self.with_conv = with_conv
        if with_conv:
            self.conv = nn.Conv2d(in_channels, in_channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")  # (N, C, 2H, 2W)
        return self.conv(x) if self.with_conv else x


def _level(
    blocks: list[nn.Module], attns: list[nn.Module], resampler_name: str, resampler: nn.Module
) -> nn.Module:
    """One resolution level: `block.<i>`, `attn.<i>` and a `downsample`/`upsample` resampler."""
    level = nn.Module()
    level.block = nn.ModuleList(blocks)
    level.attn = nn.ModuleList(attns)
    level.add_module(resampler_name, resampler)
    return level


def _check_channels(who: str, x: torch.Tensor, expected: int, name: str) -> None:
    if x.ndim != 4 or x.shape[1] != expected:
        raise ValueError(
            f"{who} expects input of shape (N, {expected}, H, W) ({name}={expected}), "
            f"got shape {tuple(x.shape)}"
        )


class Encoder(nn.Module):
    """Image `(N, in_channels, H, W)` -> moments `(N, 2·z_channels, H/f, W/f)`, f = 2^(levels-1)."""

    def __init__(
        self,
        *,
        ch: int,  # base width; level l has ch·ch_mult[l] channels
        ch_mult: Sequence[int] = (1, 2, 4, 8),  # width multiplier per resolution level
        num_res_blocks: int,  # ResnetBlocks per level
        attn_resolutions: Sequence[int],  # feature resolutions that get an AttnBlock after each block
        in_channels: int,  # image channels
        resolution: int,  # nominal input resolution (only used to place attn_resolutions)
        z_channels: int,  # latent channels
        double_z: bool = True,  # output mean and logvar (2·z_channels)
        dropout: float = 0.0,  # ResnetBlock dropout
        resamp_with_conv: bool = True,  # learned downsampling convs
        attn_type: str = "vanilla",  # see make_attn
        out_ch: int | None = None,  # unused: key of the ddconfig shared with the Decoder
    ):
        super().__init__()
        self.in_channels = in_channels
        self.conv_in = nn.Conv2d(in_channels, ch, kernel_size=3, padding=1)
        widths = [ch * m for m in ch_mult]
        block_in = ch
        current_res = resolution
        self.down = nn.ModuleList()
        for index, block_out in enumerate(widths):
            blocks, attns = [], []
            use_attn = current_res in attn_resolutions
            for _ in range(num_res_blocks):
                blocks.append(ResnetBlock(block_in, block_out, dropout=dropout))
                attns.append(make_attn(block_out, attn_type) if use_attn else nn.Identity())
                block_in = block_out
            is_last = index == len(widths) - 1
            downsample = nn.Identity() if is_last else Downsample(block_in, resamp_with_conv)
            self.down.append(_level(blocks, attns, "downsample", downsample))
            current_res = current_res if is_last else current_res // 2
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in, dropout=dropout)
        self.mid.attn_1 = make_attn(block_in, attn_type)
        self.mid.block_2 = ResnetBlock(block_in, block_in, dropout=dropout)
        self.norm_out = Normalize(block_in)
        out_channels = 2 * z_channels if double_z else z_channels  # (mean, logvar) or z
        self.conv_out = nn.Conv2d(block_in, out_channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_channels("Encoder", x, self.in_channels, "in_channels")
        h = self.conv_in(x)  # (N, ch, H, W)
        for level in self.down:
            for block, attn in zip(level.block, level.attn):
                h = attn(block(h))
            h = level.downsample(h)  # (N, ch·mult, H/2^l, W/2^l)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(nonlinearity(self.norm_out(h)))  # (N, 2z, H/f, W/f)


class Decoder(nn.Module):
    """Latent `(N, z_channels, h, w)` -> image `(N, out_ch, h·f, w·f)`, f = 2^(levels-1)."""

    def __init__(
        self,
        *,
        ch: int,  # base width; level l has ch·ch_mult[l] channels
        out_ch: int,  # image channels
        ch_mult: Sequence[int] = (1, 2, 4, 8),  # width multiplier per resolution level
        num_res_blocks: int,  # the decoder has num_res_blocks + 1 blocks per level
        attn_resolutions: Sequence[int],  # feature resolutions that get an AttnBlock after each block
        resolution: int,  # nominal output resolution (only used to place attn_resolutions)
        z_channels: int,  # latent channels
        dropout: float = 0.0,  # ResnetBlock dropout
        resamp_with_conv: bool = True,  # learned convs after upsampling
        attn_type: str = "vanilla",  # see make_attn
        give_pre_end: bool = False,  # return features before norm_out/conv_out
        tanh_out: bool = False,  # squash the output with tanh
        in_channels: int | None = None,  # unused: key of the ddconfig shared with the Encoder
        double_z: bool | None = None,  # unused: key of the ddconfig shared with the Encoder
    ):
        super().__init__()
        self.z_channels = z_channels
        self.give_pre_end = give_pre_end
        self.tanh_out = tanh_out
        widths = [ch * m for m in ch_mult]
        block_in = widths[-1]
        current_res = resolution // 2 ** (len(widths) - 1)
        self.conv_in = nn.Conv2d(z_channels, block_in, kernel_size=3, padding=1)
        self.mid = nn.Module()
        self.mid.block_1 = self._make_resblock(block_in, block_in, dropout)
        self.mid.attn_1 = self._make_attn(block_in, attn_type)
        self.mid.block_2 = self._make_resblock(block_in, block_in, dropout)
        levels = []
        for index in reversed(range(len(widths))):
            blocks, attns = [], []
            use_attn = current_res in attn_resolutions
            for _ in range(num_res_blocks + 1):
                blocks.append(self._make_resblock(block_in, widths[index], dropout))
                block_in = widths[index]
                attns.append(self._make_attn(block_in, attn_type) if use_attn else nn.Identity())
            upsample = nn.Identity() if index == 0 else Upsample(block_in, resamp_with_conv)
            levels.insert(0, _level(blocks, attns, "upsample", upsample))
            current_res = current_res if index == 0 else current_res * 2
        self.up = nn.ModuleList(levels)  # up[0] = highest resolution
        self.norm_out = Normalize(block_in)
        self.conv_out = self._make_conv(block_in, out_ch)

    def _make_resblock(self, in_channels: int, out_channels: int, dropout: float) -> nn.Module:
        return ResnetBlock(in_channels, out_channels, dropout=dropout)

    def _make_attn(self, in_channels: int, attn_type: str) -> nn.Module:
        return make_attn(in_channels, attn_type)

    def _make_conv(self, in_channels: int, out_channels: int) -> nn.Module:
        return nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)

    def forward(self, z: torch.Tensor, **block_kwargs: int) -> torch.Tensor:
        """`block_kwargs` go to every residual block and to conv_out (none for this class)."""
        _check_channels(type(self).__name__, z, self.z_channels, "z_channels")
        h = self.conv_in(z)  # (N, ch·mult[-1], h, w)
        h = self.mid.block_1(h, **block_kwargs)
        h = self.mid.attn_1(h)
        h = self.mid.block_2(h, **block_kwargs)
        for level in reversed(self.up):
            for block, attn in zip(level.block, level.attn):
                h = attn(block(h, **block_kwargs))
            h = level.upsample(h)  # (N, ch·mult[l], ·2, ·2) except at level 0
        if self.give_pre_end:
            return h
        h = self.conv_out(nonlinearity(self.norm_out(h)), **block_kwargs)  # (N, out_ch, h·f, w·f)
        return torch.tanh(h) if self.tanh_out else h
