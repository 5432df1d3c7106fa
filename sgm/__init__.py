"""sgm: generative-models-style diffusion library with DMD distillation.

Importing `sgm` is cheap: Lightning, open_clip and kornia are imported only where used.
"""
from sgm.compat import patch_torchvision

patch_torchvision()

from sgm.util import instantiate_from_config  # noqa: E402

__all__ = ["instantiate_from_config"]
