"""Small helpers shared by the whole package: config instantiation, tensor broadcasting,
freezing, and the one video-layout helper.

Configs follow upstream's convention: any component is `{target: dotted.path, params: {...}}`.
"""
from __future__ import annotations

import importlib
import inspect
from typing import Any, Callable, Mapping, TypeVar

import torch
from torch import nn

T = TypeVar("T")

# Config values that stand for "no module" rather than a component (upstream convention).
_PLACEHOLDERS = ("__is_first_stage__", "__is_unconditional__")


class ConfigError(ValueError):
    """A config value that cannot be turned into an object; the message names where it sits."""


def config_location(config: Any) -> str:
    """Dotted position of an OmegaConf node inside its root config ('' if unknown or a plain dict)."""
    parts: list[str] = []
    node = config
    while node is not None and hasattr(node, "_get_parent"):
        parent = node._get_parent()
        key = node._key()
        if parent is None or key is None:
            break
        parts.append(f"[{key}]" if isinstance(key, int) else str(key))
        node = parent
    location = ""
    for part in reversed(parts):
        location += part if part.startswith("[") or not location else "." + part
    return location


def _describe(config: Any, target: str | None = None) -> str:
    where = config_location(config)
    what = f"target '{target}'" if target else "config"
    return f"{what} at config key '{where}'" if where else what


def get_obj_from_str(string: str, reload: bool = False) -> Any:
    """Import `a.b.C` and return `C`. Errors name the part of the path that failed."""
    if not isinstance(string, str) or "." not in string:
        raise ConfigError(f"target must be a dotted path like 'package.module.Class', got {string!r}")
    module_name, attr = string.rsplit(".", 1)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        # Only translate the error when the *target's* module is missing, not one of its imports.
        if error.name and (module_name == error.name or module_name.startswith(error.name + ".")):
            raise ConfigError(f"cannot import '{string}': no module named '{error.name}'") from error
        raise
    if reload:
        module = importlib.reload(module)
    if not hasattr(module, attr):
        raise ConfigError(f"cannot import '{string}': module '{module_name}' has no attribute '{attr}'")
    return getattr(module, attr)


def instantiate_from_config(config: Any, /, **extra_params: Any) -> Any:
    """Build `target(**params, **extra_params)` from a `{target, params}` mapping.

    Returns None for upstream's placeholder strings. Errors name the target and, for OmegaConf
    nodes, the config key where it sits (e.g. `model.params.network_config`).
    """
    if isinstance(config, str) and config in _PLACEHOLDERS:
        return None
    if not isinstance(config, Mapping) and not hasattr(config, "keys"):
        raise ConfigError(f"expected a mapping with key 'target', got {type(config).__name__}: {config!r}")
    if "target" not in config:
        raise ConfigError(f"missing key 'target' in {_describe(config)}")
    target = config["target"]
    params = config.get("params", None) or {}
    try:
        cls = get_obj_from_str(target)
    except ConfigError as error:
        raise ConfigError(f"{error} (in {_describe(config, target)})") from None
    kwargs = dict(params)
    kwargs.update(extra_params)
    for name, value in kwargs.items():
        expected = _scalar_annotation(cls, name)
        if expected is not None and not _fits(value, expected):
            where = config_location(config)
            key = f"{where}.params.{name}" if where else name
            kinds = " or ".join("None" if t is type(None) else t.__name__ for t in expected)
            raise ConfigError(f"config key '{key}' must be {kinds}, got {value!r} ({type(value).__name__}) "
                              f"(target '{target}')")
    try:
        return cls(**kwargs)
    except TypeError as error:
        # Wrong/misspelled parameter names surface here; keep the original as the cause.
        if "argument" in str(error) and _is_signature_error(error):
            raise ConfigError(f"{_describe(config, target)}: {error}") from error
        raise


_SCALARS = {"int": (int,), "float": (float,), "bool": (bool,), "str": (str,)}


def _scalar_annotation(cls: Any, name: str) -> tuple[type, ...] | None:
    """The scalar types a constructor parameter is annotated with (`int`, `float | None`, ...), or None
    when it is anything else (containers, configs, unions with other types) or not annotated."""
    try:
        parameter = inspect.signature(cls).parameters.get(name)
    except (TypeError, ValueError):
        return None
    if parameter is None or parameter.annotation is inspect.Parameter.empty:
        return None
    annotation = parameter.annotation
    if not isinstance(annotation, str):  # evaluated annotations: only plain scalar classes
        return (annotation,) if annotation in (int, float, bool, str) else None
    parts = [part.strip() for part in annotation.split("|")]
    if any(part not in _SCALARS and part != "None" for part in parts):
        return None
    return tuple(t for part in parts if part != "None" for t in _SCALARS[part]) + ((type(None),) if "None" in parts else ())


def _fits(value: Any, expected: tuple[type, ...]) -> bool:
    if value is None or isinstance(value, expected):
        return value is not None or type(None) in expected
    if float in expected and isinstance(value, int) and not isinstance(value, bool):
        return True  # 1 for a float
    if float in expected and isinstance(value, str):
        try:  # YAML 1.1 reads 1e-4 as a string; the constructor's arithmetic turns it into a float
            float(value)
            return True
        except ValueError:
            return False
    if int in expected and isinstance(value, float) and value.is_integer():
        return True  # 5.0 for an int
    return False


def _is_signature_error(error: TypeError) -> bool:
    text = str(error)
    return any(s in text for s in ("unexpected keyword", "missing", "positional argument"))


def default(value: T | None, fallback: T | Callable[[], T]) -> T:
    if value is not None:
        return value
    return fallback() if inspect.isfunction(fallback) else fallback


def exists(value: Any) -> bool:
    return value is not None


def append_dims(x: torch.Tensor, target_dims: int) -> torch.Tensor:
    """Append trailing singleton dims so `x` broadcasts against a tensor of rank `target_dims`."""
    dims_to_append = target_dims - x.ndim
    if dims_to_append < 0:
        raise ValueError(f"input has {x.ndim} dims but target_dims is {target_dims}, which is less")
    return x[(...,) + (None,) * dims_to_append]


def append_zero(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, x.new_zeros([1])])


def count_params(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def disabled_train(self: nn.Module, mode: bool = True) -> nn.Module:
    """Replacement for `module.train` that keeps a frozen module in eval mode."""
    return self


def freeze(module: nn.Module) -> nn.Module:
    """The one way to freeze: eval mode that `.train()` cannot undo, and no gradients."""
    module.eval()
    module.train = disabled_train.__get__(module)  # type: ignore[method-assign]
    for param in module.parameters():
        param.requires_grad_(False)
    return module


def fold_frames(x: torch.Tensor, num_frames: int) -> torch.Tensor:
    """`(b t) ...` -> `b t ...`: the one place the flattened video layout is unfolded."""
    if x.shape[0] % num_frames != 0:
        raise ValueError(f"batch of {x.shape[0]} rows is not a whole number of {num_frames}-frame clips")
    return x.reshape(x.shape[0] // num_frames, num_frames, *x.shape[1:])


def unfold_frames(x: torch.Tensor) -> torch.Tensor:
    """`b t ...` -> `(b t) ...` (upstream's flattened layout: clip-major, frame-minor)."""
    return x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])


def frames_to_clips(x: torch.Tensor, num_frames: int) -> torch.Tensor:
    """`(b t) c h w` -> `b c t h w`: the layout of 3-D (temporal) convolutions."""
    return fold_frames(x, num_frames).permute(0, 2, 1, 3, 4)


def clips_to_frames(x: torch.Tensor) -> torch.Tensor:
    """`b c t h w` -> `(b t) c h w`."""
    return unfold_frames(x.permute(0, 2, 1, 3, 4))


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over all non-batch dims."""
    return x.reshape(x.shape[0], -1).mean(dim=1)


# Conditioning slots that a network sees once per row of its input.
ROW_ALIGNED_COND_KEYS = ("vector", "crossattn", "concat")


def broadcast_cond_to_rows(cond: dict, rows: int) -> dict:
    """Repeat per-clip conditioning to per-frame rows: `(b, ...)` -> `((b t), ...)` with t = rows / b.

    Video batches keep the clip-level conditioning (CLIP token, VAE latent of the first frame)
    once per clip; the network needs one row per frame. Other keys pass through unchanged.
    """
    out = cond  # returned as is (same object) when every slot already has `rows` rows
    for key in ROW_ALIGNED_COND_KEYS:
        value = cond.get(key)
        if not isinstance(value, torch.Tensor) or value.shape[0] == rows:
            continue
        if rows % value.shape[0] != 0:
            raise ValueError(f"conditioning '{key}' has {value.shape[0]} rows, which does not divide "
                             f"the {rows} rows of the input")
        out = dict(out) if out is cond else out
        out[key] = value.repeat_interleave(rows // value.shape[0], dim=0)
    return out
