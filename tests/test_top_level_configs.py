"""configs/dmd_svd.yaml: the user's command `python main.py --base configs/dmd_svd.yaml -t` builds the SVD
DMD2 recipe of configs/dmd/dmd_svd.yaml (a pointer to it, not a second copy)."""
import os
import subprocess
import sys

from omegaconf import OmegaConf

from sgm.config import load_configs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
POINTER = os.path.join(ROOT, "configs/dmd_svd.yaml")
RECIPE = os.path.join(ROOT, "configs/dmd/dmd_svd.yaml")


def test_pointer_resolves_to_the_recipe_and_copies_nothing():
    assert set(OmegaConf.load(POINTER)) == {"_base_"}
    assert OmegaConf.to_container(load_configs([POINTER])) == OmegaConf.to_container(load_configs([RECIPE]))


def test_users_command_builds_on_meta():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "main.py", "--base", "configs/dmd_svd.yaml", "-t", "--dry-run"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    roles = {line.split()[0] for line in out.stdout.splitlines() if line.startswith("  ")}
    assert {"model", "real_score", "fake_score", "conditioner", "first_stage_model"} <= roles
    assert "sgm.models.dmd.DMDEngine" in out.stdout or "DMDEngine" in out.stdout
