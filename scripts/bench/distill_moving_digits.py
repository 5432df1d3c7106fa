"""Moving-digits image-to-video benchmark: the tiny SVD-architecture teacher against its 1-step DMD2 student.

    python scripts/bench/distill_moving_digits.py                       # committed teacher, 1-step student
    python scripts/bench/distill_moving_digits.py --iterations 600 --clips 256
    python scripts/bench/distill_moving_digits.py --teacher logs/<teacher run or export dir>
    python scripts/bench/distill_moving_digits.py --quick               # tiny end-to-end check

The distillation is one `main.py` run of `configs/dmd/moving_digits_dmd.yaml` (printed before it
starts), the embedded default of the README. Its `MovingDigitsEvaluation` callback scores, on the same
held-out clips and noise: the real clips, the teacher (Euler + its CFG) at each of `--teacher_eval_steps`,
and the student at 1 step (sgm/evaluation/moving_digits.py). This script only chooses the sizes, then
copies the table and GIFs to `--docs` and plots the metrics against NFE
(`moving_digits_distillation.{md,png,json}`).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

import sgm  # noqa: E402,F401  (torchvision shim before anything imports Lightning)
from student_runs import teacher_ckpt  # noqa: E402

CONFIG = "configs/dmd/moving_digits_dmd.yaml"
DEFAULT_TEACHER = "assets/moving_digits_teacher"
QUICK_OVERRIDES = ["data.params.batch_size=2", "lightning.callbacks.image_logger.params.batch_frequency=100000",
                   "lightning.modelcheckpoint.params.every_n_train_steps=100000"]
PLOTTED = [("frame_fd", "per-frame FD (lower is better)"), ("identity_consistency", "identity consistency"),
           ("speed_error", "speed error, px/frame (lower is better)")]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default=DEFAULT_TEACHER, metavar="DIR", help="teacher run or export directory")
    p.add_argument("--iterations", type=int, default=None, help="DMD iterations (default: the config's)")
    p.add_argument("--clips", type=int, default=256, help="held-out clips per row")
    p.add_argument("--teacher_eval_steps", type=int, nargs="+", default=[1, 2, 4, 10, 25])
    p.add_argument("--logdir", default="logs/bench_moving_digits", help="root of the bench run directories")
    p.add_argument("--docs", default="docs", help="where the table, plot and GIFs are copied")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="tiny end-to-end run: 2 iterations, 4 clips, teacher at 1 step")
    args = p.parse_args(argv)
    if args.quick:
        args.iterations, args.clips, args.teacher_eval_steps = 2, 4, [1]
    return args


def distil(bench_dir: str, args: argparse.Namespace) -> str:
    overrides = [f"model.params.teacher_ckpt_path={teacher_ckpt(args.teacher)}",
                 f"lightning.callbacks.video_eval.params.teacher={args.teacher}",
                 f"lightning.callbacks.video_eval.params.clips={args.clips}",
                 "lightning.callbacks.video_eval.params.teacher_steps=[" + ",".join(map(str, args.teacher_eval_steps)) + "]",
                 "lightning.trainer.enable_progress_bar=False"]
    if args.iterations is not None:
        overrides.append(f"lightning.trainer.max_steps={args.iterations}")
    overrides += QUICK_OVERRIDES if args.quick else []
    cmd = ["--base", CONFIG, "-l", bench_dir, "-n", "student_1step", "--no_date", "-s", str(args.seed), *overrides]
    print("$ python main.py " + " ".join(shlex.quote(a) for a in cmd), flush=True)
    subprocess.run([sys.executable, "main.py", *cmd], cwd=ROOT, check=True)
    return os.path.join(bench_dir, "student_1step")


def plot(rows: list[dict], path: str) -> None:
    """Each plotted metric against NFE (log x): the teacher's curve, the student's point, the real clips' level."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    real = next(r for r in rows if r["nfe"] is None)
    teacher = sorted((r for r in rows if r["model"].startswith("teacher")), key=lambda r: r["nfe"])
    students = [r for r in rows if r["nfe"] is not None and not r["model"].startswith("teacher")]
    fig, axes = plt.subplots(1, len(PLOTTED), figsize=(4.2 * len(PLOTTED), 3.6))
    for ax, (key, title) in zip(axes, PLOTTED):
        ax.plot([r["nfe"] for r in teacher], [r[key] for r in teacher], "o-", color="C0", label="teacher (Euler + CFG)")
        for r in teacher:
            ax.annotate(f"{r['steps']}", (r["nfe"], r[key]), textcoords="offset points", xytext=(3, 3), fontsize=7)
        for i, r in enumerate(students):
            ax.plot([r["nfe"]], [r[key]], "*", markersize=12, color=f"C{i + 1}", label=f"DMD2 {r['steps']}-step student")
        ax.axhline(real[key], color="grey", linestyle="--", linewidth=1, label="real held-out clips")
        nfes = sorted({r["nfe"] for r in teacher + students})
        ax.set_xscale("log")
        ax.set_xticks(nfes, [str(n) for n in nfes])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_xlabel("NFE per clip frame")
        ax.set_title(title, fontsize=9)
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("Moving digits (image-to-video): teacher vs. 1-step student", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(rows: list[dict], command: str, args: argparse.Namespace, table: str) -> str:
    return "\n".join([
        "# Moving digits: SVD-architecture teacher vs. 1-step DMD2 student",
        "",
        f"Produced by `{command}`",
        "",
        f"{args.clips} held-out clips (8 frames, 16x16) per row, conditioned on their first frames, same noise "
        f"for every row (seed {args.seed}); teacher `{args.teacher}`. Metrics (sgm/metrics/moving_digits.py): "
        "per-frame digit accuracy on the clip's class and Fréchet distance of digit-classifier features of "
        "8x8 crops around the ink (lower is better); identity consistency across frames; |speed - "
        "conditioned speed| and acceleration of the ink centre (px); mean motion (px/frame, compare with the "
        "real clips). NFE per frame (CFG counts twice).",
        "",
        table,
    ])


def main(argv: list[str] | None = None) -> list[dict]:
    raw = sys.argv[1:] if argv is None else argv
    args = parse_args(raw)
    command = "python scripts/bench/distill_moving_digits.py " + " ".join(shlex.quote(a) for a in raw)
    now = datetime.datetime.now().strftime("%Y-%m-%dT%H-%M-%S")
    bench_dir = os.path.abspath(os.path.join(args.logdir, f"{now}_moving_digits" + ("_quick" if args.quick else "")))
    os.makedirs(bench_dir, exist_ok=True)
    start = time.perf_counter()
    run = distil(bench_dir, args)
    eval_dir = os.path.join(run, "eval")
    with open(os.path.join(eval_dir, "moving_digits_eval.json")) as f:
        rows = json.load(f)
    with open(os.path.join(eval_dir, "moving_digits_eval.md")) as f:
        table = f.read()
    text = markdown(rows, command, args, table)
    for d in (bench_dir, args.docs):
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "moving_digits_distillation.md"), "w") as f:
            f.write(text)
        plot(rows, os.path.join(d, "moving_digits_distillation.png"))
        with open(os.path.join(d, "moving_digits_distillation.json"), "w") as f:
            json.dump({"command": command, "rows": rows}, f, indent=1)
        if d != bench_dir:
            for name in os.listdir(eval_dir):
                if name.endswith(".gif"):
                    shutil.copy(os.path.join(eval_dir, name), os.path.join(d, f"moving_digits_{name}"))
    print(text, flush=True)
    print(f"[bench] done in {time.perf_counter() - start:.0f} s: {bench_dir}", flush=True)
    return rows


if __name__ == "__main__":
    main()
