"""Digits distillation benchmark: the EDM teacher against 1-, 2- and 4-step DMD2 students.

    python scripts/bench/distill_digits.py                          # train the teacher, distil, score
    python scripts/bench/distill_digits.py --teacher logs/<teacher run>   # reuse a trained teacher
    python scripts/bench/distill_digits.py --quick                  # tiny end-to-end check (minutes)

Every stage is a `main.py` run, exactly what a user would type (printed before it starts):
the teacher from `configs/example_training/toy/digits_cond.yaml`, each student from
`configs/dmd/digits_dmd.yaml` (+ the 2-/4-step overlay) initialised from the teacher's last.ckpt.
Rows are scored by `digits_eval.evaluate` at the same N and seed: the teacher with its own sampler
(Euler + CFG) at each of `--teacher_eval_steps`, each student with its few-step sampler at its own
step count. Results go to `<bench run>/` and `--docs` as `digits_distillation.{md,png}`, plus
`digits_distillation.json` (all rows) in the bench run directory.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import sgm  # noqa: E402,F401  (torchvision shim before anything imports Lightning)

TEACHER_CONFIG = "configs/example_training/toy/digits_cond.yaml"
STUDENT_CONFIGS = {  # student steps -> main.py --base list
    1: ["configs/dmd/digits_dmd.yaml"],
    2: ["configs/dmd/digits_dmd.yaml", "configs/dmd/digits_dmd_2step.yaml"],
    4: ["configs/dmd/digits_dmd.yaml", "configs/dmd/digits_dmd_4step.yaml"],
}
QUIET = ["lightning.trainer.enable_progress_bar=False"]
# --quick: a smaller batch, few image logs; the architecture stays the one in the configs.
QUICK_OVERRIDES = [
    "data.params.batch_size=16",
    "lightning.callbacks.image_logger.params.batch_frequency=100000",
    "lightning.modelcheckpoint.params.every_n_train_steps=100000",
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default=None, metavar="RUN_DIR", help="reuse this teacher run (else train one)")
    p.add_argument("--teacher_steps", type=int, default=2000, help="teacher training steps when training one")
    p.add_argument("--student_steps", type=int, default=800, help="DMD iterations per student")
    p.add_argument("--students", type=int, nargs="+", default=[1, 2, 4], choices=sorted(STUDENT_CONFIGS))
    p.add_argument("--gan", action="store_true", help="students with DMD2's GAN term (configs/dmd/digits_dmd_gan.yaml)")
    p.add_argument("--teacher_eval_steps", type=int, nargs="+", default=[1, 2, 4, 10, 25, 50])
    p.add_argument("--n", type=int, default=1000, help="samples per row (FD compared at equal N)")
    p.add_argument("--logdir", default="logs/bench_digits", help="root of the bench run directories")
    p.add_argument("--docs", default="docs", help="where the Markdown table and the plot are copied")
    p.add_argument("--seed", type=int, default=0, help="training seed (main.py -s) and sampling seed")
    p.add_argument("--quick", action="store_true",
                   help="tiny end-to-end run: teacher 30 steps, students 10 iterations, n=64, eval steps 1 2")
    args = p.parse_args(argv)
    if args.quick:
        args.teacher_steps, args.student_steps, args.n, args.teacher_eval_steps = 30, 10, 64, [1, 2]
    return args


def run_main(args: list[str]) -> None:
    """One main.py run as a subprocess from the repository root; its output streams through."""
    cmd = [sys.executable, "main.py", *args]
    print("$ python main.py " + " ".join(shlex.quote(a) for a in args), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)


def train_teacher(bench_dir: str, args: argparse.Namespace, extra: list[str]) -> str:
    run_main(["--base", TEACHER_CONFIG, "-l", bench_dir, "-n", "teacher", "--no_date",
              "--max_steps", str(args.teacher_steps), "-s", str(args.seed), *QUIET, *extra])
    return os.path.join(bench_dir, "teacher")


def distil_student(bench_dir: str, teacher_dir: str, steps: int, args: argparse.Namespace,
                   extra: list[str]) -> str:
    name = f"student_{steps}step"
    teacher_ckpt = os.path.abspath(os.path.join(teacher_dir, "checkpoints", "last.ckpt"))
    bases = [STUDENT_CONFIGS[steps][0]] + (["configs/dmd/digits_dmd_gan.yaml"] if args.gan else []) + STUDENT_CONFIGS[steps][1:]
    run_main(["--base", *bases, "-l", bench_dir, "-n", name, "--no_date",
              "--max_steps", str(args.student_steps), "-s", str(args.seed),
              f"model.params.teacher_ckpt_path={teacher_ckpt}", *QUIET, *extra])
    return os.path.join(bench_dir, name)


def score(run_dir: str, model: str, steps_list: list[int], args: argparse.Namespace) -> list[dict]:
    from digits_eval import evaluate

    from sgm.evaluation.engines import load_engine

    engine = load_engine(run_dir)
    rows = []
    for steps in steps_list:
        r = evaluate(engine, steps, n=args.n, seed=args.seed)
        r.update(model=model, run=run_dir)
        print(f"[bench] {model} @ {steps} steps: NFE {r['nfe']}, accuracy {r['accuracy']:.3f}, "
              f"FD {r['fd']:.2f}, coverage {r['coverage']:.2f}, {r['sec_per_sample'] * 1e3:.2f} ms/sample", flush=True)
        rows.append(r)
    return rows


def markdown(rows: list[dict], command: str, args: argparse.Namespace) -> str:
    lines = [
        "# Digits: EDM teacher vs. DMD2 students",
        "",
        f"Produced by `{command}`",
        "",
        f"N = {args.n} class-balanced samples per row, sampling seed {args.seed}; {teacher_note(args)}, "
        f"students {args.student_steps} DMD iterations{' with the GAN term' if args.gan else ''}. "
        "FD: Fréchet distance of digit-classifier features to the held-out digits (lower is better). "
        "NFE: network evaluations per sample (CFG counts twice). Wall time on "
        f"{torch_device_note()}.",
        "",
        "| model | steps | NFE | accuracy | FD | coverage | ms/sample |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['model']} | {r['steps']} | {r['nfe']} | {r['accuracy']:.3f} | {r['fd']:.2f} | "
                     f"{r['coverage']:.2f} | {r['sec_per_sample'] * 1e3:.2f} |")
    return "\n".join(lines) + "\n"


def teacher_note(args: argparse.Namespace) -> str:
    return f"teacher reused from `{args.teacher}`" if args.teacher else f"teacher trained {args.teacher_steps} steps"


def torch_device_note() -> str:
    import torch

    return f"CPU, {torch.get_num_threads()} threads"


def plot(rows: list[dict], path: str) -> None:
    """FD against NFE (log x): the teacher's curve over its step counts, one point per student."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(5.5, 4))
    teacher = sorted((r for r in rows if r["model"] == "teacher"), key=lambda r: r["nfe"])
    ax.plot([r["nfe"] for r in teacher], [r["fd"] for r in teacher], "o-", color="C0", label="teacher (Euler + CFG)")
    for r in teacher:
        ax.annotate(f"{r['steps']} st.", (r["nfe"], r["fd"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    students = [r for r in rows if r["model"] != "teacher"]
    for i, r in enumerate(students):
        ax.plot([r["nfe"]], [r["fd"]], "*", markersize=12, color=f"C{i + 1}", label=f"DMD2 {r['model']}")
    ax.set_xscale("log")
    nfes = sorted({r["nfe"] for r in rows})
    ax.set_xticks(nfes, [str(n) for n in nfes])
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xlabel("NFE per sample")
    ax.set_ylabel("FD to held-out digits (lower is better)")
    ax.set_title("Digits: teacher vs. distilled students")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(rows: list[dict], command: str, args: argparse.Namespace, dirs: list[str]) -> None:
    table = markdown(rows, command, args)
    for d in dirs:
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "digits_distillation.md"), "w") as f:
            f.write(table)
        plot(rows, os.path.join(d, "digits_distillation.png"))
    with open(os.path.join(dirs[0], "digits_distillation.json"), "w") as f:
        json.dump({"command": command, "rows": rows}, f, indent=1, default=float)
    print(table, flush=True)


def main(argv: list[str] | None = None) -> list[dict]:
    raw = sys.argv[1:] if argv is None else argv
    args = parse_args(raw)
    command = "python scripts/bench/distill_digits.py " + " ".join(shlex.quote(a) for a in raw)
    import torch

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    extra = QUICK_OVERRIDES if args.quick else []
    now = datetime.datetime.now().strftime("%Y-%m-%dT%H-%M-%S")
    bench_dir = os.path.abspath(os.path.join(args.logdir, f"{now}_digits" + ("_quick" if args.quick else "")))
    os.makedirs(bench_dir, exist_ok=True)
    print(f"[bench] run directory: {bench_dir}", flush=True)

    start = time.perf_counter()
    if args.teacher:
        teacher_dir = args.teacher
        print(f"[bench] teacher: reusing {teacher_dir}", flush=True)
    else:
        print(f"[bench] teacher: training {args.teacher_steps} steps", flush=True)
        teacher_dir = train_teacher(bench_dir, args, extra)
    students = {}
    for steps in args.students:
        print(f"[bench] student {steps}-step: {args.student_steps} DMD iterations "
              f"({time.perf_counter() - start:.0f} s so far)", flush=True)
        students[steps] = distil_student(bench_dir, teacher_dir, steps, args, extra)

    print(f"[bench] scoring, N = {args.n} per row ({time.perf_counter() - start:.0f} s so far)", flush=True)
    rows = score(teacher_dir, "teacher", args.teacher_eval_steps, args)
    for steps, run_dir in students.items():
        rows += score(run_dir, f"{steps}-step student", [steps], args)
    write_outputs(rows, command, args, [bench_dir, args.docs])
    print(f"[bench] done in {time.perf_counter() - start:.0f} s: {bench_dir}", flush=True)
    return rows


if __name__ == "__main__":
    main()
