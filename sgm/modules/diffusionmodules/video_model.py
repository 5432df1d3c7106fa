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
from sgm.modules.spacetime_attention import ViewMotionTransformer
from sgm.modules.video_attention import SpatialVideoTransformer
from sgm.util import ConfigError, clips_to_frames, default, fold_frames, frames_to_clips


class VideoResBlock(ResBlock):
    """A 2-D ResBlock per frame, then `time_stack` (a 3-D ResBlock, by default convolving over time
    only) per clip, blended by `time_mixer`: alpha * spatial + (1 - alpha) * temporal."""

    block_inputs = ("emb", "num_video_frames", "image_only_indicator")
    temporal_name = "time_stack"  # attribute (checkpoint key) of the temporal ResBlock

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
        temporal = ResBlock(
            out_channels,
            emb_channels,
            dropout,
            out_channels=out_channels,
            dims=3,
            use_checkpoint=use_checkpoint,
            kernel_size=video_kernel_size,
            exchange_temb_dims=True,
        )
        self.add_module(self.temporal_name, temporal)
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
        x_temporal = self.get_submodule(self.temporal_name)(x_spatial, emb_per_frame)  # (B, C_out, T, H, W)
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

    resblock_class = VideoResBlock  # a class attribute, not a field: subclasses swap the block type

    def resblock(self, channels: int, out_channels: int, down: bool = False, up: bool = False) -> nn.Module:
        return self.resblock_class(
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


# ------------------------------------------------------------------------------------------------
# SV4D / SV4D 2.0: the same layout with view and motion attention


class PostHocResBlockWithTime(VideoResBlock):
    """SV4D's VideoResBlock: the temporal ResBlock is stored as `time_mix_blocks` and convolves over
    all T*V rows of a clip in (frame, view) order; alpha = sigmoid(mix_factor) for every row, since
    the released weights were trained with the image-only flags multiplied by 0."""

    block_inputs = ("emb", "num_video_frames")
    temporal_name = "time_mix_blocks"

    def forward(
        self,
        x: torch.Tensor,  # (B*T*V, C, H, W)
        emb: torch.Tensor,  # (B*T*V, E)
        num_video_frames: int | None = None,  # T*V
        image_only_indicator: torch.Tensor | None = None,  # ignored (zeros), see class docstring
    ) -> torch.Tensor:
        if num_video_frames is None:
            raise ValueError("PostHocResBlockWithTime needs num_video_frames")
        no_images = x.new_zeros(x.shape[0] // num_video_frames, num_video_frames)  # (B, T*V)
        return super().forward(x, emb, num_video_frames, no_images)


@dataclass(frozen=True)
class MultiViewBlocks(VideoBlocks):
    """Block factory of SpatialUNetModelWithTime: PostHocResBlockWithTime and ViewMotionTransformer."""

    motion_context_dim: int = 4
    camera_emb_channels: int | None = None
    use_3d_attention: bool = False
    separate_motion_mixer: bool = False
    merge_factor_motion: float = 0.5

    resblock_class = PostHocResBlockWithTime  # VideoResBlock under upstream's SV4D key names

    def attention(self, channels: int, n_heads: int, d_head: int, depth: int, level: int | None) -> nn.Module:
        return ViewMotionTransformer(
            channels,
            n_heads,
            d_head,
            depth=depth,
            dropout=self.dropout,
            use_linear=self.use_linear,
            context_dim=self.context_dim,
            motion_context_dim=self.motion_context_dim,
            camera_emb_channels=self.camera_emb_channels,
            use_3d_attention=self.use_3d_attention,
            separate_motion_mixer=self.separate_motion_mixer,
            merge_strategy=self.merge_strategy,
            merge_factor=self.merge_factor,
            merge_factor_motion=self.merge_factor_motion,
            ff_in=self.extra_ff_mix_layer,
            checkpoint=self.use_checkpoint,
            attn_mode=self.attn_type,
            max_time_embed_period=self.max_time_embed_period,
        )


class SpatialUNetModelWithTime(UNetBase):
    """SV4D / SV4D 2.0 U-Net (upstream's dotted path): VideoUNet's layout with view + motion attention.

    Rows are b clips x t frames x v views, ordered (b, t, v); `num_video_frames` = t*v. The reference
    views `cond_view` (b*v latents) fix v; the CLIP context (b, t, C) fixes t.
    """

    def __init__(
        self,
        in_channels: int,  # noisy latent + concat conditioning latent
        model_channels: int,  # width of the first level
        out_channels: int,  # output channels
        num_res_blocks: int,  # res blocks per level
        attention_resolutions: Sequence[int],  # downsampling factors with attention
        dropout: float = 0.0,
        channel_mult: Sequence[int] = (1, 2, 4, 8),  # width multiplier per level
        conv_resample: bool = True,  # convs in Up/Downsample
        num_classes: int | str | None = None,  # "sequential" for the released models
        use_checkpoint: bool = False,  # activation checkpointing (non-reentrant)
        num_heads: int = -1,  # heads per attention layer (or derive from num_head_channels)
        num_head_channels: int = -1,  # width per head; takes precedence over num_heads
        use_scale_shift_norm: bool = False,  # FiLM embedding in the spatial ResBlocks
        resblock_updown: bool = False,  # resample with res blocks
        transformer_depth: int | Sequence[int] = 1,  # transformer blocks per attention layer (per level)
        transformer_depth_middle: int | None = None,  # None = last level's transformer_depth
        context_dim: int | None = None,  # CLIP context width
        motion_context_dim: int = 4,  # channels of the cond_view latents (motion cross-attention)
        extra_ff_mix_layer: bool = False,  # ff_in in the view/motion blocks
        time_block_merge_strategy: str = "fixed",  # AlphaBlender strategy of every mixer
        time_block_merge_factor: float = 0.5,  # initial mix_factor (res blocks, view attention)
        motion_block_merge_factor: float = 0.5,  # initial mix_factor of time_mixer_motion
        spatial_transformer_attn_type: str = "softmax",  # any ATTENTION_TYPES name; all run on SDPA
        time_kernel_size: KernelSize = 3,  # kernel of the temporal ResBlocks, e.g. [3, 1, 1]
        use_linear_in_transformer: bool = False,  # Linear proj_in/proj_out
        adm_in_channels: int | None = None,  # width of y for num_classes="sequential"
        max_ddpm_temb_period: int = 10000,  # max period of the view/frame-index embeddings
        use_camera_emb: bool = False,  # SV4D 2.0: emb_view from the U-Net embedding
        use_3d_attention: bool = False,  # SV4D 2.0 (4 views), see ViewMotionTransformer
        separate_motion_merge_factor: bool = False,  # SV4D 2.0: own mixer for motion attention
        # accepted so upstream's configs load unchanged; any other value is refused:
        use_spatial_transformer: bool = True,  # attention layers are transformers (required)
        use_motion_attention: bool = True,  # the view + motion transformer (required)
        use_spatial_context: bool = True,  # view attention cross-attends to CLIP (required)
        time_mix_legacy: bool = False,  # upstream's legacy get_alpha path (not supported)
        legacy: bool = False,  # head-width rule; no effect with num_head_channels or num_heads set
        replicate_time_mix_bug: bool = False,  # no effect: hard-disabled upstream
    ):
        required = {"use_spatial_transformer": use_spatial_transformer, "use_motion_attention": use_motion_attention,
                    "use_spatial_context": use_spatial_context}
        for name, value in required.items():
            if not value:
                raise ConfigError(f"SpatialUNetModelWithTime supports only {name}=True (the released SV4D "
                                  f"models; upstream's other attention variants cannot run)")
        if time_mix_legacy:
            raise ConfigError("SpatialUNetModelWithTime: time_mix_legacy=True (upstream's legacy alpha path) is "
                              "not supported; the released SV4D configs set False")
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
        emb_channels = 4 * model_channels
        blocks = MultiViewBlocks(
            emb_channels=emb_channels,
            dropout=dropout,
            use_checkpoint=use_checkpoint,
            use_scale_shift_norm=use_scale_shift_norm,
            context_dim=context_dim,
            use_linear=use_linear_in_transformer,
            attn_type=check_attention_type(spatial_transformer_attn_type),
            video_kernel_size=time_kernel_size if isinstance(time_kernel_size, int) else tuple(time_kernel_size),
            merge_strategy=time_block_merge_strategy,
            merge_factor=time_block_merge_factor,
            extra_ff_mix_layer=extra_ff_mix_layer,
            max_time_embed_period=max_ddpm_temb_period,
            motion_context_dim=motion_context_dim,
            camera_emb_channels=emb_channels if use_camera_emb else None,
            use_3d_attention=use_3d_attention,
            separate_motion_mixer=separate_motion_merge_factor,
            merge_factor_motion=motion_block_merge_factor,
        )
        super().__init__(layout, blocks, in_channels, out_channels, num_classes, adm_in_channels, context_dim)

    def forward(
        self,
        x: torch.Tensor,  # (b*t*v, C_in, H, W), rows ordered (b, t, v)
        timesteps: torch.Tensor,  # (b*t*v,)
        context: torch.Tensor | None = None,  # (b, t, context_dim) CLIP token per input frame, or per row
        y: torch.Tensor | None = None,  # (b*t*v, adm_in_channels)
        cond_view: torch.Tensor | None = None,  # (b*v, 4, h, w) latents of the reference views
        num_video_frames: int | None = None,  # t*v
        image_only_indicator: torch.Tensor | None = None,  # (b, t*v); value unused
        return_bottleneck: bool = False,  # also return the middle block output (DMD2 discriminator)
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """-> (b*t*v, C_out, H, W), or (out, h_mid) with return_bottleneck."""
        name = type(self).__name__
        if context is None or context.ndim != 3:
            got = None if context is None else tuple(context.shape)
            raise ValueError(f"{name} expects context of shape (b, t, {self.context_dim}), got {got}")
        if context.shape[0] == x.shape[0] and isinstance(num_video_frames, Integral) and num_video_frames > 0:
            context = context[::num_video_frames]  # one row per x row (broadcast_cond_to_rows) -> per clip
        clips, frames = context.shape[:2]
        if cond_view is None or cond_view.ndim != 4 or cond_view.shape[0] % clips:
            got = None if cond_view is None else tuple(cond_view.shape)
            raise ValueError(f"{name} expects cond_view of shape (b*v, c, h, w) with b = {clips} (from context), "
                             f"got {got}")
        views = cond_view.shape[0] // clips
        if num_video_frames != frames * views or x.shape[0] != clips * frames * views:
            raise ValueError(f"{name}: context (b, t) = ({clips}, {frames}) and cond_view (v = {views}) need "
                             f"num_video_frames t*v = {frames * views} and x with b*t*v = {clips * frames * views} "
                             f"rows; got num_video_frames={num_video_frames!r}, x {tuple(x.shape)}")
        self.check_inputs(x, timesteps, y, context, rows="b*t*v", context_rows=clips)
        if image_only_indicator is not None and tuple(image_only_indicator.shape) != (clips, num_video_frames):
            raise ValueError(f"{name} expects image_only_indicator of shape (b, t*v) = ({clips}, "
                             f"{num_video_frames}), got {tuple(image_only_indicator.shape)}")
        return self.run_unet(
            x,
            timesteps,
            y,
            return_bottleneck,
            context=context,
            cond_view=cond_view,
            num_views=views,
            num_video_frames=num_video_frames,
        )
