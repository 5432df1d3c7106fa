"""Lightning's FSDP strategy as main.py configs name it, and the gradient-norm clip that is right under it.

    lightning:
      strategy:
        target: sgm.strategies.FSDP
        params: {process_group_backend: gloo}   # CPU; on GPUs leave it out (NCCL)

`FSDP` is `pytorch_lightning.strategies.FSDPStrategy` with these changes:
- the wrap policy is a list of class paths (`wrap`, YAML-friendly); by default every U-Net (the generator,
  the teacher and the critic) is its own FSDP unit, the rest (conditioner, EMA buffers) the root unit;
- it runs on the CPU (gloo): Lightning 2.6 wraps with `device_id=None` there, which torch refuses, and
  gathers full state dicts with `offload_to_cpu=True`, which crashes (SIGSEGV) on CPU shards;
- resuming reads the checkpoint through `sgm.io.checkpoint.read_resume_checkpoint` (weights_only=True) instead
  of Lightning's own reader, which unpickles without restriction;
- only the sharding strategies that shard every gradient (FULL_SHARD, SHARD_GRAD_OP) are accepted:
  `clip_grad_norm` adds up the squared gradient shards of all ranks, which is the norm only if each
  gradient element lives on exactly one rank.

Checkpoints are full state dicts gathered on rank 0 and written by the trainer's checkpoint I/O
(main.py: `AtomicCheckpointIO`, atomic, never with NaN), so a run saved under FSDP resumes under FSDP,
DDP or one process alike.
"""
from __future__ import annotations

import math
from contextlib import contextmanager, nullcontext
from typing import Any, Iterable, Iterator

import torch
from pytorch_lightning.core.optimizer import LightningOptimizer
from pytorch_lightning.strategies import FSDPStrategy

from sgm.io.checkpoint import read_resume_checkpoint
from sgm.util import ConfigError, get_obj_from_str

DEFAULT_WRAP = ("sgm.modules.diffusionmodules.openaimodel.UNetBase",)  # image and video U-Nets alike
SHARDING = ("FULL_SHARD", "SHARD_GRAD_OP")
FSDP_WRAPPED = "_fsdp_wrapped_module."  # the level FSDP inserts into the names below a wrapped module


class FSDP(FSDPStrategy):
    def __init__(
        self,
        wrap: list[str] | None = None,  # class paths, each instance its own FSDP unit; default DEFAULT_WRAP
        sharding_strategy: str = "FULL_SHARD",  # FULL_SHARD or SHARD_GRAD_OP
        **kwargs: Any,  # FSDPStrategy's: process_group_backend, cpu_offload, mixed_precision, ...
    ) -> None:
        if sharding_strategy not in SHARDING:
            raise ConfigError(f"lightning.strategy.params.sharding_strategy must be one of {list(SHARDING)} "
                              f"(every gradient sharded), got {sharding_strategy!r}")
        if kwargs.get("state_dict_type", "full") != "full":
            raise ConfigError("lightning.strategy.params.state_dict_type must be 'full': checkpoints are one file "
                              "written atomically by main.py's checkpoint I/O")
        for key in ("auto_wrap_policy", "activation_checkpointing", "activation_checkpointing_policy"):
            if key in kwargs:
                raise ConfigError(f"lightning.strategy.params.{key} is not supported by sgm.strategies.FSDP: give "
                                  "the FSDP units as `wrap` (class paths); the networks checkpoint themselves")
        self.wrap_classes = tuple(_module_class(path) for path in (wrap or DEFAULT_WRAP))
        super().__init__(sharding_strategy=sharding_strategy, **kwargs)

    def _setup_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """Each instance of a `wrap` class becomes its own FSDP root; the engine itself stays unwrapped.

        Lightning wraps the whole LightningModule, so a manual backward runs inside the root's forward and
        FSDP never finalises it (handles stay in BACKWARD_POST; gathering the EMA's or a checkpoint's full
        parameters then fails). As separate roots, each network's backward completes on its own. Trainable
        parameters outside every unit would not be synchronised: refused. On the CPU the device is passed
        explicitly (Lightning 2.6 passes None, which torch refuses: "FSDP needs a non-CPU accelerator device")."""
        from torch.distributed.fsdp import FullyShardedDataParallel

        units = _outermost(model, self.wrap_classes)
        device = self.root_device if self.root_device.type == "cpu" else self.root_device.index
        for parent, name, child in units:
            setattr(parent, name, FullyShardedDataParallel(
                child, cpu_offload=self.cpu_offload, mixed_precision=self.mixed_precision_config,
                sharding_strategy=self.sharding_strategy, device_id=device, **self.kwargs))
        loose = [n for n, p in model.named_parameters() if p.requires_grad and FSDP_WRAPPED not in n]
        if loose:
            raise ConfigError(f"lightning.strategy.params.wrap: trainable parameters outside every FSDP unit would "
                              f"not be synchronised: {loose[:5]}; add their modules' classes to `wrap`")
        return model

    def full_state(self, rank0_only: bool):
        """FSDP's full-state-dict context for the wrapped model. Offloading to the CPU only on accelerators: on
        the CPU it frees the storage it then reads (SIGSEGV; Lightning issue 21804)."""
        from torch.distributed.fsdp import FullOptimStateDictConfig, FullStateDictConfig, StateDictType
        from torch.distributed.fsdp import FullyShardedDataParallel

        offload = self.root_device.type != "cpu"
        return FullyShardedDataParallel.state_dict_type(
            self.model, StateDictType.FULL_STATE_DICT,
            FullStateDictConfig(offload_to_cpu=offload, rank0_only=rank0_only),
            FullOptimStateDictConfig(offload_to_cpu=offload, rank0_only=rank0_only))

    def lightning_module_state_dict(self) -> dict[str, Any]:
        """The full, unsharded state dict on rank 0 (empty elsewhere), under the module's own key names."""
        with self.full_state(rank0_only=True):
            return self.model.state_dict()

    def optimizer_state(self, optimizer: Any) -> dict[str, Any]:
        """The optimiser's full state on rank 0 keyed as a plain optimiser keys it (index in its own groups)."""
        from torch.distributed.fsdp import FullyShardedDataParallel, OptimStateKeyType

        if isinstance(optimizer, LightningOptimizer):
            optimizer = optimizer.optimizer
        with self.full_state(rank0_only=True):
            state = FullyShardedDataParallel.optim_state_dict(self.model, optimizer)
        if self.global_rank != 0:
            return state
        return FullyShardedDataParallel.rekey_optim_state_dict(state, OptimStateKeyType.PARAM_ID, self.model,
                                                               optim=optimizer)

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        """A full checkpoint read by `read_resume_checkpoint` (weights_only=True; Lightning's own reader unpickles
        without restriction), loaded into the shards of the model and of both optimisers."""
        from torch.distributed.fsdp import FullyShardedDataParallel, OptimStateKeyType

        checkpoint = read_resume_checkpoint(self.broadcast(checkpoint_path), weights_only)
        with self.full_state(rank0_only=False):
            self.model.load_state_dict(checkpoint["state_dict"], strict=self.lightning_module.strict_loading)
        if self.lightning_module.trainer.state.fn != "fit" or "optimizer_states" not in checkpoint:
            return checkpoint
        if len(checkpoint["optimizer_states"]) != len(self.optimizers):
            raise ConfigError(f"{checkpoint_path} holds {len(checkpoint['optimizer_states'])} optimiser states, "
                              f"the model has {len(self.optimizers)} optimisers")
        for optimizer, state in zip(self.optimizers, checkpoint["optimizer_states"]):
            with self.full_state(rank0_only=False):
                named = FullyShardedDataParallel.rekey_optim_state_dict(state, OptimStateKeyType.PARAM_NAME,
                                                                        self.model, optim=optimizer)
                optimizer.load_state_dict(FullyShardedDataParallel.optim_state_dict_to_load(self.model, optimizer,
                                                                                            named))
        return checkpoint

    def load_model_state_dict(self, checkpoint: Any, strict: bool = True) -> None:
        """Loaded by load_checkpoint already."""

    def load_optimizer_state_dict(self, checkpoint: Any) -> None:
        """Loaded by load_checkpoint already."""

    def clip_grad_norm(self, params: Iterable[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
        """Scale the gradients of `params` (this rank's shards) to a global L2 norm of at most `max_norm`
        -> the global norm before clipping, the same on every rank."""
        grads = [p.grad for p in params if p.grad is not None and p.grad.numel() > 0]
        local = torch.zeros((), dtype=torch.float32, device=self.root_device)
        for grad in grads:
            local += grad.detach().float().pow(2).sum()  # sum of squares of this rank's elements
        torch.distributed.all_reduce(local, op=torch.distributed.ReduceOp.SUM)  # each element on one rank
        norm = local.sqrt()
        if math.isfinite(max_norm):
            coef = (max_norm / (norm + 1e-6)).clamp(max=1.0)  # as torch.nn.utils.clip_grad_norm_
            for grad in grads:
                grad.mul_(coef.to(grad.dtype))
        return norm


def clip_grad_norm(params: list[torch.nn.Parameter], max_norm: float, strategy: Any = None) -> torch.Tensor:
    """Clip `params`' gradients to a total L2 norm of `max_norm` -> the norm before clipping (inf: no clip).

    Under `FSDP` a rank holds shards of the gradients and the norm is summed over ranks; otherwise each
    rank holds whole (all-reduced) gradients and torch's clip applies."""
    if isinstance(strategy, FSDP):
        return strategy.clip_grad_norm(params, max_norm)
    return torch.nn.utils.clip_grad_norm_(params, max_norm)


@contextmanager
def full_parameters(module: torch.nn.Module, strategy: Any = None) -> Iterator[dict[str, torch.nn.Parameter]]:
    """Inside: {name: parameter} of `module`, whole on every rank and under the module's own names (read-only;
    e.g. for an EMA update). Under `FSDP` they are gathered from the shards and FSDP's wrapper level is
    dropped from the names; otherwise they are whole already."""
    if isinstance(strategy, FSDP):
        from torch.distributed.fsdp import FullyShardedDataParallel

        context = FullyShardedDataParallel.summon_full_params(module, writeback=False)
    else:
        context = nullcontext()
    with context:
        yield {name.replace(FSDP_WRAPPED, ""): p for name, p in module.named_parameters()}


def _outermost(model: torch.nn.Module, classes: tuple[type, ...]) -> list[tuple[torch.nn.Module, str, torch.nn.Module]]:
    """(parent, attribute, module) of each instance of `classes` not inside another one, each module once."""
    found, seen = [], set()

    def visit(module: torch.nn.Module) -> None:
        for name, child in module.named_children():
            if isinstance(child, classes):
                if id(child) not in seen:
                    seen.add(id(child))
                    found.append((module, name, child))
            else:
                visit(child)

    visit(model)
    return found


def _module_class(path: str) -> type:
    try:
        cls = get_obj_from_str(path)
    except (ImportError, AttributeError) as error:
        raise ConfigError(f"lightning.strategy.params.wrap: cannot import {path!r} ({error})") from None
    if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
        raise ConfigError(f"lightning.strategy.params.wrap: {path} is not an nn.Module class")
    return cls


__all__ = ["FSDP", "clip_grad_norm", "full_parameters"]
