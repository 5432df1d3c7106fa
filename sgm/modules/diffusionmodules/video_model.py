"""The video U-Net of SVD / SVD-XT / SV3D (`VideoUNet`): the image U-Net layout with every ResBlock
followed by a temporal ResBlock and every transformer by temporal attention, each blended with a
learned per-block `AlphaBlender`.

Inputs are flattened clips `(B*T, C, H, W)`, clip-major / frame-minor; `num_video_frames` = T.
"""
from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral
from typing import Sequence

import torch
from torch import nn

from sgm.modules.attention import check_attention_type
from sgm.modules.diffusionmodules.openaimodel import (
    ImageBlocks,
    KernelSize,
    ResBlock,
    UNetBase,
    make_layout,
)
from sgm.modules.diffusionmodules.util import AlphaBlender
from sgm.modules.video_attention import SpatialVideoTransformer
from sgm.util import clips_to_frames, default, fold_frames, frames_to_clips


class VideoResBlock(ResBlock):
    """A 2-D ResBlock per frame, then `time_stack` (a 3-D ResBlock, by default convolving over time
    only) per clip, blended by `time_mixer`: alpha * spatial + (1 - alpha) * temporal."""

    block_inputs = ("emb", "num_video_frames", "image_only_indicator")

    def __init__(
        self,
        channels: int,  # input channels
        emb_channels: int,  # embedding width
        dropout: float,
        video_kernel_size: KernelSize = 3,  # kernel of the temporal ResBlock, e.g. [3, 1, 1]
        merge_strategy: str = "fixed",  # AlphaBlender strategy
        merge_factor: float = 0.5,  # AlphaBlender initial mix_factor
        out_channels: int | None = None,  # None = channels
        use_conv: bool = False,  # kernel-size conv on the skip path when channels change
        use_scale_shift_norm: bool = False,  # FiLM embedding in the spatial ResBlock
        use_checkpoint: bool = False,  # activation checkpointing
        up: bool = False,  # upsample x2 in the spatial ResBlock
        down: bool = False,  # downsample x2 in the spatial ResBlock
    ):
        super().__init__(
            channels,
            emb_channels,
            dropout,
            out_channels=out_channels,
            use_conv=use_conv,
            use_scale_shift_norm=use_scale_shift_norm,
            dims=2,
            use_checkpoint=use_checkpoint,
            up=up,
            down=down,
        )
        out_channels = default(out_channels, channels)
        self.time_stack = ResBlock(
            out_channels,
            emb_channels,
            dropout,
            out_channels=out_channels,
            dims=3,
            use_checkpoint=use_checkpoint,
            kernel_size=video_kernel_size,
            exchange_temb_dims=True,
        )
        self.time_mixer = AlphaBlender(merge_factor, merge_strategy, rearrange_pattern="b t -> b 1 t 1 1")

    def forward(
        self,
        x: torch.Tensor,  # (B*T, C, H, W)
        emb: torch.Tensor,  # (B*T, E)
        num_video_frames: int | None = None,  # T
        image_only_indicator: torch.Tensor | None = None,  # (B, T)
    ) -> torch.Tensor:
        if num_video_frames is None:
            raise ValueError("VideoResBlock needs num_video_frames")
        x = super().forward(x, emb)  # (B*T, C_out, H, W)
        x_spatial = frames_to_clips(x, num_video_frames)  # (B, C_out, T, H, W)
        emb_per_frame = fold_frames(emb, num_video_frames)  # (B, T, E)
        x_temporal = self.time_stack(x_spatial, emb_per_frame)  # (B, C_out, T, H, W)
        x = self.time_mixer(x_spatial, x_temporal, image_only_indicator)
        return clips_to_frames(x)  # (B*T, C_out, H, W)


@dataclass(frozen=True)
class VideoBlocks(ImageBlocks):
    """Block factory of the video U-Net: VideoResBlock and SpatialVideoTransformer."""

    video_kernel_size: KernelSize = 3
    merge_strategy: str = "fixed"
    merge_factor: float = 0.5
    time_context_dim: int | None = None
    extra_ff_mix_layer: bool = False
    use_spatial_context: bool = False
    disable_temporal_crossattention: bool = False
    max_time_embed_period: int = 10000

    def resblock(self, channels: int, out_channels: int, down: bool = False, up: bool = False) -> nn.Module:
        return VideoResBlock(
            channels,
            self.emb_channels,
            self.dropout,
            video_kernel_size=self.video_kernel_size,
            merge_strategy=self.merge_strategy,
            merge_factor=self.merge_factor,
            out_channels=out_channels,
            use_scale_shift_norm=self.use_scale_shift_norm,
            use_checkpoint=self.use_checkpoint,
            down=down,
            up=up,
        )

    def attention(self, channels: int, n_heads: int, d_head: int, depth: int, level: int | None) -> nn.Module:
        return SpatialVideoTransformer(
            channels,
            n_heads,
            d_head,
            depth=depth,
            dropout=self.dropout,
            use_linear=self.use_linear,
            context_dim=self.context_dim,
            use_spatial_context=self.use_spatial_context,
            merge_strategy=self.merge_strategy,
            merge_factor=self.merge_factor,
            time_context_dim=self.time_context_dim,
            ff_in=self.extra_ff_mix_layer,
            checkpoint=self.use_checkpoint,
            attn_mode=self.attn_type,
            disable_temporal_crossattention=self.disable_temporal_crossattention,
            max_time_embed_period=self.max_time_embed_period,
        )


class VideoUNet(UNetBase):
    """Video diffusion U-Net (upstream `video_model.VideoUNet`), 2-D spatial blocks + temporal mixing."""

    def __init__(
        self,
        in_channels: int,  # channels of x (noisy latent + concat conditioning latent)
        model_channels: int,  # width of the first level
        out_channels: int,  # output channels
        num_res_blocks: int,  # res blocks per level
        attention_resolutions: Sequence[int],  # downsampling factors with attention, e.g. [4, 2, 1]
        dropout: float = 0.0,
        channel_mult: Sequence[int] = (1, 2, 4, 8),  # width multiplier per level
        conv_resample: bool = True,  # convs in Up/Downsample
        num_classes: int | str | None = None,  # int, "continuous" or "sequential" (SVD)
        use_checkpoint: bool = False,  # activation checkpointing (non-reentrant)
        num_heads: int = -1,  # heads per attention layer (or derive from num_head_channels)
        num_head_channels: int = -1,  # width per head; takes precedence over num_heads
        use_scale_shift_norm: bool = False,  # FiLM embedding in the spatial ResBlocks
        resblock_updown: bool = False,  # resample with VideoResBlocks
        transformer_depth: int | Sequence[int] = 1,  # transformer blocks per attention layer (per level)
        transformer_depth_middle: int | None = None,  # None = last level's transformer_depth
        context_dim: int | None = None,  # spatial cross-attention context width
        time_context_dim: int | None = None,  # temporal context width (without use_spatial_context)
        extra_ff_mix_layer: bool = False,  # ff_in in the temporal transformer blocks
        use_spatial_context: bool = False,  # temporal cross-attention to the first frame's context
        merge_strategy: str = "fixed",  # "fixed", "learned" or "learned_with_images"
        merge_factor: float = 0.5,  # initial mix_factor of every AlphaBlender
        spatial_transformer_attn_type: str = "softmax",  # any ATTENTION_TYPES name; all run on SDPA
        video_kernel_size: KernelSize = 3,  # kernel of the temporal ResBlocks, e.g. [3, 1, 1]
        use_linear_in_transformer: bool = False,  # Linear proj_in/proj_out
        adm_in_channels: int | None = None,  # width of y for num_classes="sequential"
        disable_temporal_crossattention: bool = False,  # temporal blocks without cross-attention
        max_ddpm_temb_period: int = 10000,  # max period of the frame-index embedding
    ):
        layout = make_layout(
            model_channels=model_channels,
            channel_mult=channel_mult,
            num_res_blocks=num_res_blocks,
            attention_resolutions=attention_resolutions,
            transformer_depth=transformer_depth,
            transformer_depth_middle=transformer_depth_middle,
            num_heads=num_heads,
            num_head_channels=num_head_channels,
            num_attention_blocks=None,
            conv_resample=conv_resample,
            resblock_updown=resblock_updown,
        )
        blocks = VideoBlocks(
            emb_channels=4 * model_channels,
            dropout=dropout,
            use_checkpoint=use_checkpoint,
            use_scale_shift_norm=use_scale_shift_norm,
            context_dim=context_dim,
            use_linear=use_linear_in_transformer,
            attn_type=check_attention_type(spatial_transformer_attn_type),
            video_kernel_size=video_kernel_size if isinstance(video_kernel_size, int) else tuple(video_kernel_size),
            merge_strategy=merge_strategy,
            merge_factor=merge_factor,
            time_context_dim=time_context_dim,
            extra_ff_mix_layer=extra_ff_mix_layer,
            use_spatial_context=use_spatial_context,
            disable_temporal_crossattention=disable_temporal_crossattention,
            max_time_embed_period=max_ddpm_temb_period,
        )
        super().__init__(layout, blocks, in_channels, out_channels, num_classes, adm_in_channels, context_dim)

    def forward(
        self,
        x: torch.Tensor,  # (B*T, C_in, H, W)
        timesteps: torch.Tensor,  # (B*T,)
        context: torch.Tensor | None = None,  # (B*T, M, context_dim)
        y: torch.Tensor | None = None,  # (B*T, adm_in_channels)
        time_context: torch.Tensor | None = None,  # (B, ...) temporal context (no use_spatial_context)
        num_video_frames: int | None = None,  # T
        image_only_indicator: torch.Tensor | None = None,  # (B, T), 1 = still image; None = zeros
        return_bottleneck: bool = False,  # also return the middle block output (DMD2 discriminator)
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """-> (B*T, C_out, H, W), or (out, h_mid) with return_bottleneck."""
        if not isinstance(num_video_frames, Integral) or num_video_frames < 1 or x.shape[0] % num_video_frames:
            raise ValueError(f"VideoUNet needs num_video_frames T (an int >= 1 dividing the {x.shape[0]} rows "
                             f"of x (B*T, C, H, W)), got {num_video_frames!r}")
        num_video_frames = int(num_video_frames)
        self.check_inputs(x, timesteps, y, context, rows="B*T")
        clips = x.shape[0] // num_video_frames
        if image_only_indicator is None:
            image_only_indicator = x.new_zeros(clips, num_video_frames)
        elif tuple(image_only_indicator.shape) != (clips, num_video_frames):
            raise ValueError(f"VideoUNet expects image_only_indicator of shape (B, T) = ({clips}, "
                             f"{num_video_frames}), got {tuple(image_only_indicator.shape)}")
        return self.run_unet(
            x,
            timesteps,
            y,
            return_bottleneck,
            context=context,
            time_context=time_context,
            num_video_frames=num_video_frames,
            image_only_indicator=image_only_indicator,
        )
