"""DMD under FSDP (sgm.strategies.FSDP): 2 CPU processes with gloo, through main.py, on the tiny digits config.

Three runs of the same training (SGD with momentum, so the gradient clip and the optimiser state show in the
weights; a clip small enough to act on every critic step): DDP for 6 steps (a checkpoint at step 3), FSDP for 3
steps, and FSDP resumed from that checkpoint to step 6. Each rank draws its own noise from (seed, rank,
step) and reads its own shard of the data, so the FSDP runs compute what the DDP run computes:
- the global gradient norms FSDP logs equal DDP's (a norm of this rank's shards alone would not);
- FSDP's step-3 checkpoint (full state dict, written by main.py's atomic checkpoint I/O) has DDP's keys,
  weights and momentum buffers, and the resumed FSDP run ends with DDP's step-6 weights;
- the gathered weights and the EMA are identical on both ranks.
"""
import csv
import glob
import hashlib
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist

import sgm  # noqa: F401  (before Lightning: torchvision shim)
import pytorch_lightning as pl
from sgm.io.checkpoint import read_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                       reason="this torch build has no gloo backend for FSDP on the CPU"),
]

CLIP = 0.01  # below the critic's gradient norms (asserted; the generator's start near 0: teacher = critic)
TRAIN = [
    "model.params.network_config.params.model_channels=32", "model.params.network_config.params.num_res_blocks=1",
    "model.params.network_config.params.channel_mult=[1]", "model.params.generator.update_interval=2",
    "model.base_learning_rate=0.02", "data.params.batch_size=8",
    "model.params.optimizer_config.target=torch.optim.SGD", "model.params.optimizer_config.params.momentum=0.9",
    "model.params.critic.optimizer_config.target=torch.optim.SGD",
    "model.params.critic.optimizer_config.params.momentum=0.9",
    f"model.params.generator.grad_clip={CLIP}", f"model.params.critic.grad_clip={CLIP}",
    "lightning.callbacks.image_logger.params.batch_frequency=1000", "lightning.trainer.enable_progress_bar=False",
    "lightning.trainer.log_every_n_steps=1", "lightning.modelcheckpoint.params.every_n_train_steps=3",
    "lightning.modelcheckpoint.params.save_top_k=-1",
]
FSDP_FLAGS = ["lightning.strategy.target=sgm.strategies.FSDP", "lightning.strategy.params.process_group_backend=gloo"]


def checksum(tensors: dict) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(tensors.items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().clone().numpy().tobytes())  # a copy: numpy() pins the storage FSDP frees
    return digest.hexdigest()


class GatheredChecksums(pl.Callback):
    """Test probe: at the end, each rank writes rank<k>.json with checksums of the generator, critic and EMA,
    the networks gathered from their shards."""

    def __init__(self, out_dir: str):
        self.out_dir = out_dir

    def on_train_end(self, trainer, pl_module):
        from sgm.strategies import full_parameters

        record = {}
        for role in ("model", "fake_score"):
            with full_parameters(getattr(pl_module, role), trainer.strategy) as params:
                record[role] = checksum(params)
        record["model_ema"] = checksum(dict(pl_module.model_ema.named_buffers()))
        record["strategy"] = type(trainer.strategy).__name__
        os.makedirs(self.out_dir, exist_ok=True)
        with open(os.path.join(self.out_dir, f"rank{trainer.global_rank}.json"), "w") as f:
            json.dump(record, f)


def run_main(*args: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([os.path.join(ROOT, "tests"), ROOT])}
    out = subprocess.run([sys.executable, "main.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=400,
                         env=env)
    assert out.returncode == 0, out.stderr[-4000:]


def grad_norms(run_dir: str) -> dict[tuple[int, str], float]:
    rows = list(csv.DictReader(open(glob.glob(os.path.join(run_dir, "csv", "*", "metrics.csv"))[0])))
    return {(int(r["step"]), key): float(r[key]) for r in rows for key in ("grad/generator", "grad/critic")
            if r.get(key)}


def assert_states_close(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)


def momentum(checkpoint: dict) -> list[dict]:
    return [{i: s["momentum_buffer"] for i, s in opt["state"].items()} for opt in checkpoint["optimizer_states"]]


def test_fsdp_on_two_cpu_ranks_matches_ddp_saves_resumes_and_stays_in_sync(tmp_path):
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from test_dmd_engine import TEACHER_CONFIG, TINY
    from sgm.config import load_configs
    from sgm.util import instantiate_from_config

    torch.manual_seed(0)
    teacher = instantiate_from_config(load_configs([TEACHER_CONFIG], TINY).model)
    with torch.no_grad():
        teacher.model.diffusion_model.out[-1].weight.normal_(0.0, 0.05)  # a teacher whose output is not 0
        teacher.model_ema(teacher.model)
    teacher_ckpt = str(tmp_path / "teacher.ckpt")
    torch.save({"state_dict": teacher.state_dict(), "global_step": 0}, teacher_ckpt)
    common = ["--base", "configs/dmd/digits_dmd.yaml", "-l", str(tmp_path), "--no_date", "--accelerator", "cpu",
              "--devices", "2", f"model.params.teacher_ckpt_path={teacher_ckpt}", *TRAIN]
    probe = ["lightning.callbacks.probe.target=test_dmd_fsdp.GatheredChecksums"]

    run_main(*common, "-n", "ddp", "--strategy", "ddp_find_unused_parameters_true", "--max_steps", "6")
    run_main(*common, "-n", "fsdp", "--max_steps", "3", *FSDP_FLAGS, *probe,
             f"lightning.callbacks.probe.params.out_dir={tmp_path / 'ranks3'}")
    run_main("-r", str(tmp_path / "fsdp"), "--max_steps", "6",
             f"lightning.callbacks.probe.params.out_dir={tmp_path / 'ranks6'}")

    ddp_norms, fsdp_norms = grad_norms(str(tmp_path / "ddp")), grad_norms(str(tmp_path / "fsdp"))
    assert {k for k in fsdp_norms if k[0] < 3} == {(0, "grad/generator"), (2, "grad/generator"), (0, "grad/critic"),
                                                   (1, "grad/critic"), (2, "grad/critic")}
    for key in [k for k in fsdp_norms if k[0] < 3]:
        assert fsdp_norms[key] > CLIP or key[1] == "grad/generator"  # the clip acted on every critic step
        assert fsdp_norms[key] == pytest.approx(ddp_norms[key], rel=1e-5), key

    ddp3 = read_checkpoint(glob.glob(str(tmp_path / "ddp" / "checkpoints" / "epoch=*-step=00000003.ckpt"))[0])
    fsdp3 = read_checkpoint(str(tmp_path / "fsdp" / "checkpoints" / "epoch=000000-step=00000003.ckpt"))
    assert fsdp3["global_step"] == 3 and not any("_fsdp" in k for k in fsdp3["state_dict"])
    assert_states_close(fsdp3["state_dict"], ddp3["state_dict"])
    for fsdp_opt, ddp_opt in zip(momentum(fsdp3), momentum(ddp3)):
        assert_states_close(fsdp_opt, ddp_opt)

    ddp6 = read_checkpoint(str(tmp_path / "ddp" / "checkpoints" / "last.ckpt"))
    fsdp6 = read_checkpoint(str(tmp_path / "fsdp" / "checkpoints" / "last.ckpt"))
    assert fsdp6["global_step"] == 6
    assert_states_close(fsdp6["state_dict"], ddp6["state_dict"])
    assert not torch.equal(fsdp6["state_dict"]["fake_score.model.diffusion_model.out.2.weight"],
                           fsdp3["state_dict"]["fake_score.model.diffusion_model.out.2.weight"])  # it trained on

    for ranks in ("ranks3", "ranks6"):
        first, second = (json.load(open(tmp_path / ranks / f"rank{r}.json")) for r in (0, 1))
        assert first == second and first["strategy"] == "FSDP", ranks
