"""Ablation: the same run twice, once with loss weights set to 0, and which statistics moved.

    python scripts/ablate.py --base configs/dmd/digits_dmd_gan.yaml \\
        --zero model.params.terms.gan.params.generator_weight --steps 200 --every 10 \\
        model.params.teacher_ckpt_path=logs/<teacher run>/checkpoints/last.ckpt
    python scripts/ablate.py --base_run logs/ablate/<earlier>/base --zero model.params.dmd_weight ...
    python scripts/ablate.py ... --dry-run        # check the keys, print the two commands, run nothing

Both runs are `main.py` runs with the same configs, seed, steps and overrides, plus the loss
diagnostics overlay (configs/diagnostics/loss_diagnostics.yaml, sampled every `--every` steps);
the ablated run adds `<key>=0.0` for every `--zero` key. Each command is printed before it starts
and can be re-run as is (from the directory ablate.py was started in). Steps are given as
`lightning.trainer.max_steps`, so a run's saved config records them.

Every `--zero` key is checked in the composed config before anything is launched: it must be a
nonzero number. A key `<node>.params.<name>` that the config leaves to the constructor default of
`<node>.target` is looked up there (e.g. DMDEngine's `dmd_weight`); any other absent key is an error.

`--base_run RUN_DIR` reuses a finished run (its saved configs/*-project.yaml and *-lightning.yaml)
as the base run and launches only the ablated one; give the seed that run used. Its steps and
diagnostics interval default to the ones it saved.

Output, printed and written to `<logdir>/<name>/ablation.md` (curves of both runs in ablation.png):
for each zeroed weight the gradient of its term in both runs (the term it weights:
sgm.diagnostics.registry.weighted_term), the statistics that moved (sgm.diagnostics.rules.compare, on each run's recent
window) and the verdicts of each run. The runs themselves are `<logdir>/<name>/base` and
`<logdir>/<name>/ablated`.
"""
from __future__ import annotations

import argparse
import datetime
import glob
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass

SCRIPTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(SCRIPTS)
sys.path.insert(0, SCRIPTS)
sys.path.insert(0, ROOT)

import sgm  # noqa: E402,F401  (torchvision shim before anything imports Lightning)

DIAGNOSTICS = os.path.join(ROOT, "configs", "diagnostics", "loss_diagnostics.yaml")
EVERY_KEY = "lightning.callbacks.loss_diagnostics.params.every_n_steps"
STEPS_KEY = "lightning.trainer.max_steps"
QUIET = ["lightning.trainer.enable_progress_bar=False"]
PLOTTED = 8  # moved statistics drawn in ablation.png besides the zeroed terms' gradients
DEFAULT_STEPS, DEFAULT_EVERY = 200, 10


class AblationError(SystemExit):
    """A user error, found before (or instead of) a run: one line, exit status 2."""

    def __init__(self, message: str):
        print(f"ablate.py: error: {message}", file=sys.stderr)
        super().__init__(2)


@dataclass
class Zeroed:
    key: str  # dotted config key, set to 0 in the ablated run
    value: float  # its value in the base run
    source: str  # where the value comes from: "config" or "<Engine> default"
    term: tuple[str, str] | None  # (role, term) the weight scales, as the engine's probe declares


# ---------------------------------------------------------------------------------- arguments
def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-b", "--base", nargs="+", default=[], metavar="config.yaml", help="main.py --base configs")
    p.add_argument("--base_run", metavar="RUN_DIR", help="reuse this finished run as the base run")
    p.add_argument("--zero", action="append", required=True, metavar="KEY",
                   help="dotted config key set to 0 in the ablated run (repeatable)")
    p.add_argument("--steps", type=int, default=None, help=f"training steps of each run (default {DEFAULT_STEPS})")
    p.add_argument("--every", type=int, default=None, help=f"diagnostics every N steps (default {DEFAULT_EVERY})")
    p.add_argument("-s", "--seed", type=int, default=0, help="main.py -s, the same for both runs")
    p.add_argument("-l", "--logdir", default="logs/ablate", help="root of the ablation directories")
    p.add_argument("-n", "--name", default=None, help="ablation directory name (default <time>_zero_<keys>)")
    p.add_argument("--threshold", type=float, default=0.2, help="relative change that counts as moved")
    p.add_argument("--dry-run", dest="dry_run", action="store_true", help="check, print the commands, exit")
    # key=value overrides anywhere (as in main.py): taken out first, or --base would swallow them
    overrides = [a for a in argv if "=" in a and not a.startswith("-") and not a.endswith((".yaml", ".yml"))]
    args, unknown = p.parse_known_args([a for a in argv if a not in overrides])
    if unknown:
        p.error(f"unrecognised arguments: {' '.join(unknown)} (overrides are written key.path=value)")
    if bool(args.base) == bool(args.base_run):
        p.error("give either --base configs (two runs) or --base_run RUN_DIR (the ablated run only)")
    for name in ("steps", "every"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1")
    args.zero = list(dict.fromkeys(args.zero))
    return args, overrides


def saved_configs(run_dir: str) -> list[str]:
    """The resolved configs a main.py run saved (the latest pair, for resumed runs)."""
    found = []
    for kind in ("project", "lightning"):
        paths = sorted(glob.glob(os.path.join(run_dir, "configs", f"*-{kind}.yaml")))
        if not paths:
            raise AblationError(f"--base_run {run_dir}: no configs/*-{kind}.yaml (not a finished main.py run?)")
        found.append(paths[-1])
    return found


def base_configs(args: argparse.Namespace) -> list[str]:
    """main.py --base list of both runs: the user's configs (or the base run's) + the diagnostics overlay."""
    if args.base_run:
        return saved_configs(args.base_run)
    missing = [p for p in args.base if not os.path.isfile(p)]
    if missing:
        raise AblationError(f"config file not found: {missing[0]}")
    overlay = os.path.relpath(DIAGNOSTICS)
    already = any(os.path.abspath(p) == DIAGNOSTICS for p in args.base)
    return list(args.base) if already else [*args.base, overlay]


# ---------------------------------------------------------------------------------- validation
def constructor_default(config, key: str) -> tuple[float, str] | None:
    """The constructor default of `<node>.params.<name>` where the config has `<node>.target`, or None
    (e.g. `model.params.dmd_weight`, `model.params.terms.gan.params.critic_weight`)."""
    import inspect

    from omegaconf import OmegaConf

    from sgm.util import get_obj_from_str

    node, sep, name = key.rpartition(".params.")
    target = OmegaConf.select(config, f"{node}.target", default=None) if sep and "." not in name else None
    if target is None:
        return None
    cls = get_obj_from_str(target)
    parameter = inspect.signature(cls).parameters.get(name)
    if parameter is None or parameter.default is inspect.Parameter.empty:
        return None
    return parameter.default, f"{cls.__name__} default"


def weighted_term(config, key: str) -> tuple[str, str] | None:
    """(role, term) whose loss the number at `key` weights (sgm.diagnostics.registry.weighted_term)."""
    from sgm.diagnostics.registry import weighted_term as registry_weighted_term

    return registry_weighted_term(config, key)


def check_zero_keys(config, keys: list[str]) -> list[Zeroed]:
    """Each key must hold a nonzero number in the composed config (or its engine's default)."""
    from omegaconf import OmegaConf

    absent = object()
    zeroed = []
    for key in keys:
        value, source = OmegaConf.select(config, key, default=absent), "config"
        if value is absent:
            value, source = constructor_default(config, key) or (absent, "")
        if value is absent:
            raise AblationError(f"--zero {key}: no such key in the composed config (nor a parameter of the "
                                "model's constructor); check the spelling against the resolved config")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise AblationError(f"--zero {key}: its value {value!r} is not a number")
        if value == 0:
            where = "in the composed config" if source == "config" else f"(the {source})"
            raise AblationError(f"--zero {key}: already 0 {where}: the base run would be the ablation; "
                                f"give it a nonzero value as an override ({key}=...) to ablate it")
        zeroed.append(Zeroed(key, float(value), source, weighted_term(config, key)))
    return zeroed


def saved_setting(config, key: str, flag: str) -> int:
    """A setting of the reused base run's saved config."""
    from omegaconf import OmegaConf

    value = OmegaConf.select(config, key, default=None)
    if value is None:
        raise AblationError(f"--base_run: its config has no {key}; give {flag}")
    return int(value)


# ---------------------------------------------------------------------------------- runs
def main_command(configs: list[str], run_root: str, run_name: str, args: argparse.Namespace,
                 overrides: list[str]) -> list[str]:
    """main.py arguments of one run (both runs differ only in the name and the zeroed keys)."""
    return ["--base", *configs, "-l", run_root, "-n", run_name, "--no_date", "-s", str(args.seed),
            f"{STEPS_KEY}={args.steps}", f"{EVERY_KEY}={args.every}", *QUIET, *overrides]


def shown(command: list[str]) -> str:
    return "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(os.path.join(ROOT, "main.py")), *command])


def run_main(command: list[str], which: str) -> None:
    """One main.py run as a subprocess, in the current directory; its output streams through."""
    print(f"$ {shown(command)}", flush=True)
    done = subprocess.run([sys.executable, os.path.join(ROOT, "main.py"), *command])
    if done.returncode != 0:
        raise AblationError(f"the {which} run failed (exit status {done.returncode}); its command is above")


# ---------------------------------------------------------------------------------- report
def report(zeroed: list[Zeroed], base: dict, ablated: dict, runs: dict[str, str], commands: dict[str, str],
           args: argparse.Namespace) -> str:
    """The Markdown report: the zeroed terms, the statistics that moved, the verdicts of each run."""
    from sgm.diagnostics.rules import ablation_verdict, compare, verdicts

    keys = ", ".join(f"`{z.key}`" for z in zeroed)
    lines = [f"# Ablation: {keys} = 0", ""]
    for which in ("base", "ablated"):
        lines += [f"{which} run `{runs[which]}`:", "", f"    {commands[which]}", ""]
    lines += [f"{args.steps} steps, seed {args.seed}, diagnostics every {args.every} steps. Statistics are "
              "compared on each run's recent window (the last quarter of its points, at least 3).", ""]
    if args.base_run:
        lines += [f"The base run was reused: main.py does not record its seed; this comparison assumes -s {args.seed}.",
                  ""]
    ends = {which: max((s for s, _ in series.get("grad/total", [])), default=None)
            for which, series in (("base", base), ("ablated", ablated))}
    if ends["base"] != ends["ablated"]:
        lines += [f"**The runs' last diagnosed steps differ ({ends['base']} vs {ends['ablated']}): the recent "
                  "windows do not cover the same steps.**", ""]
    lines += ["## The zeroed weights", ""]
    for z in zeroed:
        lines.append(f"- `{z.key}` = {z.value:g} ({z.source}) -> 0")
        if z.term is None:
            lines.append("  - no gradient statistic is tied to this key: see the statistics that moved")
        else:
            lines.append(f"  - `{ablation_verdict(base, ablated, z.term[1], z.term[0], z.key)}`")
    moved = compare(base, ablated, args.threshold)
    lines += ["", f"## Statistics that moved by more than {args.threshold:.0%}", ""]
    if moved:
        lines += ["| statistic | base | ablated | change |", "|---|---:|---:|---|"]
        value = lambda v: "absent" if v is None else f"{v:.4g}"
        lines += [f"| {m.name} | {value(m.base)} | {value(m.ablated)} | {m.how} |" for m in moved]
    else:
        lines.append("none")
    lines += ["", "## Verdicts", ""]
    for which, series in (("base", base), ("ablated", ablated)):
        lines += [f"{which} run:", "", *[f"    {v}" for v in verdicts(series)], ""]
    return "\n".join(lines)


def plot_keys(zeroed: list[Zeroed], base: dict, ablated: dict, threshold: float) -> set[str]:
    """The zeroed terms' gradient norms and shares, and the statistics that moved most."""
    from sgm.diagnostics.rules import compare

    keys = {f"grad/{z.term[1]}{end}" for z in zeroed if z.term for end in ("", "_ratio")}
    return keys | {m.name for m in compare(base, ablated, threshold)[:PLOTTED]}


# ---------------------------------------------------------------------------------- main
@dataclass
class Plan:
    out_dir: str  # <logdir>/<name>: the report, and the runs launched
    runs: dict[str, str]  # "base" / "ablated" -> run directory
    commands: dict[str, list[str]]  # main.py arguments of the runs to launch (not of a reused base run)
    zeroed: list[Zeroed]


def plan(args: argparse.Namespace, overrides: list[str]) -> Plan:
    """Everything checked and decided before a run starts; fills in args.steps and args.every."""
    from sgm.config import load_configs
    from sgm.diagnostics.rules import read_metrics

    configs = base_configs(args)
    try:
        config = load_configs(configs, overrides)
    except Exception as error:  # a malformed file or override: one line, nothing launched
        raise AblationError(f"cannot compose the config: {type(error).__name__}: {error}") from None
    zeroed = check_zero_keys(config, args.zero)
    if args.base_run:
        if not any(k.startswith("grad/") for k in read_metrics(args.base_run)):
            raise AblationError(f"--base_run {args.base_run}: no LossDiagnostics metrics in its CSV logs "
                                "(rerun it with configs/diagnostics/loss_diagnostics.yaml)")
        args.steps = args.steps or saved_setting(config, STEPS_KEY, "--steps")
        args.every = args.every or saved_setting(config, EVERY_KEY, "--every")
    args.steps, args.every = args.steps or DEFAULT_STEPS, args.every or DEFAULT_EVERY

    now = datetime.datetime.now().strftime("%Y-%m-%dT%H-%M-%S")
    name = args.name or f"{now}_zero_{'+'.join(z.key.rsplit('.', 1)[-1] for z in zeroed)}"
    out_dir = os.path.join(args.logdir, name)
    runs = {"base": args.base_run or os.path.join(out_dir, "base"), "ablated": os.path.join(out_dir, "ablated")}
    zeros = [f"{z.key}=0.0" for z in zeroed]
    commands = {"ablated": main_command(configs, out_dir, "ablated", args, [*overrides, *zeros])}
    if not args.base_run:
        commands = {"base": main_command(configs, out_dir, "base", args, overrides), **commands}
    return Plan(out_dir, runs, commands, zeroed)


def write_report(p: Plan, args: argparse.Namespace) -> str:
    """ablation.md (printed too) and ablation.png in p.out_dir; returns the Markdown path."""
    from diagnose import plot

    from sgm.diagnostics.rules import read_metrics

    base, ablated = read_metrics(p.runs["base"]), read_metrics(p.runs["ablated"])
    commands = {"base": f"(reused: {args.base_run})"} | {w: shown(c) for w, c in p.commands.items()}
    text = report(p.zeroed, base, ablated, p.runs, commands, args)
    png = plot({"base": base, "ablated": ablated}, os.path.join(p.out_dir, "ablation.png"),
               plot_keys(p.zeroed, base, ablated, args.threshold))
    if png:
        text += "\n![curves of both runs](ablation.png)\n"
    path = os.path.join(p.out_dir, "ablation.md")
    with open(path, "w") as f:
        f.write(text)
    print("\n" + text)
    return path


def main(argv: list[str] | None = None) -> int:
    args, overrides = parse_args(sys.argv[1:] if argv is None else list(argv))
    p = plan(args, overrides)
    for z in p.zeroed:
        print(f"ablate.py: {z.key} = {z.value:g} ({z.source}) -> 0 in the ablated run")
    if args.dry_run:
        if args.base_run:
            print(f"base run: {args.base_run} (reused)")
        for command in p.commands.values():
            print(f"$ {shown(command)}")
        return 0
    for which, command in p.commands.items():
        run_main(command, which)
    print(f"ablate.py: report written to {write_report(p, args)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
