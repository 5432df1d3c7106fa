"""One tiny video DMD run through main.py on 2 CPU processes (DDP over gloo) with a recording callback;
used by the tests of what ranks share (exit steps, chunk draws) and what they must not (noise)."""
import glob
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_two_ranks(
    tmp_path,  # pytest tmp_path: logs/ and the recorder's out_dir go under it
    configs: list[str],  # main.py --base list
    teacher: str,  # teacher weights file
    recorder: str,  # "<test module>.<Callback class>" taking out_dir, writing rank<k>.json
    max_steps: int,
    *overrides: str,
    timeout: int = 300,
) -> list[dict]:
    """-> the recorder's JSON of rank 0 and rank 1 (asserts the run exited 0)."""
    out_dir = str(tmp_path / "ranks")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([os.path.join(ROOT, "tests"), ROOT])}
    out = subprocess.run(
        [sys.executable, "main.py", "--base", *configs, "-l", str(tmp_path / "logs"), "-n", "ranks",
         "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp_find_unused_parameters_true",
         "--max_steps", str(max_steps), f"model.params.teacher_ckpt_path={teacher}",
         "data.params.batch_size=1", "lightning.callbacks.image_logger.params.batch_frequency=1000",
         "lightning.trainer.enable_progress_bar=False", "lightning.callbacks.video_eval=null",
         f"lightning.callbacks.recorder.target={recorder}", f"lightning.callbacks.recorder.params.out_dir={out_dir}",
         *overrides],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
    assert out.returncode == 0, out.stderr[-4000:]
    return [json.load(open(p)) for p in sorted(glob.glob(os.path.join(out_dir, "rank*.json")))]
