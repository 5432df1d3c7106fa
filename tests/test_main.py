"""End-to-end runs of the real entry point on the digits teacher (small, CPU)."""
import csv
import glob
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS = "configs/example_training/toy/digits_cond.yaml"
# A smaller network and batch keep the test runs to seconds.
SMALL = [
    "data.params.batch_size=32",
    "lightning.callbacks.image_logger.params.batch_frequency=20",
    "lightning.callbacks.image_logger.params.log_images_kwargs.N=8",
    "model.params.sampler_config.params.num_steps=4",
    "lightning.trainer.log_every_n_steps=1",
    "lightning.trainer.enable_progress_bar=False",
]

pytestmark = pytest.mark.slow


def run_main(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "main.py", *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def logged(logdir, key):
    rows = []
    for path in sorted(glob.glob(os.path.join(logdir, "csv", "version_*", "metrics.csv"))):
        with open(path) as f:
            rows += [r for r in csv.DictReader(f) if r.get(key)]
    return [(int(r["step"]), float(r[key])) for r in rows]


def test_dry_run_prints_parameter_counts():
    out = run_main("--base", DIGITS, "--dry-run")
    assert out.returncode == 0, out.stderr
    assert "DiffusionEngine:" in out.stdout and "model" in out.stdout and "conditioner" in out.stdout
    assert "ClassEmbedder" in out.stdout and "data: sgm.data.digits.DigitsDataModule" in out.stdout


def test_upstream_mnist_config_builds_apart_from_its_dataset():
    out = run_main("--base", "tests/data/configs/mnist_cond.yaml", "--dry-run")
    assert "DiffusionEngine:" in out.stdout and "UNetModel" not in out.stderr
    assert "data: cannot build" in out.stdout and "sgm.data.mnist" in out.stdout
    assert out.returncode == 1


def test_train_logs_samples_and_resume_continues_the_step_count(tmp_path):
    logroot = str(tmp_path / "logs")
    out = run_main("--base", DIGITS, "-l", logroot, "-n", "e2e", "--max_steps", "40", *SMALL)
    assert out.returncode == 0, out.stderr[-3000:]
    (logdir,) = glob.glob(os.path.join(logroot, "*_e2e"))
    losses = [v for _, v in logged(logdir, "loss")]
    assert len(losses) >= 30
    assert sum(losses[-10:]) / 10 < sum(losses[:5]) / 5  # the loss falls
    assert glob.glob(os.path.join(logdir, "images", "train", "samples_gs-000020*.png"))
    assert glob.glob(os.path.join(logdir, "configs", "*-project.yaml"))
    last = os.path.join(logdir, "checkpoints", "last.ckpt")
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 40

    out = run_main("-r", logdir, "--max_steps", "50", *SMALL)
    assert out.returncode == 0, out.stderr[-3000:]
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 50
    steps = [s for s, _ in logged(logdir, "loss")]
    assert max(steps) >= 49 and len([s for s in steps if s >= 40]) >= 9  # continued from step 40

    # Export (EMA weights, upstream key names) and load into a plain DiffusionEngine.
    out = subprocess.run([sys.executable, "scripts/export_student.py", logdir, "--out", str(tmp_path / "export")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    from sgm.config import load_config
    from sgm.util import instantiate_from_config

    config = load_config(str(tmp_path / "export" / "inference.yaml"))
    config.model.params.ckpt_path = str(tmp_path / "export" / "model.safetensors")
    engine = instantiate_from_config(config.model)  # raises on missing network keys
    ckpt = torch.load(last, map_location="cpu", weights_only=True)["state_dict"]
    key = "model.diffusion_model.out.2.weight"
    ema = ckpt["model_ema." + key[len("model."):].replace(".", "")]
    assert torch.allclose(engine.state_dict()[key], ema, atol=1e-3)  # fp16 round trip of the EMA weights


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--base", "configs/nope.yaml"], "config file not found: configs/nope.yaml"),
        (["--base", DIGITS, "model.params.network_config.target=sgm.modules.diffusionmodules.openaimodel.UNetModell"],
         "has no attribute 'UNetModell'"),
        (["--base", DIGITS, "model.params.input_key=image", "--max_steps", "1"], "batch has no key 'image'"),
    ],
)
def test_bad_inputs_fail_with_one_clear_line(tmp_path, args, expected):
    out = run_main(*args, "-l", str(tmp_path))
    assert out.returncode != 0
    last_line = out.stderr.strip().splitlines()[-1]
    assert expected in last_line and last_line.startswith("main.py: error")


def test_overrides_after_base_and_bare_flags_are_not_swallowed():
    # upstream's --base (nargs *) and `--flag` booleans used to eat the key=value after them
    out = run_main("--base", DIGITS, "model.params.input_key=jpg", "--wandb", "data.params.batch_size=8", "--dry-run")
    assert out.returncode == 0, out.stderr[-2000:]
    out = run_main("--base", DIGITS, "--dry-run", "--bogus")
    assert out.returncode == 2 and "unrecognised arguments: --bogus" in out.stderr
