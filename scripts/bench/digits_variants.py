"""Digits: DMD2 students of one teacher that differ only in their configs (same seed, iterations, N).

    # the critic's sigma law: the teacher's training law vs DMD2's uniform grid (the default)
    python scripts/bench/digits_variants.py --teacher logs/<teacher run> --stem critic_sigma_law_digits \\
        --variant "teacher law=configs/dmd/digits_dmd.yaml+configs/dmd/critic_sigmas_teacher.yaml" \\
        --variant "uniform grid=configs/dmd/digits_dmd.yaml"
    # loss terms: DMD alone, + the DINO-style semantic term, + the GAN term
    python scripts/bench/digits_variants.py --teacher logs/<teacher run> --stem digits_loss_terms \\
        --variant "DMD=configs/dmd/digits_dmd.yaml" --variant "DMD + semantic=configs/dmd/digits_dmd_dino.yaml" \\
        --variant "DMD + GAN=configs/dmd/digits_dmd_gan.yaml"

`--variant "NAME=CFG[+CFG...]"`: a student trained by `main.py --base CFG ...` from the teacher's
last.ckpt, `--iterations` DMD iterations at seed `--seed` (main.py -s). A variant whose run directory
already holds a last.ckpt trained for the same iterations is scored, not retrained (`--logdir/NAME`).
Every row is scored by `digits_eval.evaluate` (accuracy, FD, coverage) at N = `--n` and sampling seed
`--seed`, the teacher at `--teacher_steps`. The table goes to `--docs/<stem>.md` with the commands.
A variant whose configs include the diagnostics overlay (configs/diagnostics/loss_diagnostics.yaml) also gets
its run's verdicts (`sgm.diagnostics.rules.verdicts`, as `scripts/diagnose.py RUN` prints them) under the table.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from distill_digits import QUIET, ROOT, run_main, score  # noqa: E402


def parse_variant(text: str) -> tuple[str, list[str]]:
    name, sep, configs = text.partition("=")
    if not sep or not name.strip() or not configs.strip():
        raise argparse.ArgumentTypeError(f"--variant must be NAME=CFG[+CFG...], got {text!r}")
    paths = [c.strip() for c in configs.split("+")]
    for path in paths:
        if not os.path.isfile(os.path.join(ROOT, path)):
            raise argparse.ArgumentTypeError(f"--variant {name!r}: config {path} not found")
    return name.strip(), paths


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", required=True, metavar="RUN_DIR", help="teacher run (configs/ + checkpoints/last.ckpt)")
    p.add_argument("--variant", type=parse_variant, action="append", required=True, help="NAME=CFG[+CFG...]")
    p.add_argument("--iterations", type=int, default=800, help="DMD iterations per student")
    p.add_argument("--n", type=int, default=1000, help="samples per row (FD compared at equal N)")
    p.add_argument("--teacher_steps", type=int, nargs="+", default=[25], help="teacher rows: its sampler's steps")
    p.add_argument("--seed", type=int, default=0, help="training seed of every student and sampling seed")
    p.add_argument("--logdir", default="logs/bench_digits_variants", help="one run directory per variant under it")
    p.add_argument("--docs", default="docs")
    p.add_argument("--stem", default="digits_variants", help="output file stem in --docs")
    return p.parse_args(argv)


def run_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_").lower()


def trained_steps(run_dir: str) -> int | None:
    """The global step of a run's last.ckpt, None when it has none."""
    from sgm.io.checkpoint import read_checkpoint

    path = os.path.join(run_dir, "checkpoints", "last.ckpt")
    if not os.path.isfile(path):
        return None
    return int(read_checkpoint(path)["global_step"])


def train_variant(name: str, configs: list[str], args: argparse.Namespace) -> tuple[str, str, float | None]:
    """-> run directory, main.py command of variant `name` (trained unless already there), wall s/iteration."""
    logdir = os.path.abspath(args.logdir)
    run_dir = os.path.join(logdir, run_name(name))
    teacher_ckpt = os.path.abspath(os.path.join(args.teacher, "checkpoints", "last.ckpt"))
    cli = ["--base", *configs, "-l", logdir, "-n", run_name(name), "--no_date", "--max_steps", str(args.iterations),
           "-s", str(args.seed), f"model.params.teacher_ckpt_path={teacher_ckpt}", *QUIET]
    command = "python main.py " + " ".join(shlex.quote(a) for a in cli)
    if trained_steps(run_dir) == args.iterations:
        print(f"[variants] {name}: reusing {run_dir}", flush=True)
        return run_dir, command, None
    start = time.perf_counter()
    run_main(cli)
    return run_dir, command, (time.perf_counter() - start) / args.iterations  # start-up included


def run_verdicts(run_dir: str) -> list[str]:
    """The diagnostics verdicts of a run, one line each; [] when the run logged no diagnostics."""
    from sgm.diagnostics.rules import read_metrics, verdicts

    series = read_metrics(run_dir)
    if not any(key.startswith("grad/") for key in series):
        return []
    return [str(v) for v in verdicts(series)]


def markdown(rows: list[dict], commands: dict[str, str], args: argparse.Namespace, command: str,
             diagnostics: dict[str, list[str]]) -> str:
    lines = [f"Produced by `{command}` (teacher `{args.teacher}`).", "",
             f"N = {args.n} class-balanced samples per row, sampling seed {args.seed}; students: {args.iterations} "
             f"DMD iterations, seed {args.seed}, 1 step. FD: Fréchet distance of digit-classifier features to the "
             "held-out digits (lower is better).", "",
             "| model | steps | accuracy | FD | coverage | wall s/iteration |", "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        it = f"{r['sec_per_iteration']:.3f}" if r.get("sec_per_iteration") else "-"
        lines.append(f"| {r['model']} | {r['steps']} | {r['accuracy']:.3f} | {r['fd']:.2f} | {r['coverage']:.2f} | {it} |")
    lines += ["", "Student runs:", ""] + [f"- {name}: `{cmd}`" for name, cmd in commands.items()]
    for name, found in diagnostics.items():
        if found:
            lines += ["", f"Diagnostics verdicts, {name} (`python scripts/diagnose.py <its run>`):", "", "```",
                      *found, "```"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> list[dict]:
    raw = sys.argv[1:] if argv is None else argv
    args = parse_args(raw)
    command = "python scripts/bench/digits_variants.py " + " ".join(shlex.quote(a) for a in raw)
    import torch

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    start = time.perf_counter()
    runs, commands, speed = {}, {}, {}
    for name, configs in args.variant:
        runs[name], commands[name], speed[name] = train_variant(name, configs, args)
    score_args = argparse.Namespace(n=args.n, seed=args.seed)
    rows = score(args.teacher, "teacher", args.teacher_steps, score_args)
    for name, run_dir in runs.items():
        rows += [r | {"model": name, "sec_per_iteration": speed[name]}
                 for r in score(run_dir, name, [1], score_args)]
    os.makedirs(args.docs, exist_ok=True)
    diagnostics = {name: run_verdicts(run_dir) for name, run_dir in runs.items()}
    table = markdown(rows, commands, args, command, diagnostics)
    with open(os.path.join(args.docs, f"{args.stem}.md"), "w") as f:
        f.write(table)
    with open(os.path.join(os.path.abspath(args.logdir), f"{args.stem}.json"), "w") as f:
        json.dump({"command": command, "rows": rows, "verdicts": diagnostics}, f, indent=1, default=float)
    print(table, flush=True)
    print(f"[variants] done in {time.perf_counter() - start:.0f} s", flush=True)
    return rows


if __name__ == "__main__":
    main()
