"""What the video distillation benches share: their common flags and one student `main.py` run.

Used by chain_moving_digits.py and distill_multiview_digits.py (each adds its own flags and rows).
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def add_common_args(p: argparse.ArgumentParser, teacher: str, clips: int, logdir: str) -> None:
    """--teacher, --iterations, --clips, --teacher_steps, --logdir, --docs, --seed, --quick."""
    p.add_argument("--teacher", default=teacher, metavar="DIR", help="the teacher's main.py run (or export directory)")
    p.add_argument("--iterations", type=int, default=None, help="DMD iterations of each run (default: the config's)")
    p.add_argument("--clips", type=int, default=clips, help="held-out clips per row")
    p.add_argument("--teacher_steps", type=int, default=None, help="teacher sampler steps (default: its config's)")
    p.add_argument("--logdir", default=logdir, help="root of the bench run directories")
    p.add_argument("--docs", default=None, help="where the table and GIFs go (default: docs; --quick: the bench dir)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="tiny end-to-end run: 2 iterations, 4 clips, teacher at 2 steps")


def apply_quick(args: argparse.Namespace) -> argparse.Namespace:
    if args.quick:
        args.iterations, args.clips, args.teacher_steps = 2, 4, 2
    return args


def teacher_ckpt(teacher: str) -> str:
    """The weights file of a run directory (checkpoints/last.ckpt) or an export (model.safetensors)."""
    for name in ("model.safetensors", os.path.join("checkpoints", "last.ckpt")):
        path = os.path.join(teacher, name)
        if os.path.isfile(path):
            return path
    raise SystemExit(f"error: --teacher {teacher}: no model.safetensors or checkpoints/last.ckpt in it")


def run_student(
    name: str,  # run name under bench_dir
    configs: list[str],  # main.py --base list
    bench_dir: str,  # main.py -l
    args: argparse.Namespace,  # teacher, seed, iterations (add_common_args)
    overrides: list[str] = (),  # further main.py overrides
) -> tuple[str, str]:
    """One student main.py run from the teacher's weights -> (run directory, the printed command)."""
    cli = ["--base", *configs, "-l", bench_dir, "-n", name, "--no_date", "-s", str(args.seed),
           f"model.params.teacher_ckpt_path={teacher_ckpt(args.teacher)}", "lightning.trainer.enable_progress_bar=False",
           *overrides]
    if args.iterations is not None:
        cli.append(f"lightning.trainer.max_steps={args.iterations}")
    command = "python main.py " + " ".join(shlex.quote(a) for a in cli)
    print("$ " + command, flush=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, HERE, os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, "main.py", *cli], cwd=ROOT, check=True, env=env)
    return os.path.join(bench_dir, name), command
