"""Critic on a fresh rollout vs. on the generator's detached sample (`critic.reuse_generator_sample`).

    python scripts/bench/critic_reuse.py --teacher logs/<digits teacher run> --iterations 250

Two `main.py` runs of the 4-step digits student (configs/dmd/digits_dmd.yaml + digits_dmd_4step.yaml),
identical but for the option, same seed and iterations, one after the other; then each student is
scored by `digits_eval.evaluate` (N samples, its 4-step sampler, same sampling seed). Iteration time is
the mean CPU time of this process per training batch (Lightning's batch start to batch end; the wall time
beside it) after `--skip` warm-up iterations, read by the `IterationTimer` callback (iteration_timer.py); the mean, not
the median, so the generator steps (every 5th iteration) count. Writes `--out` (Markdown table).
"""
from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)

import sgm  # noqa: E402,F401  (torchvision shim before Lightning)
from iteration_timer import read_seconds  # noqa: E402

CONFIGS = ["configs/dmd/digits_dmd.yaml", "configs/dmd/digits_dmd_4step.yaml"]
QUIET = ["lightning.trainer.enable_progress_bar=False",
         "lightning.callbacks.image_logger.params.batch_frequency=100000",
         "lightning.modelcheckpoint.params.every_n_train_steps=100000"]


def train(bench_dir: str, name: str, reuse: bool, args: argparse.Namespace) -> tuple[str, list[float]]:
    timings = os.path.join(bench_dir, f"{name}_seconds.json")
    teacher = os.path.abspath(os.path.join(args.teacher, "checkpoints", "last.ckpt"))
    cmd = ["main.py", "--base", *CONFIGS, "-l", bench_dir, "-n", name, "--no_date", "--max_steps",
           str(args.iterations), "-s", str(args.seed), f"model.params.teacher_ckpt_path={teacher}",
           f"model.params.critic.reuse_generator_sample={reuse}", f"data.params.batch_size={args.batch}", *QUIET,
           "lightning.callbacks.timer.target=iteration_timer.IterationTimer",
           f"lightning.callbacks.timer.params.path={timings}"]
    print("$ python " + " ".join(shlex.quote(a) for a in cmd), flush=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([HERE, ROOT, os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, *cmd], cwd=ROOT, check=True, env=env)
    return os.path.join(bench_dir, name), read_seconds(timings)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", required=True, metavar="RUN_DIR", help="a trained digits teacher run")
    p.add_argument("--iterations", type=int, default=250)
    p.add_argument("--batch", type=int, default=128, help="data.params.batch_size (the config's: 128)")
    p.add_argument("--skip", type=int, default=10, help="warm-up iterations left out of the timing")
    p.add_argument("--n", type=int, default=1000, help="samples scored per student")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--logdir", default="logs/bench_critic_reuse")
    p.add_argument("--out", default="docs/critic_reuse.md")
    raw = sys.argv[1:] if argv is None else argv
    args = p.parse_args(raw)
    import torch

    from digits_eval import evaluate
    from sgm.evaluation.engines import load_engine

    bench_dir = os.path.abspath(os.path.join(args.logdir, time.strftime("%Y-%m-%dT%H-%M-%S")))
    rows = []
    for name, reuse in (("fresh_rollout", False), ("reuse_sample", True)):
        run_dir, seconds = train(bench_dir, name, reuse, args)
        torch.set_num_threads(1)
        scores = evaluate(load_engine(run_dir), 4, n=args.n, seed=args.seed)
        wall, cpu = ([s[i] for s in seconds[args.skip:]] for i in (0, 1))
        rows.append({"reuse": reuse, "cpu_per_iter": sum(cpu) / len(cpu), "wall_per_iter": sum(wall) / len(wall),
                     "wall_median": statistics.median(wall), **{k: scores[k] for k in ("accuracy", "fd", "coverage")}})
        print(f"[bench] {name}: {rows[-1]}", flush=True)
    command = "python scripts/bench/critic_reuse.py " + " ".join(shlex.quote(a) for a in raw)
    lines = [f"`{command}` (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; 4-step digits student, "
             f"{args.iterations} iterations, batch {args.batch}, seed {args.seed}; N = {args.n} samples scored)", "",
             "| critic.reuse_generator_sample | CPU s/iteration (mean) | wall s/iteration (mean / median) | "
             "accuracy | FD | coverage |", "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['reuse']} | {r['cpu_per_iter']:.3f} | {r['wall_per_iter']:.3f} / {r['wall_median']:.3f} | "
              f"{r['accuracy']:.3f} | {r['fd']:.2f} | {r['coverage']:.2f} |" for r in rows]
    table = "\n".join(lines) + "\n"
    print(table)
    with open(os.path.join(bench_dir, "critic_reuse.md"), "w") as f:
        f.write(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table)


if __name__ == "__main__":
    main()
