"""The crash checkpoint is a collective: under a multi-process strategy every rank takes part in
`trainer.save_checkpoint` (FSDP gathers shards there, every strategy ends it with a barrier), and one
loadable file appears. Two CPU processes, DDP over gloo, through main.py."""
import glob
import os
import subprocess
import sys

import pytest
import torch

import sgm  # noqa: F401  (before Lightning: torchvision shim)
import pytorch_lightning as pl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS = "configs/example_training/toy/digits_cond.yaml"
TINY = ["model.params.network_config.params.model_channels=32", "model.params.network_config.params.num_res_blocks=1",
        "model.params.network_config.params.channel_mult=[1]", "model.params.network_config.params.attention_resolutions=[]",
        "data.params.batch_size=4", "lightning.callbacks.image_logger=null", "lightning.trainer.enable_progress_bar=False",
        "lightning.trainer.enable_model_summary=False"]


class FailAt(pl.Callback):
    """Test probe: every rank raises after the step that brings global_step to `step`, and each rank that takes
    part in a checkpoint dump after the failure leaves a marker file `saved-by-rank<r>` in `out_dir`."""

    def __init__(self, step: int, out_dir: str):
        self.step, self.out_dir = step, out_dir

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            raise RuntimeError(f"probe failure at step {self.step}")

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        if trainer.interrupted:
            os.makedirs(self.out_dir, exist_ok=True)
            open(os.path.join(self.out_dir, f"saved-by-rank{trainer.global_rank}"), "w").close()


@pytest.mark.slow
def test_every_ddp_rank_joins_the_crash_checkpoint_and_one_loadable_file_appears(tmp_path):
    markers = str(tmp_path / "markers")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_PORT": "29541",
           "PYTHONPATH": os.pathsep.join([os.path.join(ROOT, "tests"), ROOT])}
    out = subprocess.run(
        [sys.executable, "main.py", "--base", DIGITS, "-l", str(tmp_path / "logs"), "-n", "crash", "--accelerator", "cpu",
         "--devices", "2", "--strategy", "ddp_find_unused_parameters_true", "--max_steps", "100", *TINY,
         "lightning.callbacks.fail_at.target=test_crash_checkpoint_ddp.FailAt",
         "lightning.callbacks.fail_at.params.step=3", f"lightning.callbacks.fail_at.params.out_dir={markers}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode != 0
    assert "probe failure at step 3" in out.stderr, out.stderr[-3000:]
    (logdir,) = glob.glob(str(tmp_path / "logs" / "*_crash"))
    (crash,) = glob.glob(os.path.join(logdir, "checkpoints", "crash-step=*.ckpt"))
    state = torch.load(crash, map_location="cpu", weights_only=True)
    assert state["global_step"] == 3 and crash.endswith("crash-step=00000003.ckpt")
    assert state["state_dict"] and all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())
    assert sorted(os.listdir(markers)) == ["saved-by-rank0", "saved-by-rank1"]  # the collective ran on both ranks
    assert "could not save a crash checkpoint" not in out.stdout + out.stderr
    assert not glob.glob(os.path.join(logdir, "checkpoints", ".*"))  # no unfinished writes left
