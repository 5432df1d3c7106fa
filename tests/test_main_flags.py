"""main.py's command line: every Trainer argument as `--<name>` (checked, saved, restored by -r) and -p/--project."""
import glob
import json
import os
import subprocess
import sys

import pytest

import sgm  # noqa: F401  (before Lightning: torchvision shim)
import pytorch_lightning as pl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import main  # noqa: E402

DIGITS = "configs/example_training/toy/digits_cond.yaml"
TINY = ["model.params.network_config.params.model_channels=32", "model.params.network_config.params.num_res_blocks=1",
        "model.params.network_config.params.channel_mult=[1]", "model.params.network_config.params.attention_resolutions=[]",
        "data.params.batch_size=8", "lightning.callbacks.image_logger=null", "lightning.trainer.enable_progress_bar=False"]


class TrainerProbe(pl.Callback):
    """Test probe: writes the Trainer's settings the flags under test reach, at the start of fit."""

    def __init__(self, out: str):
        self.out = out

    def on_fit_start(self, trainer, pl_module):
        with open(self.out, "w") as f:
            json.dump({"accumulate_grad_batches": trainer.accumulate_grad_batches, "max_steps": trainer.max_steps,
                       "log_every_n_steps": trainer.log_every_n_steps}, f)


def run_main(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([os.path.join(ROOT, "tests"), ROOT])}
    return subprocess.run([sys.executable, "main.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env=env)


def flags(*argv):
    opt, unknown = main.get_parser().parse_known_args(list(argv))
    assert unknown == []
    return opt, main.given_trainer_flags(opt)


def test_every_trainer_argument_is_a_flag_parsed_like_an_override():
    _, given = flags("--accumulate_grad_batches", "2", "--devices", "0,1", "--precision", "bf16-mixed",
                     "--gradient_clip_val", "1e-3", "--max_epochs", "null", "--detect_anomaly")
    assert given == {"accumulate_grad_batches": 2, "devices": "0,1", "precision": "bf16-mixed",
                     "gradient_clip_val": 1e-3, "max_epochs": None, "detect_anomaly": True}
    assert flags("--devices", "[0, 1]")[1] == {"devices": [0, 1]}
    assert flags("--seed", "3")[1] == {}  # main.py's own flags are not Trainer flags
    for owned in ("logger", "callbacks", "plugins", "default_root_dir"):  # main.py builds these itself
        with pytest.raises(SystemExit):
            main.get_parser().parse_args([f"--{owned}", "x"])
    # every other Trainer argument has its flag
    help_text = main.get_parser().format_help()
    missing = [n for n in main.trainer_parameters() if f"--{n} " not in help_text]
    assert missing == []


@pytest.mark.parametrize("argv, message", [
    (["--accumulate_grad_batches", "two"], "--accumulate_grad_batches must be int, got 'two'"),
    (["--max_steps", "true"], "--max_steps must be int, got True"),
    (["--precision", "17"], "--precision must be one of 64, 32, 16 or "),
])
def test_a_bad_flag_value_is_one_line_naming_the_flag(argv, message):
    opt, _ = main.get_parser().parse_known_args(argv)
    with pytest.raises(ValueError, match="^" + message):
        main.given_trainer_flags(opt)


@pytest.mark.slow
def test_a_bad_flag_or_trainer_key_value_stops_main_in_one_line(tmp_path):
    for argv, message in [(["--accumulate_grad_batches", "two"], "--accumulate_grad_batches must be int, got 'two'"),
                          (["lightning.trainer.accumulate_grad_batches=two"],
                           "lightning.trainer.accumulate_grad_batches must be int, got 'two'")]:
        out = run_main("--base", DIGITS, "-l", str(tmp_path), *TINY, *argv)
        assert out.returncode == 2, out.stderr[-2000:]
        assert out.stderr.strip().splitlines()[-1] == f"main.py: error: {message}"
        assert "Traceback" not in out.stderr


@pytest.mark.slow
def test_accumulate_grad_batches_flag_reaches_the_trainer_and_comes_back_on_resume(tmp_path):
    probe = str(tmp_path / "trainer.json")
    out = run_main("--base", DIGITS, "-l", str(tmp_path / "logs"), "-n", "flags", "--accumulate_grad_batches", "2",
                   "--max_steps", "2", *TINY, "lightning.callbacks.probe.target=test_main_flags.TrainerProbe",
                   f"lightning.callbacks.probe.params.out={probe}")
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.load(open(probe)) == {"accumulate_grad_batches": 2, "max_steps": 2, "log_every_n_steps": 10}
    (logdir,) = glob.glob(str(tmp_path / "logs" / "*_flags"))
    (saved,) = glob.glob(os.path.join(logdir, "configs", "*-lightning.yaml"))
    assert "accumulate_grad_batches: 2" in open(saved).read()

    os.remove(probe)
    out = run_main("-r", logdir, "--max_steps", "3", "--log_every_n_steps", "1")  # the flag comes back from the run dir
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.load(open(probe)) == {"accumulate_grad_batches": 2, "max_steps": 3, "log_every_n_steps": 1}


def test_project_flag_names_the_wandb_project_and_is_a_saved_setting(tmp_path, monkeypatch):
    for spelling in ("-p", "--project", "--projectname"):  # --projectname: upstream's name of the same option
        opt, _ = flags(spelling, "digits-study")
        assert opt.project == "digits-study"
    opt, _ = flags("--wandb")
    assert main.apply_cli_settings(opt, {"project": "from-the-run"})["project"] == "from-the-run"  # -r restores it
    opt, _ = flags("--wandb")
    assert main.apply_cli_settings(opt, {})["project"] == "sgm-dmd"
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    opt, _ = flags("--wandb", "-p", "digits-study")
    main.apply_cli_settings(opt, {})
    loggers = main.make_loggers(opt, str(tmp_path), "run", None)
    (wandb_logger,) = [lg for lg in loggers if type(lg).__name__ == "WandbLogger"]
    assert wandb_logger.name == "digits-study"  # Lightning's WandbLogger.name is its project
