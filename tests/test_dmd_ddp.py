"""DMD under DDP: a 2-process run on the CPU (gloo) of the tiny video DMD config, through main.py.
Both ranks must draw the same exit steps (rollout.draw_exit_step is seeded by the step, not the
global RNG) and end with identical generator, EMA and critic weights (gradients are all-reduced;
each rank sees different data)."""
import hashlib
import json
import os
import sys

import pytest
import torch

import sgm  # noqa: F401  (before Lightning: torchvision shim)
import pytorch_lightning as pl
from two_ranks import run_two_ranks  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def checksum(module: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class RankRecorder(pl.Callback):
    """Test probe: records every rollout's exit step, and at the end writes `rank<k>.json` with
    the steps and checksums of the trained roles into `out_dir`."""

    def __init__(self, out_dir: str):
        self.out_dir = out_dir
        self.exit_steps: list[tuple[int, int, int]] = []  # (global step, stream, exit step)
        self.batches: list[str] = []  # checksums of this rank's batches
        self.start: dict[str, str] = {}

    def on_fit_start(self, trainer, pl_module):
        self.start = {"generator": checksum(pl_module.model), "critic": checksum(pl_module.fake_score)}
        rollout = pl_module.rollout

        def recorded(inputs, stream):
            x0, exit_step = rollout(inputs, stream)
            self.exit_steps.append((int(pl_module.global_step), int(stream), int(exit_step)))
            return x0, exit_step

        pl_module.rollout = recorded

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batches.append(hashlib.sha256(batch["frames"].numpy().tobytes()).hexdigest())

    def on_train_end(self, trainer, pl_module):
        os.makedirs(self.out_dir, exist_ok=True)
        record = {
            "rank": trainer.global_rank, "world_size": trainer.world_size, "global_step": trainer.global_step,
            "exit_steps": self.exit_steps, "batches": self.batches, "start": self.start,
            "generator": checksum(pl_module.model), "generator_ema": checksum(pl_module.model_ema),
            "critic": checksum(pl_module.fake_score), "teacher": checksum(pl_module.real_score),
        }
        with open(os.path.join(self.out_dir, f"rank{trainer.global_rank}.json"), "w") as f:
            json.dump(record, f)


@pytest.mark.slow
def test_two_rank_ddp_run_keeps_exit_steps_and_weights_identical(tmp_path):
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from test_dmd_video import save_tiny_teacher

    teacher = save_tiny_teacher(str(tmp_path / "teacher.safetensors"))
    records = run_two_ranks(
        tmp_path, ["configs/dmd/moving_digits_dmd.yaml"], teacher, "test_dmd_ddp.RankRecorder", 4,
        "model.params.generator.update_interval=2",
        "model.params.critic.reuse_generator_sample=False",  # every critic step rolls out: 4 + 2 rollouts
        "model.params.sampler_config.params.discretization_config.params.num_steps=4")
    assert [r["rank"] for r in records] == [0, 1] and {r["world_size"] for r in records} == {2}
    first, second = records
    assert first["global_step"] == second["global_step"] == 4
    assert len(first["exit_steps"]) == 4 + 2  # 4 critic rollouts + 2 generator rollouts
    assert first["exit_steps"] == second["exit_steps"]
    assert len({e for _, _, e in first["exit_steps"]}) > 1  # a 4-step schedule: exit steps do vary
    assert first["batches"] != second["batches"]  # each rank trains on its own shard of the data
    for role in ("generator", "generator_ema", "critic", "teacher"):
        assert first[role] == second[role], role
    for role in ("generator", "critic"):  # trained, so equal because the gradients were all-reduced
        assert first[role] != first["start"][role], role
