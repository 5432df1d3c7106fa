"""Loading YAML configs with `_base_` includes, so variants are small overlays of one base file.

    # configs/inference/svd_xt.yaml
    _base_: svd.yaml            # path relative to this file (or a list, merged left to right)
    model: {params: {sampler_config: {params: {guider_config: {params: {max_scale: 3.0}}}}}}

The including file's own keys are merged on top of its bases. Files without `_base_` are plain
upstream configs.
"""
from __future__ import annotations

import os

from omegaconf import DictConfig, OmegaConf

BASE_KEY = "_base_"


def load_config(path: str, _seen: tuple[str, ...] = ()) -> DictConfig:
    path = os.path.abspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file not found: {path}")
    if path in _seen:
        raise ValueError(f"config include cycle: {' -> '.join(_seen + (path,))}")
    config = OmegaConf.load(path)
    bases = config.pop(BASE_KEY, None)
    if bases is None:
        return config
    if isinstance(bases, str):
        bases = [bases]
    folder = os.path.dirname(path)
    loaded = [load_config(os.path.join(folder, base), _seen + (path,)) for base in bases]
    return OmegaConf.merge(*loaded, config)


def load_configs(paths: list[str], dotlist: list[str] | None = None) -> DictConfig:
    """Several files merged left to right, then `key.path=value` overrides."""
    return OmegaConf.merge(*[load_config(p) for p in paths], OmegaConf.from_dotlist(list(dotlist or [])))
