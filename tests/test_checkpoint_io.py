"""Reading and writing weight files safely: no pickled code runs, bad files fail with one line naming
them, NaN/inf tensors are found on load, and checkpoint writes are atomic."""
import errno
import os
import signal
import subprocess
import sys
import tempfile

import pytest
import torch

from sgm.io.checkpoint import (
    TEMP_SUFFIX,
    CheckpointError,
    atomic_torch_save,
    atomic_write,
    read_resume_checkpoint,
    read_state_dict,
    remove_partial_files,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Planted:
    """Unpickling this object would create `marker` (what a malicious checkpoint would do)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _good(path: str) -> str:
    torch.save({"state_dict": {"w": torch.ones(3), "step": torch.tensor(3)}, "global_step": 3}, path)
    return path


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".pth"])
def test_a_planted_pickle_is_refused_and_never_runs(tmp_path, suffix):
    marker = tmp_path / "ran"
    path = str(tmp_path / f"evil{suffix}")
    torch.save({"state_dict": {"w": torch.ones(1)}, "payload": _Planted(str(marker))}, path)
    with pytest.raises(CheckpointError, match="refused to unpickle") as info:
        read_state_dict(path)
    assert path in str(info.value) and "\n" not in str(info.value)
    assert not marker.exists()


def test_plain_checkpoints_still_load(tmp_path):
    state = read_state_dict(_good(str(tmp_path / "ok.ckpt")))
    assert torch.equal(state["w"], torch.ones(3))


def test_resume_reads_refuse_weights_only_false_for_every_trainer_hook(tmp_path):
    from sgm.callbacks.checkpointing import AtomicCheckpointIO

    path = _good(str(tmp_path / "last.ckpt"))
    for read in (read_resume_checkpoint, AtomicCheckpointIO().load_checkpoint):
        with pytest.raises(CheckpointError, match="refusing to unpickle .*last.ckpt with weights_only=False"):
            read(path, weights_only=False)
        assert read(path, weights_only=None)["global_step"] == 3


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
@pytest.mark.parametrize("suffix", [".ckpt", ".safetensors"])
def test_damaged_files_fail_with_one_line_naming_the_file(tmp_path, damage, suffix):
    from safetensors.torch import save_file

    path = str(tmp_path / f"model{suffix}")
    if suffix == ".ckpt":
        _good(path)
    else:
        save_file({"w": torch.ones(64)}, path)
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write({"truncated": data[: len(data) // 2], "garbage": b"not a checkpoint " * 20, "empty": b""}[damage])
    with pytest.raises(CheckpointError) as info:
        read_state_dict(path)
    message = str(info.value)
    assert message.startswith(f"cannot read checkpoint {path}") and "\n" not in message


def test_non_finite_tensors_are_named_on_load(tmp_path):
    from safetensors.torch import save_file

    bad = {"net.a": torch.tensor([1.0, float("nan")]), "net.b": torch.ones(2),
           "net.c": torch.tensor([float("inf")]), "count": torch.tensor([7])}
    for path in (str(tmp_path / "t.ckpt"), str(tmp_path / "t.safetensors")):
        if path.endswith(".ckpt"):
            torch.save({"state_dict": bad}, path)
        else:
            save_file(bad, path)
        with pytest.raises(CheckpointError, match="2 tensors hold NaN/inf values: net.a, net.c") as info:
            read_state_dict(path)
        assert path in str(info.value)
        assert set(read_state_dict(path, check_finite=False)) == set(bad)


# ------------------------------------------------------------------------------ atomic writes
def _partial_files(directory) -> list[str]:
    return [name for name in os.listdir(directory) if name.endswith(TEMP_SUFFIX)]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path):
    path = str(tmp_path / "last.ckpt")
    atomic_torch_save({"step": torch.tensor(1)}, path)

    def disk_full(f):
        f.write(b"x" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        atomic_write(path, disk_full)
    assert int(torch.load(path, weights_only=True)["step"]) == 1
    assert _partial_files(tmp_path) == []
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C in the middle of a save
        atomic_write(path, lambda f: (_ for _ in ()).throw(KeyboardInterrupt()))
    assert _partial_files(tmp_path) == [] and int(torch.load(path, weights_only=True)["step"]) == 1


KILLED_WRITER = """
import os, signal, sys, torch
from sgm.io.checkpoint import atomic_torch_save, atomic_write
path = sys.argv[1]
atomic_torch_save({"step": torch.tensor(1), "w": torch.ones(1000)}, path)
def killed(f):
    f.write(b"y" * 4096)
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)
atomic_write(path, killed)
"""


@pytest.fixture
def other_filesystem(tmp_path):
    """A tmpfs mounted for the test, so the target directory and $TMPDIR are on different filesystems."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        assert os.stat(mount).st_dev != os.stat(tempfile.gettempdir()).st_dev
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_kill_during_a_save_on_another_filesystem_keeps_the_last_complete_file(other_filesystem):
    path = str(other_filesystem / "checkpoints" / "last.ckpt")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
    out = subprocess.run([sys.executable, "-c", KILLED_WRITER, path], env=env, capture_output=True, timeout=120)
    assert out.returncode == -signal.SIGKILL, out.stderr.decode()[-2000:]
    assert int(torch.load(path, weights_only=True)["step"]) == 1  # the complete old file, not 0 bytes
    folder = os.path.dirname(path)
    assert len(_partial_files(folder)) == 1  # the unfinished write sits beside its target, not in $TMPDIR
    assert remove_partial_files(str(other_filesystem)) and _partial_files(folder) == []
    assert os.listdir(folder) == ["last.ckpt"]


def test_lightning_checkpoints_are_written_atomically_and_never_with_nan(tmp_path):
    from sgm.callbacks.checkpointing import AtomicCheckpointIO

    io = AtomicCheckpointIO()
    path = str(tmp_path / "a.ckpt")
    io.save_checkpoint({"state_dict": {"w": torch.ones(2)}, "global_step": 4}, path)
    assert io.load_checkpoint(path)["global_step"] == 4
    with pytest.raises(CheckpointError, match=r"not writing .*b.ckpt: 1 weights hold NaN/inf values: w"):
        io.save_checkpoint({"state_dict": {"w": torch.tensor([float("nan")])}}, str(tmp_path / "b.ckpt"))
    assert sorted(os.listdir(tmp_path)) == ["a.ckpt"]


def test_atomic_writes_get_the_usual_file_mode_not_mkstemps_0600(tmp_path):
    from sgm.io.checkpoint import atomic_write

    old = os.umask(0o022)
    try:
        path = tmp_path / "model.safetensors"
        atomic_write(str(path), lambda f: f.write(b"weights"))
    finally:
        os.umask(old)
    assert path.read_bytes() == b"weights"
    assert (path.stat().st_mode & 0o777) == 0o644


def test_tensor_files_we_write_are_safetensors_written_atomically(tmp_path):
    from safetensors import safe_open

    from sgm.io.checkpoint import atomic_save_safetensors

    path = str(tmp_path / "model.safetensors")
    atomic_save_safetensors({"w": torch.ones(2, 3).t(), "cls": torch.arange(4)}, path, metadata={"ema": "True"})
    with safe_open(path, framework="pt") as f:  # non-contiguous input is written, metadata kept
        assert f.metadata() == {"ema": "True"} and torch.equal(f.get_tensor("w"), torch.ones(3, 2))
    with pytest.raises(RuntimeError, match="share memory"):  # safetensors refuses shared storage: the old file stays
        shared = torch.zeros(4)
        atomic_save_safetensors({"a": shared, "b": shared}, path)
    assert _partial_files(tmp_path) == [] and torch.equal(read_state_dict(path)["cls"], torch.arange(4))


def test_ode_pairs_are_written_as_safetensors_and_older_pt_files_still_read(tmp_path):
    from sgm.io.checkpoint import atomic_save_safetensors
    from sgm.modules.distillation.ode_pairs import ODEPairsDataset

    pairs = {"ode_noise": torch.randn(5, 1, 4, 4), "ode_x0": torch.randn(5, 1, 4, 4), "cls": torch.arange(5)}
    atomic_save_safetensors(pairs, str(tmp_path / "pairs.safetensors"))
    torch.save(pairs, str(tmp_path / "pairs.pt"))  # what scripts/generate_ode_pairs.py wrote before
    for name in ("pairs.safetensors", "pairs.pt"):
        data = ODEPairsDataset(str(tmp_path / name))
        assert len(data) == 5 and all(torch.equal(data[3][k], v[3]) for k, v in pairs.items()), name
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match=f"cannot read checkpoint {tmp_path / 'bad.pt'}"):
        ODEPairsDataset(str(tmp_path / "bad.pt"))
    script = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "generate_ode_pairs.py"), "--config", "x.yaml",
                             "--ckpt", "t.ckpt", "--out", str(tmp_path / "pairs.pt")],
                            capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert script.returncode != 0 and script.stderr.strip() == f"error: --out must name a .safetensors file, got {tmp_path / 'pairs.pt'}"
