"""How Lightning writes and reads checkpoints in every run of main.py: written atomically on any
filesystem and never with NaN/inf weights; read (on `-r`) without unpickling code."""
from __future__ import annotations

from typing import Any

from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from sgm.io.checkpoint import CheckpointError, atomic_torch_save, non_finite_summary, read_resume_checkpoint


class AtomicCheckpointIO(TorchCheckpointIO):
    """TorchCheckpointIO whose writes go through `atomic_torch_save` (temp file beside the target,
    fsync, os.replace), where Lightning's own stages the file in $TMPDIR and moves it, which is a
    non-atomic copy when the run directory is on another filesystem."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        summary = non_finite_summary(checkpoint.get("state_dict", {}), noun="weights")
        if summary:
            raise CheckpointError(f"not writing {path}: {summary}")
        atomic_torch_save(checkpoint, str(path))

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        """The resume checkpoint through `read_resume_checkpoint` (weights_only=True, one line naming a bad file),
        whatever Lightning asks for: a resumed file is a user's file too."""
        return read_resume_checkpoint(path, weights_only)
