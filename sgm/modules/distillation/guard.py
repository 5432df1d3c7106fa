"""Non-finite guard for the DMD optimiser steps: a step whose loss or gradient norm is NaN/inf is
skipped (the weights and optimiser state stay as they were), counted per role (`skipped/<role>`), and
`max_in_a_row` such steps in a row stop the run with the role and the first non-finite term named.
The counts travel in the checkpoint (`state_dict`), so a resumed run goes on counting."""
from __future__ import annotations

import math


class NonFiniteError(RuntimeError):
    """Training stopped: too many non-finite steps in a row."""


class NonFiniteGuard:
    def __init__(
        self,
        max_in_a_row: int = 10,  # N consecutive skipped steps of one role stop the run
    ):
        if max_in_a_row < 1:
            raise ValueError(f"max_in_a_row must be >= 1, got {max_in_a_row}")
        self.max_in_a_row = max_in_a_row
        self.skipped: dict[str, int] = {}  # role -> skipped steps since the run began
        self.in_a_row: dict[str, int] = {}  # role -> current run of skipped steps

    @staticmethod
    def culprit(log: dict, grad_norm: float) -> str | None:
        """The first non-finite loss term in `log` (loss/<term>), else the gradient norm, else None."""
        for key, value in log.items():
            if key.startswith("loss/") and not math.isfinite(float(value)):
                return key
        return None if math.isfinite(grad_norm) else "gradient norm"

    def record(self, role: str, culprit: str | None, step: int) -> int:
        """Count a step of `role` (culprit None: a good step) -> skipped steps so far; raises after
        `max_in_a_row` skipped steps in a row."""
        self.skipped.setdefault(role, 0)
        if culprit is None:
            self.in_a_row[role] = 0
            return self.skipped[role]
        self.skipped[role] += 1
        self.in_a_row[role] = self.in_a_row.get(role, 0) + 1
        if self.in_a_row[role] >= self.max_in_a_row:
            raise NonFiniteError(f"stopping at step {step}: {self.in_a_row[role]} {role} steps in a row had a "
                                 f"non-finite {culprit} (skipped, weights unchanged since the last good step)")
        return self.skipped[role]

    def was_skipped(self, role: str) -> bool:
        """Whether the latest step of `role` was skipped."""
        return self.in_a_row.get(role, 0) > 0

    def state_dict(self) -> dict:
        return {"skipped": dict(self.skipped), "in_a_row": dict(self.in_a_row)}

    def load_state_dict(self, state: dict) -> None:
        self.skipped = {role: int(n) for role, n in state["skipped"].items()}
        self.in_a_row = {role: int(n) for role, n in state["in_a_row"].items()}
