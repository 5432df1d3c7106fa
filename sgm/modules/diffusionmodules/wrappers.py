"""Wrappers between the denoiser and the network.

The network is stored as `self.diffusion_model`, so inside `DiffusionEngine.model` checkpoint keys
read `model.diffusion_model.*` (upstream's layout).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

DEFAULT_WRAPPER = "sgm.modules.diffusionmodules.wrappers.OpenAIWrapper"  # engines' and score roles' default


class IdentityWrapper(nn.Module):
    """Calls the network with whatever it is given."""

    def __init__(
        self,
        diffusion_model: nn.Module,  # the denoiser network
        compile_model: bool = False,  # torch.compile the network in place (keys stay unchanged)
    ):
        super().__init__()
        if compile_model:
            diffusion_model.compile()  # unlike torch.compile(module), adds no `_orig_mod.` to keys
        self.diffusion_model = diffusion_model

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.diffusion_model(*args, **kwargs)


class OpenAIWrapper(IdentityWrapper):
    """Maps the conditioner's output dict onto the U-Net's inputs.

    `c["concat"]` is stacked onto x along channels, `c["crossattn"]` becomes `context`, `c["vector"]`
    becomes `y`; other keys of `c` are not passed. Extra keyword arguments (num_video_frames,
    image_only_indicator, return_bottleneck, ...) go to the network unchanged.
    """

    def forward(
        self,
        x: torch.Tensor,  # (N, C, H, W) scaled noisy input, c_in * x
        t: torch.Tensor,  # (N,) c_noise
        c: dict[str, torch.Tensor],  # conditioner output
        **kwargs: Any,
    ) -> Any:
        if "concat" in c:
            x = torch.cat([x, c["concat"]], dim=1)  # (N, C + C_concat, H, W)
        return self.diffusion_model(x, timesteps=t, context=c.get("crossattn"), y=c.get("vector"), **kwargs)


class OpenAIWrapperWithViews(OpenAIWrapper):
    """OpenAIWrapper that also hands `c["cond_view"]` (SV4D's reference-view latents, the motion
    attention's context) to the network; chosen by config (`network_wrapper`), not by a key check."""

    def forward(self, x: torch.Tensor, t: torch.Tensor, c: dict[str, torch.Tensor], **kwargs: Any) -> Any:
        return super().forward(x, t, c, cond_view=c.get("cond_view"), **kwargs)
