"""How Lightning writes checkpoints in every run of main.py: atomically on any filesystem, and never
with NaN/inf weights."""
from __future__ import annotations

from typing import Any

from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from sgm.io.checkpoint import CheckpointError, atomic_torch_save, non_finite_keys


class AtomicCheckpointIO(TorchCheckpointIO):
    """TorchCheckpointIO whose writes go through `atomic_torch_save` (temp file beside the target,
    fsync, os.replace), where Lightning's own stages the file in $TMPDIR and moves it, which is a
    non-atomic copy when the run directory is on another filesystem."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        bad = non_finite_keys(checkpoint.get("state_dict", {}))
        if bad:
            more = f" ... (+{len(bad) - 5} more)" if len(bad) > 5 else ""
            raise CheckpointError(f"not writing {path}: {len(bad)} weights hold NaN/inf values: "
                                  f"{', '.join(bad[:5])}{more}")
        atomic_torch_save(checkpoint, str(path))
