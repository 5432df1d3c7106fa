"""`--<name> VALUE` for every `pytorch_lightning.Trainer` argument, as upstream's main.py offers.

A flag reads its value as the override `lightning.trainer.<name>=VALUE` would (YAML: `2` int, `0.5` float,
`true` bool, `null` None, `[0, 1]` list, anything else a string) and checks it against the argument's
annotation in `Trainer.__init__`, so `--accumulate_grad_batches two` fails in one line naming the flag.
main.py writes the given flags into the lightning config, which the run directory saves and `-r` restores.
Lightning is imported only when the parser is built.
"""
from __future__ import annotations

import argparse
import inspect
import types
import typing
from typing import Any

# Trainer arguments main.py builds itself: the run's loggers, its callbacks (lightning.callbacks), the
# checkpoint I/O plugin (atomic writes) and the run directory. They get no flag.
SET_BY_MAIN = ("logger", "callbacks", "plugins", "default_root_dir")
DEST_PREFIX = "trainer."  # argparse dest of a flag: trainer.<name>, absent from the namespace unless given


def trainer_parameters() -> dict[str, inspect.Parameter]:
    """The arguments of `pytorch_lightning.Trainer.__init__` that a flag may set."""
    import pytorch_lightning as pl

    parameters = inspect.signature(pl.Trainer.__init__).parameters
    return {name: p for name, p in parameters.items() if name != "self" and name not in SET_BY_MAIN}


def add_trainer_flags(parser: argparse.ArgumentParser) -> None:
    """One `--<name>` per Trainer argument; a name the parser already uses keeps its own meaning.
    Arguments that take a bool may be given bare (`--detect_anomaly` is `--detect_anomaly true`)."""
    group = parser.add_argument_group("Trainer arguments (any pl.Trainer argument; saved, restored by -r)")
    for name, parameter in trainer_parameters().items():
        bare = dict(nargs="?", const="true") if accepts(True, parameter.annotation) else {}
        try:
            group.add_argument(f"--{name}", dest=DEST_PREFIX + name, default=argparse.SUPPRESS, metavar="VALUE",
                               help=f"Trainer({name}=...), {describe(parameter.annotation)}", **bare)
        except argparse.ArgumentError:  # one of main.py's own flags
            continue


def given_trainer_flags(opt: argparse.Namespace) -> dict[str, Any]:
    """The Trainer flags on the command line -> {name: value}, each value parsed and checked.

    Raises ValueError naming the flag when a value does not fit its argument's annotation."""
    from omegaconf import OmegaConf

    parameters = trainer_parameters()
    flags = {}
    for dest, raw in vars(opt).items():
        if not dest.startswith(DEST_PREFIX):
            continue
        name = dest[len(DEST_PREFIX):]
        value = OmegaConf.to_container(OmegaConf.from_dotlist([f"value={raw}"]))["value"]
        check_trainer_value(f"--{name}", value, parameters[name].annotation)
        flags[name] = value
    return flags


def check_trainer_value(label: str, value: Any, annotation: Any) -> None:
    """Raise ValueError('<label> must be <kinds>, got <value>') unless `value` fits `annotation`."""
    if not accepts(value, annotation):
        raise ValueError(f"{label} must be {describe(annotation)}, got {value!r}")


def accepts(value: Any, annotation: Any) -> bool:
    """Whether a plain value (as YAML gives it) fits a Trainer annotation. Classes that a command line or a
    YAML file cannot hold (Accelerator, Strategy, timedelta) accept nothing."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is inspect.Parameter.empty or annotation is Any:
        return True
    if origin is typing.Union or origin is types.UnionType:
        return any(accepts(value, a) for a in args)
    if origin is typing.Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if origin is list:
        return isinstance(value, list) and all(accepts(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(accepts(v, args[1]) for v in value.values())
    if annotation is type(None):
        return value is None
    if annotation in (int, float):  # bool is an int to Python, not to a Trainer argument
        return isinstance(value, (int, float) if annotation is float else int) and not isinstance(value, bool)
    return isinstance(annotation, type) and isinstance(value, annotation)


def describe(annotation: Any) -> str:
    """`int`, `int or float or null`, `one of 64, 32, 16 or ...` for help texts and errors."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Union or origin is types.UnionType:
        return " or ".join(dict.fromkeys(describe(a) for a in args))
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is list:
        return f"a list of {describe(args[0])}"
    if origin is dict:
        return "a mapping"
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))
