"""The one table of probes: which probe measures which engine (the most specific entry first).

    PROBES = ((engine class, denoiser scaling or None for any, probe class), ...)

`probe_class_for(engine)` reads it for an engine instance (the scaling decides between FlowProbe and
DiffusionProbe); `make_probe(engine, **options)` builds the probe with the options its constructor
declares (the callback's options are typed, so a misspelt one fails there); `weighted_term(config, key)`
tells scripts/ablate.py which loss term a config key weights.
"""
from __future__ import annotations

import inspect

from sgm.diagnostics.base import Probe
from sgm.diagnostics.flow import FlowProbe
from sgm.diagnostics.probes import DiffusionProbe, DMDProbe
from sgm.diagnostics.vae import VAEProbe
from sgm.models.autoencoder_training import TrainableAutoencodingEngine
from sgm.models.diffusion import DiffusionEngine
from sgm.models.dmd import DMDEngine
from sgm.modules.diffusionmodules.denoiser_scaling import RectifiedFlowScaling
from sgm.util import get_obj_from_str

MODEL_PARAMS = "model.params."
PROBES = (
    (DMDEngine, None, DMDProbe),
    (DiffusionEngine, RectifiedFlowScaling, FlowProbe),
    (DiffusionEngine, None, DiffusionProbe),
    (TrainableAutoencodingEngine, None, VAEProbe),
)


def probe_class_for(engine) -> type[Probe] | None:
    """The probe class of an engine instance, or of an engine class (scalings then unknown: any); None: none."""
    is_class = isinstance(engine, type)
    scaling = None if is_class else getattr(getattr(engine, "denoiser", None), "scaling", None)
    for engine_cls, scaling_cls, probe in PROBES:
        matches = issubclass(engine, engine_cls) if is_class else isinstance(engine, engine_cls)
        if matches and (scaling_cls is None or isinstance(scaling, scaling_cls)):
            return probe
    return None


def make_probe(engine, **options) -> Probe | None:
    """The engine's probe, given those of `options` its constructor takes (None values: its defaults)."""
    probe = probe_class_for(engine)
    if probe is None:
        return None
    taken = inspect.signature(probe).parameters
    return probe(**{k: v for k, v in options.items() if k in taken and v is not None})


def weighted_term(config, key: str) -> tuple[str, str] | None:
    """(role, term) whose loss the number at `key` (model.params.<...>) weights, or None.

    From the probe's `term_weights` (keys directly under model.params) and, for DMD's terms, the term
    class's `weight_params` (model.params.terms.<name>.params.<weight>).
    """
    if not key.startswith(MODEL_PARAMS) or "target" not in config.get("model", {}):
        return None
    name = key[len(MODEL_PARAMS):]
    probe = probe_class_for(get_obj_from_str(config.model.target))
    for term, (role, attribute) in getattr(probe, "term_weights", {}).items():
        if attribute == name:
            return role, term
    parts = name.split(".")
    if len(parts) == 4 and parts[0] == "terms" and parts[2] == "params":
        target = config.model.params.terms[parts[1]].get("target")
        term_cls = get_obj_from_str(target) if target else None
        return getattr(term_cls, "weight_params", {}).get(parts[3])
    return None


__all__ = ["PROBES", "make_probe", "probe_class_for", "weighted_term"]
