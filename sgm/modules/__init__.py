"""Building blocks. `sgm.modules.GeneralConditioner` is the path upstream configs use."""
from sgm.modules.encoders.modules import GeneralConditioner

UNCONDITIONAL_CONFIG = {"target": "sgm.modules.GeneralConditioner", "params": {"emb_models": []}}

__all__ = ["GeneralConditioner", "UNCONDITIONAL_CONFIG"]
