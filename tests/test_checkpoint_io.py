"""Reading and writing weight files safely: no pickled code runs, bad files fail with one line naming
them, NaN/inf tensors are found on load, and checkpoint writes are atomic."""
import os

import pytest
import torch

from sgm.models.checkpoint import CheckpointError, read_state_dict


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
