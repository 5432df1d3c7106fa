"""Self-Forcing on moving digits: per-chunk quality of chained generation for the teacher, the plain DMD student
and the Self-Forcing student, and Self-Forcing's extra cost per iteration.

    python scripts/bench/chain_moving_digits.py                       # committed teacher, both students trained
    python scripts/bench/chain_moving_digits.py --teacher logs/<teacher run or export dir>
    python scripts/bench/chain_moving_digits.py --plain logs/<run> --self_forcing logs/<run>   # trained students
    python scripts/bench/chain_moving_digits.py --quick               # tiny end-to-end check

The students are two `main.py` runs from the same teacher, seed and iterations (each command is printed):
configs/dmd/moving_digits_dmd.yaml (plain DMD, trained on the data's first frames) and the same plus
configs/dmd/moving_digits_dmd_chain.yaml (Self-Forcing: trained on chunk k of its own 4-chunk chain). Then every
model makes `--chunks` chained chunks of 8 frames per held-out clip, each chunk conditioned on the last frame of
the one before, on the same held-out clips and noise: (a) the teacher with its own sampler (Euler 25 + CFG),
(b) the plain DMD student and (c) the Self-Forcing student at 1 step (EMA weights). Each chunk is scored on its
own (`sgm.evaluation.moving_digits.evaluate_chain`: its docstring says how, since real trajectories exist for 8
frames only). Written to `--docs`: moving_digits_chain.{md,json,png} (table, figures, metric against chunk index)
and moving_digits_chain_<model>.gif (the chains, chunks one after another). An IterationTimer callback (iteration_timer.py,
given to main.py) times every iteration of both runs; the difference is Self-Forcing's extra cost.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

import sgm  # noqa: E402,F401  (torchvision shim before anything imports Lightning)
from iteration_timer import read_seconds  # noqa: E402
from student_runs import add_common_args, apply_quick, run_student  # noqa: E402

PLAIN = ["configs/dmd/moving_digits_dmd.yaml"]
SELF_FORCING = PLAIN + ["configs/dmd/moving_digits_dmd_chain.yaml"]
DEFAULT_TEACHER = "assets/moving_digits_teacher"
QUICK_OVERRIDES = ["data.params.batch_size=2", "lightning.callbacks.image_logger.params.batch_frequency=100000",
                   "lightning.modelcheckpoint.params.every_n_train_steps=100000"]
PLOTTED = [("frame_accuracy", "frame accuracy (higher is better)"), ("frame_fd", "per-frame FD (lower is better)"),
           ("identity_consistency", "identity consistency (higher is better)"),
           ("speed_error", "speed error, px/frame (lower is better)")]
GOAL_METRICS = [("frame_accuracy", "higher"), ("frame_fd", "lower"), ("identity_consistency", "higher")]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p, teacher=DEFAULT_TEACHER, clips=64, logdir="logs/bench_chain")
    p.add_argument("--plain", default=None, metavar="RUN", help="a trained plain DMD run (skips its training)")
    p.add_argument("--self_forcing", default=None, metavar="RUN", help="a trained Self-Forcing run (skips its training)")
    p.add_argument("--chunks", type=int, default=4, help="chained chunks of 8 frames per clip")
    return apply_quick(p.parse_args(argv))


def distil(name: str, configs: list[str], bench_dir: str, args: argparse.Namespace) -> str:
    """One main.py run -> its run directory (with step_times.json)."""
    run = os.path.join(bench_dir, name)
    overrides = ["lightning.callbacks.video_eval=null",
                 "lightning.callbacks.step_timer.target=iteration_timer.IterationTimer",
                 f"lightning.callbacks.step_timer.params.path={os.path.join(run, 'step_times.json')}"]
    return run_student(name, configs, bench_dir, args, overrides + (QUICK_OVERRIDES if args.quick else []))[0]


def seconds_per_iteration(run: str) -> float | None:
    """Mean wall seconds per iteration after the first (warm-up) one; None without a step_times.json."""
    path = os.path.join(run, "step_times.json")
    if not os.path.isfile(path):
        return None
    seconds = [wall for wall, _ in read_seconds(path)]
    timed = seconds[1:] or seconds
    return sum(timed) / len(timed)


def heldout_data(run: str) -> dict:
    """The held-out clips' data options (frames, canvas, speeds, motion code) of a student run's own data config."""
    from sgm.evaluation.engines import run_datamodule

    return run_datamodule(run).clip_options()


def plot(rows: list[dict], path: str, chunks: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, len(PLOTTED), figsize=(4.0 * len(PLOTTED), 3.4))
    for ax, (key, title) in zip(axes, PLOTTED):
        for i, model in enumerate(models):
            mine = [r for r in rows if r["model"] == model]
            ax.plot([r["chunk"] for r in mine], [r[key] for r in mine], "o-", color=f"C{i}", label=model)
        ax.set_xticks(range(1, chunks + 1))
        ax.set_xlabel("chunk index (8 frames each)")
        ax.set_title(title, fontsize=9)
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("Moving digits, chained generation: each chunk conditioned on the previous chunk's last frame",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def goal_lines(rows: list[dict], plain: str, forced: str, chunks: int) -> list[str]:
    """The issue's goal per metric: (c)'s last chunk within 10% of its chunk 1 and better than (b)'s last chunk."""
    pick = {(r["model"], r["chunk"]): r for r in rows}
    lines = []
    for key, better in GOAL_METRICS:
        first, last, other = pick[(forced, 1)][key], pick[(forced, chunks)][key], pick[(plain, chunks)][key]
        within = abs(last - first) <= 0.1 * abs(first)
        beats = last > other if better == "higher" else last < other
        lines.append(f"- {key}: Self-Forcing chunk {chunks} {last:.3f} vs its chunk 1 {first:.3f} "
                     f"({'within' if within else 'not within'} 10%); vs plain DMD chunk {chunks} {other:.3f} "
                     f"({'better' if beats else 'not better'})")
    return lines


def main(argv: list[str] | None = None) -> list[dict]:
    raw = sys.argv[1:] if argv is None else argv
    args = parse_args(raw)
    os.chdir(ROOT)
    command = "python scripts/bench/chain_moving_digits.py " + " ".join(shlex.quote(a) for a in raw)
    now = datetime.datetime.now().strftime("%Y-%m-%dT%H-%M-%S")
    bench_dir = os.path.abspath(os.path.join(args.logdir, f"{now}_chain" + ("_quick" if args.quick else "")))
    docs = args.docs or (os.path.join(bench_dir, "docs") if args.quick else "docs")
    os.makedirs(bench_dir, exist_ok=True)
    start = time.perf_counter()
    plain = args.plain or distil("plain_dmd", PLAIN, bench_dir, args)
    forced = args.self_forcing or distil("self_forcing", SELF_FORCING, bench_dir, args)

    import torch

    from sgm.evaluation import moving_digits as md
    from sgm.evaluation.engines import load_engine

    heldout = md.heldout_set(args.clips, seed=args.seed, **heldout_data(plain))
    names = {"teacher": f"(a) teacher ({args.teacher})", "plain": "(b) plain DMD student",
             "self_forcing": "(c) Self-Forcing student"}
    rows, gifs = [], []
    for key, path in (("teacher", args.teacher), ("plain", plain), ("self_forcing", forced)):
        engine = load_engine(path)
        steps = args.teacher_steps if key == "teacher" else None
        print(f"[bench] {names[key]}: {args.chunks} chained chunks of {args.clips} clips", flush=True)
        chain_rows, chunks = md.evaluate_chain(engine, heldout, names[key], args.chunks, num_steps=steps, seed=args.seed)
        rows += chain_rows
        os.makedirs(docs, exist_ok=True)
        gifs.append(md.save_clips_gif(torch.cat(chunks, dim=1), os.path.join(docs, f"moving_digits_chain_{key}.gif")))
        del engine
    cost = {"plain": seconds_per_iteration(plain), "self_forcing": seconds_per_iteration(forced)}
    cost_line = "Seconds per iteration: not timed (runs taken from elsewhere without step_times.json)."
    if None not in cost.values():
        extra = cost["self_forcing"] - cost["plain"]
        cost_line = (f"Seconds per iteration (mean after the first, this machine): plain DMD {cost['plain']:.2f}, "
                     f"Self-Forcing {cost['self_forcing']:.2f}: {extra:+.2f} s ({extra / cost['plain']:+.0%}).")
    table = md.chain_table(rows)
    iterations = args.iterations if args.iterations is not None else "the config's max_steps"
    text = "\n".join([
        "# Moving digits: chained generation, teacher vs. plain DMD vs. Self-Forcing",
        "",
        f"Produced by `{command}`",
        "",
        f"{args.clips} held-out clips, {args.chunks} chained chunks of 8 frames each (chunk i+1 conditioned on chunk "
        f"i's last frame), same clips and noise (seed {args.seed}) for every model; students trained from "
        f"`{args.teacher}` ({iterations} iterations each): plain `{plain}`, "
        f"Self-Forcing `{forced}`. Per-chunk metrics: sgm/evaluation/moving_digits.py `evaluate_chain`.",
        "",
        table,
        cost_line,
        "",
        "Goal (issue 14): the Self-Forcing student's last chunk within 10% of its chunk 1 and better than the plain "
        "student's last chunk:",
        *goal_lines(rows, names["plain"], names["self_forcing"], args.chunks),
        "",
    ])
    for d in sorted({bench_dir, docs}):
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "moving_digits_chain.md"), "w") as f:
            f.write(text)
        with open(os.path.join(d, "moving_digits_chain.json"), "w") as f:
            json.dump({"command": command, "rows": rows, "seconds_per_iteration": cost}, f, indent=1)
        plot(rows, os.path.join(d, "moving_digits_chain.png"), args.chunks)
    print(text, flush=True)
    print(f"[bench] wrote {docs}/moving_digits_chain.{{md,json,png}} and {len(gifs)} GIFs; "
          f"done in {time.perf_counter() - start:.0f} s: {bench_dir}", flush=True)
    return rows


if __name__ == "__main__":
    main()
