"""scripts/ablate.py: the zeroed keys are checked before anything runs; a tiny DMD ablation through
main.py (GAN generator term off) reports that the term's gradient went to 0; rules.compare on runs
whose statistics differ, vanish or stay near 0."""
import importlib.util
import math
import os
import sys

import pytest

from sgm.diagnostics.rules import compare, read_metrics
from test_dmd_engine import GAN_TINY, TINY, teacher_ckpt  # noqa: F401  (teacher_ckpt: the tiny teacher fixture)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GAN_CONFIG = os.path.join(ROOT, "configs/dmd/digits_dmd_gan.yaml")
GAN_OFF = os.path.join(ROOT, "configs/diagnostics/ablate_gan_generator.yaml")
FAST = [  # a small batch, no image grids, a small teacher reference for the DMD statistics
    "data.params.batch_size=8", "lightning.callbacks.image_logger=null",
    "lightning.callbacks.loss_diagnostics.params.image_every_n_steps=null",
    "lightning.callbacks.loss_diagnostics.params.teacher_samples=8",
    "lightning.callbacks.loss_diagnostics.params.teacher_steps=2",
]


def load_ablate():
    spec = importlib.util.spec_from_file_location("ablate", os.path.join(ROOT, "scripts", "ablate.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules["ablate"] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


ablate = load_ablate()


# ------------------------------------------------------------------------------ checks before any run
@pytest.mark.parametrize("configs, key, message", [
    ([GAN_CONFIG], "model.params.terms.gan.params.generator_wieght", "no such key in the composed config"),
    ([GAN_CONFIG, GAN_OFF], "model.params.terms.gan.params.generator_weight", "already 0 in the composed config"),
    ([GAN_CONFIG], "model.params.loss_fn_config.params.offset_noise_level",
     "already 0 (the StandardDiffusionLoss default)"),
    ([GAN_CONFIG], "model.params.use_ema", "its value True is not a number"),
])
def test_a_bad_zero_key_stops_before_any_run(tmp_path, capsys, configs, key, message):
    with pytest.raises(SystemExit) as stop:
        ablate.main(["--base", *configs, "--zero", key, "-l", str(tmp_path / "logs"), "--steps", "4"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert f"--zero {key}: {message}" in err, err
    assert not os.path.exists(tmp_path / "logs")  # nothing launched, nothing written


def test_dry_run_prints_two_commands_that_differ_in_the_zeroed_key_only(tmp_path, capsys):
    logdir = str(tmp_path / "logs")
    assert ablate.main(["--base", GAN_CONFIG, "--zero", "model.params.dmd_weight", "--steps", "7", "--every", "3",
                        "-l", logdir, "-n", "x", "--dry-run", "model.params.teacher_ckpt_path=t.ckpt"]) == 0
    out = capsys.readouterr().out
    assert "model.params.dmd_weight = 1 (DMDEngine default) -> 0" in out
    base, ablated = [line[2:].split() for line in out.splitlines() if line.startswith("$ ")]
    assert base[:2] == ["python", os.path.relpath(os.path.join(ROOT, "main.py"))]
    assert os.path.relpath(os.path.join(ROOT, "configs/diagnostics/loss_diagnostics.yaml")) in base
    for expected in ("lightning.trainer.max_steps=7", "lightning.callbacks.loss_diagnostics.params.every_n_steps=3",
                     "model.params.teacher_ckpt_path=t.ckpt"):
        assert expected in base and expected in ablated
    assert base[base.index("-s") + 1] == ablated[ablated.index("-s") + 1] == "0"
    assert [a for a in ablated if a not in base] == ["ablated", "model.params.dmd_weight=0.0"]
    assert [a for a in base if a not in ablated] == ["base"]
    assert not os.path.exists(logdir)


# ------------------------------------------------------------------------------ rules.compare
def test_compare_lists_moved_vanished_and_new_statistics_but_not_noise_around_zero():
    points = lambda v: [(s, v) for s in range(4)]
    base = {"grad/gan": points(0.03), "grad/dmd": points(1.0), "loss/gan": points(0.5), "tiny": points(1e-12),
            "diag/seconds": points(1.0)}
    ablated = {"grad/gan": points(0.0), "grad/dmd": points(1.1), "tiny": points(3e-12), "new": points(2.0),
               "diag/seconds": points(3.0)}
    moved = {m.name: m for m in compare(base, ablated, threshold=0.2)}
    assert set(moved) == {"grad/gan", "loss/gan", "new"}  # +9% on grad/dmd, noise at 1e-12, timings: not moved
    assert moved["grad/gan"].change == pytest.approx(-1.0) and "absolute -0.03" in str(moved["grad/gan"])
    assert moved["loss/gan"].ablated is None and moved["loss/gan"].change == -math.inf
    assert "only in the base run" in str(moved["loss/gan"]) and "only in the ablated run" in str(moved["new"])
    name, a, b, change = compare(base, ablated)[-1]  # still unpacks as (name, base, ablated, change)
    assert (name, a, b) == ("grad/gan", 0.03, 0.0)


# ------------------------------------------------------------------------------ a real ablation
@pytest.fixture(scope="module")
def gan_ablation(teacher_ckpt, tmp_path_factory):  # noqa: F811
    logdir = str(tmp_path_factory.mktemp("ablate"))
    argv = ["--base", GAN_CONFIG, "--zero", "model.params.terms.gan.params.generator_weight", "--steps", "4", "--every", "2",
            "-l", logdir, "-n", "gan_off", f"model.params.teacher_ckpt_path={teacher_ckpt}", *TINY, *GAN_TINY, *FAST]
    with pytest.MonkeyPatch.context() as env:
        env.setenv("OMP_NUM_THREADS", "1")
        assert ablate.main(argv) == 0
    return os.path.join(logdir, "gan_off")


@pytest.mark.slow
def test_zeroing_the_gan_generator_weight_takes_its_gradient_to_zero(gan_ablation):
    base, ablated = read_metrics(os.path.join(gan_ablation, "base")), read_metrics(os.path.join(gan_ablation, "ablated"))
    assert [s for s, _ in base["grad/gan"]] == [s for s, _ in ablated["grad/gan"]] == [0, 2]
    assert all(v > 0 for _, v in base["grad/gan"]) and all(v == 0 for _, v in ablated["grad/gan"])
    report = open(os.path.join(gan_ablation, "ablation.md")).read()
    assert "- `model.params.terms.gan.params.generator_weight` = 0.1 (config) -> 0" in report
    assert "OK    grad/gan: " in report and "-> 0 (the term was reaching the generator)" in report
    moved = report.split("## Statistics that moved")[1].split("## Verdicts")[0]
    assert "| grad/gan |" in moved and "| -100%" in moved
    verdicts = report.split("## Verdicts")[1]
    assert "FAULT gan: grad/gan is 0" in verdicts.split("ablated run:")[1]
    assert "FAULT gan" not in verdicts.split("ablated run:")[0]
    assert os.path.getsize(os.path.join(gan_ablation, "ablation.png")) > 1000
    assert "![curves of both runs](ablation.png)" in report


@pytest.mark.slow
def test_a_finished_base_run_is_reused_with_its_saved_configs_steps_and_interval(gan_ablation, capsys):
    base_run = os.path.join(gan_ablation, "base")
    assert ablate.main(["--base_run", base_run, "--zero", "model.params.dmd_weight", "-l", gan_ablation,
                        "--dry-run"]) == 0
    out = capsys.readouterr().out
    (command,) = [line[2:].split() for line in out.splitlines() if line.startswith("$ ")]
    configs = command[command.index("--base") + 1:command.index("-l")]
    assert [os.path.basename(c).split("-")[-1] for c in configs] == ["project.yaml", "lightning.yaml"]
    assert all(c.startswith(os.path.join(base_run, "configs")) for c in configs)
    assert "lightning.trainer.max_steps=4" in command and "model.params.dmd_weight=0.0" in command
    assert "lightning.callbacks.loss_diagnostics.params.every_n_steps=2" in command
    assert f"base run: {base_run} (reused)" in out
