"""Environment fixes that must run before third-party imports.

PyPI's torchvision wheels are built against CUDA torch. Next to a CPU-only torch build their
compiled ops (`torchvision/_C.so`) fail to load, and `torchvision/__init__` then dies in
`torchvision._meta_registrations`, which registers fake kernels for those missing ops
(`RuntimeError: operator torchvision::nms does not exist`). Lightning (through torchmetrics)
and open_clip both import torchvision, so the whole stack would fail to import.

We use only torchvision's pure-Python parts (transforms pulled in by open_clip/torchmetrics),
never its detection ops, so when — and only when — the compiled library cannot be loaded we
register an empty stand-in for `torchvision._meta_registrations`. With a working torchvision
(matching CUDA torch on a GPU machine) nothing is changed.
"""
from __future__ import annotations

import glob
import importlib.util
import os
import sys
import types

_STUB_NAME = "torchvision._meta_registrations"


def torchvision_ops_loadable() -> bool | None:
    """True/False whether torchvision's compiled ops load; None when torchvision is absent."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return None
    import torch

    libraries = glob.glob(os.path.join(spec.submodule_search_locations[0], "_C*.so"))
    libraries += glob.glob(os.path.join(spec.submodule_search_locations[0], "_C*.pyd"))
    if not libraries:
        return False
    try:
        torch.ops.load_library(libraries[0])
    except (OSError, ImportError, RuntimeError):
        return False
    return True


def patch_torchvision() -> bool:
    """Stub `torchvision._meta_registrations` if torchvision's ops cannot load. Returns True if patched."""
    if "torchvision" in sys.modules or _STUB_NAME in sys.modules:
        return isinstance(sys.modules.get(_STUB_NAME), _Stub)
    if torchvision_ops_loadable() is not False:
        return False
    sys.modules[_STUB_NAME] = _Stub(_STUB_NAME)
    return True


class _Stub(types.ModuleType):
    """Empty stand-in: fake kernels for torchvision's (unloadable) detection ops are skipped."""
