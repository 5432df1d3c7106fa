"""main.py under a hostile user and a cluster: signals, crash checkpoints, flushed metrics, resume
settings, bad inputs."""
import csv
import glob
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

import sgm  # noqa: F401  (before Lightning: torchvision shim)
import pytorch_lightning as pl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS = "configs/example_training/toy/digits_cond.yaml"
TINY = [
    "data.params.batch_size=16",
    "model.params.network_config.params.model_channels=32",
    "model.params.network_config.params.num_res_blocks=1",
    "model.params.network_config.params.channel_mult=[1]",
    "model.params.network_config.params.attention_resolutions=[]",
    "lightning.callbacks.image_logger=null",
    "lightning.trainer.log_every_n_steps=1",
    "lightning.trainer.enable_progress_bar=False",
]


def env() -> dict:  # tests/ on the path: configs may name the probes below
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([os.path.join(ROOT, "tests"), ROOT])}


def run_main(*args, timeout: int = 600):
    return subprocess.run([sys.executable, "main.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env())


def csv_steps(logdir: str, key: str = "loss") -> list[int]:
    steps = []
    for path in sorted(glob.glob(os.path.join(logdir, "csv", "version_*", "metrics.csv"))):
        with open(path) as f:
            steps += [int(r["step"]) for r in csv.DictReader(f) if r.get(key)]
    return steps


@pytest.fixture
def log_mount(tmp_path):
    """The log root on a tmpfs mounted for the test (another filesystem than $TMPDIR) when we may
    mount; the plain temp dir otherwise."""
    mount = tmp_path / "logs"
    mount.mkdir()
    mounted = os.geteuid() == 0 and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256m", "tmpfs", str(mount)], capture_output=True).returncode == 0
    yield str(mount)
    if mounted:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


@pytest.mark.slow
@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGINT, 1)])
def test_a_signal_saves_a_crash_checkpoint_flushes_metrics_and_exits_non_zero(log_mount, signum, status):
    args = ["--base", DIGITS, "-l", log_mount, "-n", "sig", "--max_steps", "100000",
            "lightning.modelcheckpoint.params.every_n_train_steps=3", *TINY]
    proc = subprocess.Popen([sys.executable, "main.py", *args], cwd=ROOT, env={**env(), "PYTHONFAULTHANDLER": "1"},
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    try:
        while not glob.glob(os.path.join(log_mount, "*_sig", "checkpoints", "epoch=*.ckpt")):
            assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
            time.sleep(0.2)
        (logdir,) = glob.glob(os.path.join(log_mount, "*_sig"))
        # flushed with the checkpoint after 3 steps, not after 100: rows of steps 0 and 1 are on disk (step 2's
        # row reaches the logger after the checkpoint hook of its own batch; under load a later
        # checkpoint could already have flushed it, which made '>= 2' pass only on a busy machine)
        steps = csv_steps(logdir)
        assert steps and max(steps) >= 1, steps
        proc.send_signal(signum)
        try:
            _, err = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:  # where it hangs: SIGABRT makes faulthandler print every thread's stack
            proc.send_signal(signal.SIGABRT)
            _, err = proc.communicate(timeout=60)
            pytest.fail(f"main.py still running 120 s after signal {signum}; its stderr ends:\n{err[-6000:]}")
    finally:
        proc.kill()
    assert proc.returncode == status, err[-3000:]
    (crash,) = glob.glob(os.path.join(logdir, "checkpoints", "crash-step=*.ckpt"))
    state = torch.load(crash, map_location="cpu", weights_only=True)
    assert state["global_step"] >= 3 and f"crash-step={state['global_step']:08}" in crash
    # metrics up to the stop are on disk (a step interrupted before Lightning hands its row to the logger
    # cannot be: global_step counts it once the optimiser has stepped)
    assert max(csv_steps(logdir)) >= state["global_step"] - 2
    assert not glob.glob(os.path.join(logdir, "checkpoints", ".*"))  # no unfinished writes left


# ------------------------------------------------------------------------------ exact resume (DMD)
DMD_TINY = [
    "model.params.network_config.params.model_channels=32",
    "model.params.network_config.params.num_res_blocks=1",
    "model.params.network_config.params.channel_mult=[1]",
    "data.params.batch_size=8",
    "model.params.generator.update_interval=2",
    "lightning.callbacks.image_logger=null",
    "lightning.trainer.log_every_n_steps=1",
    "lightning.trainer.enable_progress_bar=False",
]


@pytest.fixture(scope="module")
def digits_teacher(tmp_path_factory):
    from sgm.config import load_configs
    from sgm.util import instantiate_from_config

    torch.manual_seed(0)
    teacher = instantiate_from_config(load_configs([os.path.join(ROOT, DIGITS)], DMD_TINY[:3]).model)
    with torch.no_grad():
        teacher.model.diffusion_model.out[-1].weight.normal_(0.0, 0.05)  # a nonzero output layer
        teacher.model_ema(teacher.model)
    path = str(tmp_path_factory.mktemp("teacher") / "last.ckpt")
    torch.save({"state_dict": teacher.state_dict(), "global_step": 0}, path)
    return path


def _state(logdir: str) -> dict:
    return torch.load(os.path.join(logdir, "checkpoints", "last.ckpt"), map_location="cpu", weights_only=True)


class SigtermAt(pl.Callback):
    """Test probe: the process sends itself SIGTERM after the step that brings global_step to `step`."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.slow
def test_a_resumed_dmd_run_matches_an_uninterrupted_one_bit_for_bit(tmp_path, digits_teacher):
    """A run stopped by SIGTERM after step 4 (a generator step), moved, with a garbage last.ckpt planted,
    resumed by a bare `-r DIR` through main.py, ends as a run of 8 steps did: --max_steps 8 and -s 7 come
    back from the run directory, the crash checkpoint is the newest readable one, an LR override is
    reported and left out."""
    base = ["--base", "configs/dmd/digits_dmd.yaml", "-l", str(tmp_path), "-s", "7", "--max_steps", "8",
            f"model.params.teacher_ckpt_path={digits_teacher}", *DMD_TINY]
    assert run_main(*base, "-n", "straight").returncode == 0
    out = run_main(*base, "-n", "split", "lightning.callbacks.sigterm_at.target=test_main_reliability.SigtermAt",
                   "lightning.callbacks.sigterm_at.params.step=4")
    assert out.returncode == 143, out.stderr[-3000:]
    (split,) = glob.glob(str(tmp_path / "*_split"))
    moved = str(tmp_path / "moved")
    shutil.move(split, moved)
    with open(os.path.join(moved, "checkpoints", "last.ckpt"), "wb") as f:
        f.write(b"not a checkpoint")
    out = run_main("-r", moved, "lightning.callbacks.sigterm_at=null", "model.base_learning_rate=1.0")
    assert out.returncode == 0, out.stderr[-3000:]
    notes = [line for line in out.stderr.splitlines() if line.startswith("main.py: note:")]
    assert "passing over last.ckpt: cannot read checkpoint" in notes[0]
    assert notes[1].endswith("resuming from crash-step=00000004.ckpt (step 4)")
    assert "model.base_learning_rate=1.0" in notes[2]
    (straight,) = glob.glob(str(tmp_path / "*_straight"))
    a, b = _state(straight), _state(moved)
    assert a["global_step"] == b["global_step"] == 8
    different = [k for k in a["state_dict"] if not torch.equal(a["state_dict"][k], b["state_dict"][k])]
    assert different == []  # generator, EMA, critic (and the frozen parts)
    for opt_a, opt_b in zip(a["optimizer_states"], b["optimizer_states"]):
        assert opt_a["param_groups"] == opt_b["param_groups"]  # the LR override was not applied
        for p in opt_a["state"]:
            assert all(torch.equal(opt_a["state"][p][k], opt_b["state"][p][k]) for k in opt_a["state"][p])
    assert a["lr_schedulers"] == b["lr_schedulers"]
    assert not glob.glob(os.path.join(moved, "checkpoints", "last-v*.ckpt"))
    saved = sorted(glob.glob(os.path.join(moved, "configs", "*-project.yaml")))
    assert len(saved) == 2 and "base_learning_rate: 1.0" not in open(saved[-1]).read()

    # a checkpoint path with '=' in it is a path, not an override
    out = run_main("-r", os.path.join(moved, "checkpoints", "crash-step=00000004.ckpt"), "--max_steps", "4",
                   "lightning.callbacks.sigterm_at=null")
    assert out.returncode == 0, out.stderr[-3000:]


# ------------------------------------------------------------------------------ bad inputs: one line each
DMD = "configs/dmd/digits_dmd.yaml"


def _planted_pickle(path: str, marker: str) -> str:
    class Planted:
        def __reduce__(self):
            return (open, (marker, "w"))

    torch.save({"state_dict": {"w": torch.ones(1)}, "payload": Planted()}, path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("case", [
    "type_int", "type_lr", "trainer_key", "batch_zero", "batch_too_large", "grad_clip_zero", "ema_decay",
    "logdir_under_file", "logdir_is_file", "data_typo_first", "garbage_teacher", "pickled_teacher", "nan_teacher"])
def test_bad_inputs_fail_with_one_line_naming_the_culprit(tmp_path, case, digits_teacher):
    teacher = f"model.params.teacher_ckpt_path={digits_teacher}"
    garbage = str(tmp_path / "garbage.ckpt")
    open(garbage, "wb").write(b"not a checkpoint at all")
    nan_file = str(tmp_path / "nan.ckpt")
    state = torch.load(digits_teacher, weights_only=True)
    state["state_dict"]["model_ema.diffusion_modelout2weight"][0] = float("nan")
    torch.save(state, nan_file)
    marker = str(tmp_path / "ran")
    cases = {  # case: (config, extra arguments, expected in the last line)
        "type_int": (DMD, [teacher, "model.params.generator.update_interval=abc"],
                     "model.params.generator.update_interval must be int, got 'abc'"),
        "type_lr": (DIGITS, ["model.base_learning_rate=fast"], "model.base_learning_rate must be a number, got 'fast'"),
        "trainer_key": (DIGITS, ["lightning.trainer.max_stepz=5"],
                        "lightning.trainer.max_stepz is not a Trainer argument (did you mean max_steps?)"),
        "batch_zero": (DIGITS, ["data.params.batch_size=0"], "data.params.batch_size must be >= 1, got 0"),
        "batch_too_large": (DIGITS, ["data.params.batch_size=5000"], "the training data gives no batch"),
        "grad_clip_zero": (DMD, [teacher, "model.params.generator.grad_clip=0"],
                           "model.params.generator.grad_clip must be > 0 or null"),
        "ema_decay": (DIGITS, ["model.params.ema_decay_rate=1.5"], "model.params.ema_decay_rate must be in [0, 1]"),
        "logdir_under_file": (DIGITS, ["-l", os.path.join(garbage, "logs")], f"{garbage} is a file"),
        "logdir_is_file": (DIGITS, ["-l", garbage], f"{garbage} is a file"),
        "data_typo_first": (DMD, ["model.params.teacher_ckpt_path=/no/such/teacher.ckpt", "data.params.batch_sise=8"],
                            "unexpected keyword argument 'batch_sise'"),
        "garbage_teacher": (DMD, [f"model.params.teacher_ckpt_path={garbage}"], f"cannot read checkpoint {garbage}"),
        "pickled_teacher": (DMD, [f"model.params.teacher_ckpt_path={_planted_pickle(str(tmp_path / 'p.ckpt'), marker)}"],
                            "refused to unpickle"),
        "nan_teacher": (DMD, [f"model.params.teacher_ckpt_path={nan_file}"],
                        f"{nan_file}: 1 tensors hold NaN/inf values: model_ema.diffusion_modelout2weight"),
    }
    config, extra, expected = cases[case]
    args = ["--base", config, *TINY[1:4], "--max_steps", "2", *extra]
    if "-l" not in extra:
        args += ["-l", str(tmp_path / "logs")]
    out = run_main(*args, timeout=300)
    assert out.returncode not in (0, None), out.stdout[-2000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("main.py: error") and expected in last, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    assert not os.path.exists(marker)
