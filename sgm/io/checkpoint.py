"""Reading weight files and loading them into modules with every problem named.

Accepted files: `.safetensors` (released upstream weights, often fp16) and Lightning `.ckpt`
(a dict whose `state_dict` holds the weights). Values are cast to each parameter's dtype on load,
so fp16 files load into fp32 modules; modules built on the meta device are filled without first
materialising random weights.
"""
from __future__ import annotations

import contextlib
import glob
import os
import pickle
import tempfile
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Callable, Iterable, Iterator

import torch
from torch import nn


class CheckpointError(RuntimeError):
    """A weight file that cannot be read or does not fit the module; the message names the keys."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The weight file named by a config (`ckpt_path`) does not exist."""


@dataclass
class LoadReport:
    path: str
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    def summary(self, limit: int = 10) -> str:
        def show(keys: list[str]) -> str:
            more = f" ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
            return ", ".join(keys[:limit]) + more

        parts = [f"loaded {self.path}"]
        if self.missing:
            parts.append(f"{len(self.missing)} missing keys: {show(self.missing)}")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected keys: {show(self.unexpected)}")
        if not self.missing and not self.unexpected:
            parts.append("all keys matched")
        return "; ".join(parts)


def read_state_dict(path: str, check_finite: bool = True) -> dict[str, torch.Tensor]:
    """Weights of a `.safetensors` or Lightning `.ckpt` file, on the CPU.

    `.ckpt/.pt/.pth` files are unpickled with `weights_only=True`: tensors and plain containers only,
    so a crafted file cannot run code. Unreadable files and (with `check_finite`) NaN/inf tensors raise
    a CheckpointError that names the file and the keys.
    """
    if not os.path.isfile(path):
        raise CheckpointNotFoundError(f"checkpoint file not found: {path}")
    if path.endswith(".safetensors"):
        state_dict = _read_file(path, _load_safetensors)
    elif path.endswith((".ckpt", ".pt", ".pth")):
        state_dict = _lightning_state_dict(path, _read_file(path, read_torch_file))
    else:
        raise CheckpointError(f"unsupported checkpoint format '{os.path.splitext(path)[1]}' for {path}; "
                              "use .safetensors or a Lightning .ckpt")
    if check_finite:
        check_finite_tensors(state_dict, path)
    return state_dict


def read_torch_file(path: str, mmap: bool = False) -> Any:
    """`torch.load` that never runs pickled code (tensors, numbers, strings and containers only);
    `mmap=True` maps the tensors instead of reading them (a cheap look at a large checkpoint)."""
    return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)


def read_checkpoint(path: str, mmap: bool = False) -> Any:
    """The whole payload of a torch checkpoint file; failures are one CheckpointError naming the file."""
    if not os.path.isfile(path):
        raise CheckpointNotFoundError(f"checkpoint file not found: {path}")
    return _read_file(path, lambda p: read_torch_file(p, mmap=mmap))


def read_resume_checkpoint(path: str, weights_only: bool | None = None) -> Any:
    """`read_checkpoint` for Lightning's resume hooks, which may ask for `weights_only=False`: a resumed file
    is a user's file too, so that request is refused (CheckpointError naming the file), never honoured."""
    if weights_only is False:
        raise CheckpointError(f"refusing to unpickle {path} with weights_only=False")
    return read_checkpoint(str(path))


def _load_safetensors(path: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(path, device="cpu")


def _read_file(path: str, reader) -> Any:
    """`reader(path)` with any failure turned into one line naming the file."""
    try:
        return reader(path)
    except Exception as error:  # torch, pickle, zip and safetensors each raise their own types
        text = str(error).strip()
        if isinstance(error, pickle.UnpicklingError) and "GLOBAL" in text:
            culprit = next((line.strip() for line in text.splitlines() if "GLOBAL" in line), "")
            raise CheckpointError(f"{path}: refused to unpickle: it holds objects other than tensors and plain "
                                  f"containers, which could run code ({culprit[:120]})") from None
        detail = text.splitlines()[0].split(". ")[0][:120] if text else ""
        raise CheckpointError(f"cannot read checkpoint {path}: truncated or not a checkpoint file "
                              f"({type(error).__name__}{': ' + detail if detail else ''})") from None


def _lightning_state_dict(path: str, payload: Any) -> dict[str, torch.Tensor]:
    if isinstance(payload, dict) and "state_dict" in payload:
        return payload["state_dict"]
    if isinstance(payload, dict) and all(isinstance(v, torch.Tensor) for v in payload.values()):
        return payload
    raise CheckpointError(f"{path}: expected a Lightning checkpoint with a 'state_dict' entry")


def non_finite_keys(state_dict: dict[str, Any]) -> list[str]:
    """Keys of floating-point tensors that hold a NaN or an inf."""
    return [k for k, v in state_dict.items()
            if isinstance(v, torch.Tensor) and v.is_floating_point() and not v.is_meta
            and not bool(torch.isfinite(v).all())]


def non_finite_summary(state_dict: dict[str, Any], noun: str = "tensors") -> str | None:
    """"N <noun> hold NaN/inf values: k1, k2, ..." for the bad tensors of `state_dict`, None when all are finite."""
    bad = non_finite_keys(state_dict)
    if not bad:
        return None
    more = f" ... (+{len(bad) - 5} more)" if len(bad) > 5 else ""
    return f"{len(bad)} {noun} hold NaN/inf values: {', '.join(bad[:5])}{more}"


def check_finite_tensors(state_dict: dict[str, Any], path: str) -> None:
    summary = non_finite_summary(state_dict)
    if summary:
        raise CheckpointError(f"{path}: {summary}")


TEMP_SUFFIX = ".partial"  # temp files of atomic writes: .<name>.<random>.partial beside the target


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """A temp path in `path`'s own directory to write to; on leaving, fsync it and `os.replace` it onto `path`.

    The temp file sits on the target's filesystem, so the rename is atomic wherever the run directory
    lives ($TMPDIR plays no part): `path` is always the old complete file or the new one. A failed write
    (full disk, exception, Ctrl-C) removes the temp file; after a kill -9 `remove_partial_files` does.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=TEMP_SUFFIX, dir=directory)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600 files; a checkpoint gets the usual mode
        os.close(fd)
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_directory(directory)  # the rename itself survives a power cut


def atomic_write(path: str, write: Callable[[BinaryIO], None]) -> None:
    """`write(f)` into a temp file beside `path`, then onto `path` atomically (`atomic_path`)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        write(f)


def atomic_torch_save(obj: Any, path: str) -> None:
    atomic_write(path, lambda f: torch.save(obj, f))


def atomic_save_safetensors(tensors: dict[str, torch.Tensor], path: str, metadata: dict[str, str] | None = None) -> None:
    """A .safetensors file of `tensors` (contiguous, CPU or not), written atomically (`atomic_path`)."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)


def remove_partial_files(directory: str) -> list[str]:
    """Delete temp files that a killed `atomic_write` left in `directory` (and its subfolders)."""
    stale = glob.glob(os.path.join(glob.escape(directory), "**", f".*{TEMP_SUFFIX}"), recursive=True)
    for path in stale:
        with contextlib.suppress(OSError):
            os.unlink(path)
    return stale


def _umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


def _fsync_directory(directory: str) -> None:
    with contextlib.suppress(OSError):  # not every OS/filesystem lets a directory be opened
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def select_prefix(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Entries under `prefix` with the prefix removed (prefix '' keeps everything)."""
    if not prefix:
        return dict(state_dict)
    return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}


def load_weights(
    module: nn.Module,  # destination
    state_dict: dict[str, torch.Tensor],  # source, keys relative to `module`
    path: str = "<state_dict>",  # for messages
    required_prefixes: Iterable[str] = ("",),  # missing keys under these prefixes are errors
) -> LoadReport:
    """Load non-strictly, but fail on shape mismatches and on missing keys under `required_prefixes`.

    A module built on the meta device (no storage) receives the file's tensors themselves
    (`assign=True`), cast to each parameter's dtype, so a full-size model never holds random weights.
    """
    own = module.state_dict()
    mismatched = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state_dict.items()
        if k in own and tuple(v.shape) != tuple(own[k].shape)
    ]
    if mismatched:
        raise CheckpointError(f"{path}: {len(mismatched)} tensors have the wrong shape: "
                              + "; ".join(mismatched[:10]))
    report = LoadReport(
        path=path,
        missing=sorted(k for k in own if k not in state_dict),
        unexpected=sorted(k for k in state_dict if k not in own),
    )
    required = tuple(required_prefixes)
    missing_required = [k for k in report.missing if k.startswith(required)]
    if missing_required:
        raise CheckpointError(
            f"{path}: {len(missing_required)} required keys are missing, e.g. "
            + ", ".join(missing_required[:5])
        )
    if _has_meta_tensors(own.values()):
        # Built under `torch.device("meta")`: adopt the file's tensors instead of copying into
        # storage that does not exist. Keys missing from the file stay on meta.
        module.load_state_dict(_cast_like(state_dict, own), strict=False, assign=True)
    else:
        module.load_state_dict(state_dict, strict=False)
    return report


def _has_meta_tensors(tensors: Iterable[torch.Tensor]) -> bool:
    return any(t.is_meta for t in tensors)


def _cast_like(state_dict: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each known entry in the dtype of the tensor it replaces (fp16 file -> fp32 module, as a copying
    load would do) and on that tensor's device unless it is meta; unknown entries unchanged."""
    cast = {}
    for key, value in state_dict.items():
        target = own.get(key)
        if target is None:
            cast[key] = value
            continue
        device = value.device if target.is_meta else target.device
        cast[key] = value.to(device=device, dtype=target.dtype)
    return cast
