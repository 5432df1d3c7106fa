"""Score roles: modules whose `forward(x, sigma, cond, uc=None, **kw)` returns the x0 estimate.

DMD needs two of them besides the generator (sgm/models/dmd.py):

    real_score   the teacher, frozen, evaluated with classifier-free guidance when `uc` is given
    fake_score   the critic, trainable, evaluated without guidance

Any `nn.Module` with that `forward` can be a role (see `toy.GaussianMixtureScore` for an exact one).
`ScoreModel`, the default, wraps a network (inside the same wrapper as `DiffusionEngine.model`, so
its state-dict keys read `model.diffusion_model.*` under the role) and a denoiser, optionally a
guider, and loads its network weights from a checkpoint under a key prefix: one released file
feeds the teacher, the critic and the generator. Given `network` (an already built, wrapped network of
another role), it builds none: DMD's `lora.critic_on_teacher` makes the critic that way around the
teacher's own U-Net, so no second copy is ever built or loaded.

Precision: a frozen teacher may hold its network weights in bf16 (`dtype: bfloat16`). The denoiser
arithmetic (c_skip, c_out, c_in, x0 = c_skip x + c_out F) stays in fp32; only the network call
runs in `dtype` (under autocast, with the norm layers kept in fp32), and its output comes back as
fp32. SVD's sigmas reach 700: bf16 there would be wrong in the second digit.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from sgm.io.checkpoint import LoadReport, load_weights, read_state_dict, select_prefix
from sgm.modules.diffusionmodules.wrappers import DEFAULT_WRAPPER
from sgm.util import ConfigError, default, freeze, get_obj_from_str, instantiate_from_config

NORMS = (nn.GroupNorm, nn.LayerNorm)  # kept in fp32 when the network runs in low precision
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ScoreModel(nn.Module):
    """x0_hat = D(x; sigma, cond), with CFG `D_u + s (D_c - D_u)` when a guider and `uc` are given."""

    def __init__(
        self,
        network_config: dict | None,  # {target, params} of the network F (e.g. UNetModel, VideoUNet)
        denoiser_config: dict,  # {target, params} of the Denoiser (scaling: EDM, eps, v, ...)
        guider_config: dict | None = None,  # {target, params}; CFG used when forward gets `uc`
        network_wrapper: str | None = None,  # dotted path; default OpenAIWrapper
        ckpt_path: str | None = None,  # weights file (.safetensors / .ckpt); None: own init
        ckpt_prefix: str = "model.diffusion_model.",  # key prefix of the network in that file
        trainable: bool = False,  # False: frozen through sgm.util.freeze
        dtype: str = "float32",  # network weights: float32, bfloat16, float16 (frozen roles only)
        network: nn.Module | None = None,  # another role's wrapped network, shared: network_config is not built
    ) -> None:
        super().__init__()
        if dtype not in DTYPES:
            raise ConfigError(f"ScoreModel.dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        if trainable and dtype != "float32":
            raise ConfigError("a trainable score role keeps fp32 weights; use the trainer's precision "
                              f"for mixed precision (got dtype={dtype!r})")
        if network is not None and ckpt_path is not None:
            raise ConfigError(f"ScoreModel: ckpt_path={ckpt_path} would overwrite the weights of the network it "
                              "shares with another role; leave ckpt_path unset")
        if network is None and network_config is None:
            raise ConfigError("ScoreModel needs network_config (or a shared network)")
        if network is None:
            wrapper_cls = get_obj_from_str(default(network_wrapper, DEFAULT_WRAPPER))
            network = wrapper_cls(instantiate_from_config(network_config))
        self.model = network
        self.denoiser = instantiate_from_config(denoiser_config)
        self.guider = instantiate_from_config(guider_config) if guider_config is not None else None
        self.ckpt_path = ckpt_path
        self.ckpt_prefix = ckpt_prefix
        self.trainable = trainable
        self.dtype_name = dtype
        if ckpt_path is not None:
            self.load_network_weights(read_state_dict(ckpt_path), path=ckpt_path)
        self.set_dtype()
        if not trainable:
            freeze(self)

    def set_dtype(self) -> None:
        """Cast the network weights to the configured dtype (after any weight loading); norms stay fp32."""
        self.model.to(DTYPES[self.dtype_name])
        for module in self.model.modules():
            if isinstance(module, NORMS):
                module.float()

    def load_network_weights(
        self,
        state_dict: dict[str, torch.Tensor],  # a whole file's weights
        path: str = "<state_dict>",  # for messages
        prefix: str | None = None,  # default: self.ckpt_prefix
    ) -> LoadReport:
        """Load the network from the entries under `prefix`; every network key must be there."""
        weights = select_prefix(state_dict, default(prefix, self.ckpt_prefix))
        if not weights:
            raise ConfigError(f"{path}: no weights under the prefix '{default(prefix, self.ckpt_prefix)}'")
        report = load_weights(self.model.diffusion_model, weights, path=path)
        self.set_dtype()
        return report

    # ------------------------------------------------------------------ evaluation
    def forward(
        self,
        x: torch.Tensor,  # (N, ...) noisy input x0 + sigma * eps
        sigma: torch.Tensor,  # (N,) noise level per row, fp32
        cond: dict,  # conditioner output, rows aligned with x
        uc: dict | None = None,  # unconditional conditioning: CFG when a guider is configured
        return_features: bool = False,  # also return the network's bottleneck features
        **model_kwargs: Any,  # num_video_frames, image_only_indicator, ...
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """-> x0_hat (N, ...) in fp32, or (x0_hat, h_mid) with return_features."""
        if uc is None or self.guider is None:
            return self.denoise(x, sigma, cond, return_features, **model_kwargs)
        if return_features:
            raise ValueError("features are taken from one unguided pass; call without uc")
        x_in, sigma_in, cond_in = self.guider.prepare_inputs(x, sigma, cond, uc)  # (2N, ...) [uc; c]
        kwargs_in = {k: _double_rows(v) for k, v in model_kwargs.items()}
        denoised = self.denoise(x_in, sigma_in, cond_in, False, **kwargs_in)  # (2N, ...)
        return self.guider(denoised, sigma_in)  # (N, ...) D_u + s (D_c - D_u)

    def denoise(
        self,
        x: torch.Tensor,  # (N, ...)
        sigma: torch.Tensor,  # (N,)
        cond: dict,
        return_features: bool = False,
        **model_kwargs: Any,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """One unguided denoiser call; the network runs in the role's dtype, the rest in fp32."""
        features: dict[str, torch.Tensor] = {}
        network = self._network_fn(features if return_features else None)
        x0_hat = self.denoiser(network, x.float(), sigma.float(), cond, **model_kwargs)
        return (x0_hat, features["h_mid"]) if return_features else x0_hat

    def _network_fn(self, features: dict | None) -> Callable[..., torch.Tensor]:
        dtype = DTYPES[self.dtype_name]

        def network(x_in: torch.Tensor, c_noise: torch.Tensor, cond: dict, **kwargs: Any) -> torch.Tensor:
            if dtype == torch.float32:
                return self._call_network(x_in, c_noise, cond, features, **kwargs)
            with torch.autocast(device_type=x_in.device.type, dtype=dtype):
                return self._call_network(x_in.to(dtype), c_noise, _cast_floating(cond, dtype), features, **kwargs)

        return network

    def _call_network(self, x_in: torch.Tensor, c_noise: torch.Tensor, cond: dict, features: dict | None,
                      **kwargs: Any) -> torch.Tensor:
        if features is None:
            return self.model(x_in, c_noise, cond, **kwargs).float()
        out, h_mid = self.model(x_in, c_noise, cond, return_bottleneck=True, **kwargs)
        features["h_mid"] = h_mid  # (N, C_mid, h, w)
        return out.float()


def _double_rows(value: Any) -> Any:
    """Network inputs given per row or per clip follow the guider's [uc; c] doubling."""
    return torch.cat([value, value]) if isinstance(value, torch.Tensor) and value.ndim > 0 else value


def _cast_floating(cond: dict, dtype: torch.dtype) -> dict:
    return {k: v.to(dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v
            for k, v in cond.items()}


def ema_network_weights(
    state_dict: dict[str, torch.Tensor],  # a DiffusionEngine checkpoint's weights
    prefix: str = "model.",  # where the network wrapper sits in the engine
    ema_prefix: str = "model_ema.",  # where LitEma keeps its shadows (parameter names without dots)
) -> dict[str, torch.Tensor] | None:
    """The checkpoint's EMA weights under the live names (`model.diffusion_model.*`), or None.

    Entries without a shadow (buffers) keep their live values. None when the file holds no EMA.
    """
    out = {k: v for k, v in state_dict.items() if k.startswith(prefix)}
    found = False
    for key in list(out):
        shadow = ema_prefix + key[len(prefix):].replace(".", "")
        if shadow in state_dict:
            out[key] = state_dict[shadow]
            found = True
    return out if found else None


__all__ = ["ScoreModel", "ema_network_weights"]
