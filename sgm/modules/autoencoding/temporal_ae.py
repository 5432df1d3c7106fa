"""SVD's temporal ("deflickering") VAE decoder.

`VideoDecoder` is the image `Decoder` with its factory methods overridden (time_mode "conv-only",
the released one):
* every `ResnetBlock` becomes a `VideoResBlock`: the spatial block, then a 3-D residual block over
  each clip (`time_stack`), blended with a per-block `mix_factor`;
* `conv_out` becomes `AE3DConv`: the 2-D output conv followed by a Conv3d over time (`time_mix_conv`);
* attention stays spatial.

Inputs use the flattened video layout `(B·T, C, H, W)` (clip-major, frame-minor), so the decoder
needs T: `VideoDecoder.forward(z, timesteps=T)` (upstream's keyword name).

Blend convention (opposite of the UNet's `AlphaBlender`):
    out = α·temporal + (1 − α)·spatial,  α = sigmoid(mix_factor) ("learned") or α = alpha ("fixed").
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from sgm.modules.diffusionmodules.model import Decoder, ResnetBlock
from sgm.util import clips_to_frames, frames_to_clips

TIME_MODES = ("conv-only", "attn-only", "all")
MERGE_STRATEGIES = ("learned", "fixed")


def _kernel_3d(kernel_size: int | Sequence[int]) -> tuple[int, int, int]:
    if isinstance(kernel_size, int):
        return (kernel_size, kernel_size, kernel_size)
    if len(kernel_size) != 3:
        raise ValueError(f"video_kernel_size must be an int or 3 ints (t, h, w), got {list(kernel_size)}")
    return tuple(int(k) for k in kernel_size)  # type: ignore[return-value]


def _same_padding(kernel: tuple[int, int, int]) -> tuple[int, int, int]:
    return tuple(k // 2 for k in kernel)  # type: ignore[return-value]


class Float32GroupNorm(nn.GroupNorm):
    """GroupNorm computed in float32 and cast back (the UNet's normalization; eps 1e-5)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).type(x.dtype)


class TimeStackResBlock(nn.Module):
    """3-D residual block without time embedding, on clips `(b, c, t, h, w)`.

    Key names match the UNet's `ResBlock(dims=3, skip_t_emb=True)`: `in_layers.{0,2}`,
    `out_layers.{0,3}`; the output conv starts at zero so a fresh block is the identity.
    """

    def __init__(
        self,
        channels: int,  # in = out channels (identity skip)
        kernel_size: int | Sequence[int],  # Conv3d kernel (t, h, w), 'same' padding
        dropout: float = 0.0,  # dropout before the output conv
    ):
        super().__init__()
        kernel = _kernel_3d(kernel_size)
        padding = _same_padding(kernel)
        self.in_layers = nn.Sequential(
            Float32GroupNorm(32, channels),
            nn.SiLU(),
            nn.Conv3d(channels, channels, kernel, padding=padding),
        )
        self.out_layers = nn.Sequential(
            Float32GroupNorm(32, channels),
            nn.SiLU(),
            nn.Dropout(dropout),
            nn.Conv3d(channels, channels, kernel, padding=padding),
        )
        nn.init.zeros_(self.out_layers[-1].weight)
        nn.init.zeros_(self.out_layers[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.out_layers(self.in_layers(x))  # (b, c, t, h, w)


class VideoResBlock(ResnetBlock):
    """Spatial `ResnetBlock` followed by a temporal `time_stack`, blended by `mix_factor`."""

    def __init__(
        self,
        in_channels: int,  # input channels
        out_channels: int,  # output channels (also the time_stack width)
        dropout: float = 0.0,  # dropout in both the spatial and temporal blocks
        video_kernel_size: int | Sequence[int] = 3,  # time_stack Conv3d kernel (t, h, w)
        alpha: float = 0.0,  # initial mix_factor ("learned") or the fixed α ("fixed")
        merge_strategy: str = "learned",  # "learned": α = sigmoid(mix_factor); "fixed": α = alpha
    ):
        super().__init__(in_channels, out_channels, dropout=dropout)
        if merge_strategy not in MERGE_STRATEGIES:
            supported = ", ".join(MERGE_STRATEGIES)
            raise ValueError(f"unknown merge_strategy {merge_strategy!r}; supported: {supported}")
        self.merge_strategy = merge_strategy
        self.time_stack = TimeStackResBlock(out_channels, video_kernel_size, dropout=dropout)
        mix_factor = torch.tensor([float(alpha)])
        if merge_strategy == "learned":
            self.mix_factor = nn.Parameter(mix_factor)
        else:
            self.register_buffer("mix_factor", mix_factor)

    def temporal_weight(self) -> torch.Tensor:
        """α, the weight of the temporal branch."""
        return torch.sigmoid(self.mix_factor) if self.merge_strategy == "learned" else self.mix_factor

    def forward(self, x: torch.Tensor, timesteps: int) -> torch.Tensor:
        spatial = frames_to_clips(super().forward(x), timesteps)  # (b, c, t, h, w)
        temporal = self.time_stack(spatial)
        alpha = self.temporal_weight()
        return clips_to_frames(alpha * temporal + (1.0 - alpha) * spatial)  # (b·t, c, h, w)


class AE3DConv(nn.Conv2d):
    """A 2-D conv per frame, then a Conv3d (`time_mix_conv`) over each clip; no blending."""

    def __init__(
        self,
        in_channels: int,  # input channels
        out_channels: int,  # output channels (also the time_mix_conv width)
        video_kernel_size: int | Sequence[int] = 3,  # time_mix_conv kernel (t, h, w)
        kernel_size: int = 3,  # spatial conv kernel
    ):
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        kernel = _kernel_3d(video_kernel_size)
        self.time_mix_conv = nn.Conv3d(out_channels, out_channels, kernel, padding=_same_padding(kernel))

    def forward(self, x: torch.Tensor, timesteps: int) -> torch.Tensor:
        h = frames_to_clips(super().forward(x), timesteps)  # (b, c_out, t, h, w)
        return clips_to_frames(self.time_mix_conv(h))  # (b·t, c_out, h, w)


class VideoDecoder(Decoder):
    """`Decoder` whose residual blocks and output conv also mix along time (see module docstring).

    Accepts every `Decoder` keyword plus the four below. Only time_mode "conv-only" is built.
    """

    def __init__(
        self,
        *,
        video_kernel_size: int | Sequence[int] = 3,  # temporal kernel (t, h, w); SVD uses [3, 1, 1]
        alpha: float = 0.0,  # initial / fixed temporal blend weight
        merge_strategy: str = "learned",  # "learned" or "fixed"
        time_mode: str = "conv-only",  # which layers mix time; only "conv-only" is implemented
        **decoder_kwargs: Any,  # the Decoder's own keywords (ch, out_ch, ch_mult, ...)
    ):
        if time_mode not in TIME_MODES:
            raise ValueError(f"unknown time_mode {time_mode!r}; supported: {', '.join(TIME_MODES)}")
        if time_mode != "conv-only":
            raise NotImplementedError(
                f"VideoDecoder time_mode {time_mode!r} (temporal attention) is not implemented; "
                "only 'conv-only', the mode of the released SVD decoder, is"
            )
        # Plain attributes may be set before nn.Module.__init__; the factories below read them
        # while Decoder.__init__ builds the blocks.
        self.video_kernel_size = _kernel_3d(video_kernel_size)
        self.alpha = alpha
        self.merge_strategy = merge_strategy
        super().__init__(**decoder_kwargs)

    def _make_resblock(self, in_channels: int, out_channels: int, dropout: float) -> nn.Module:
        return VideoResBlock(
            in_channels,
            out_channels,
            dropout=dropout,
            video_kernel_size=self.video_kernel_size,
            alpha=self.alpha,
            merge_strategy=self.merge_strategy,
        )

    def _make_conv(self, in_channels: int, out_channels: int) -> nn.Module:
        return AE3DConv(in_channels, out_channels, video_kernel_size=self.video_kernel_size)

    def forward(self, z: torch.Tensor, timesteps: int | None = None) -> torch.Tensor:
        """Decode `(B·T, z, h, w)` latents; `timesteps` = T, the frames per clip."""
        if timesteps is None:
            raise ValueError(
                "VideoDecoder needs the number of frames per clip: call decoder(z, timesteps=T) "
                "(or first_stage.decode(z, num_video_frames=T))"
            )
        if timesteps < 1 or z.shape[0] % timesteps != 0:
            raise ValueError(
                f"VideoDecoder got {z.shape[0]} latent rows, which is not a whole number of "
                f"{timesteps}-frame clips (rows must be B·T, clip-major)"
            )
        return super().forward(z, timesteps=timesteps)
