"""Multi-view moving digits (the SV4D toy): the tiny SV4D 2.0 teacher against its 1-step and 4-step DMD2 students.

    python scripts/bench/distill_multiview_digits.py                              # teacher assets/multiview_digits_teacher
    python scripts/bench/distill_multiview_digits.py --teacher logs/<teacher run> --iterations 600 --clips 64
    python scripts/bench/distill_multiview_digits.py --student_1step logs/<run> --student_4step logs/<run>  # trained
    python scripts/bench/distill_multiview_digits.py --quick                      # tiny end-to-end check

The students are two `main.py` runs from the same teacher checkpoint, seed and iterations (each command is
printed): configs/dmd/multiview_digits_dmd.yaml (1 step) and the same plus configs/dmd/multiview_digits_dmd_4step.yaml.
Then the teacher (its own sampler and guider: Euler + LinearPredictionGuider, `--teacher_steps` or its config's
steps) and both students (EMA weights) turn the same `--clips` held-out windows (4 input frames -> 4 novel views,
no reference views) into views from the same noise, scored by sgm/evaluation/multiview_digits.py: per view after
undoing its camera's transform, frame accuracy / FD / identity; view consistency and the error against the true
views; the real views as the reference row. Written to `--docs` (default docs; --quick: the bench directory):
multiview_digits_distillation.{md,json} and multiview_digits_<model>.gif (per window: rows = input view and
cameras 1-4, columns = frames).
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
from student_runs import add_common_args, apply_quick, run_student  # noqa: E402

ONE_STEP = ["configs/dmd/multiview_digits_dmd.yaml"]
FOUR_STEP = ONE_STEP + ["configs/dmd/multiview_digits_dmd_4step.yaml"]
DEFAULT_TEACHER = "assets/multiview_digits_teacher"
QUICK_OVERRIDES = ["data.params.batch_size=2"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p, teacher=DEFAULT_TEACHER, clips=32, logdir="logs/bench_multiview")
    p.add_argument("--student_1step", default=None, metavar="RUN", help="a trained 1-step run (skips its training)")
    p.add_argument("--student_4step", default=None, metavar="RUN", help="a trained 4-step run (skips its training)")
    return apply_quick(p.parse_args(argv))


def window_settings(teacher: str) -> dict:
    """Frames and views per window, canvas size and channels: the teacher run's data, or for an export directory
    (no data block) the data module's defaults, which the committed teacher was trained on."""
    from sgm.data.multiview_digits import MultiViewDigitsDataModule
    from sgm.evaluation.engines import run_datamodule

    if not os.path.isdir(teacher):
        raise SystemExit(f"error: --teacher {teacher}: no such directory")
    data = run_datamodule(teacher) or MultiViewDigitsDataModule()
    if not isinstance(data, MultiViewDigitsDataModule):
        raise SystemExit(f"error: --teacher {teacher}: trained on {type(data).__name__}, not multi-view digits")
    return dict(data.window_options)


def distil(name: str, configs: list[str], bench_dir: str, args: argparse.Namespace) -> tuple[str, str]:
    """One main.py run -> (its run directory, the command)."""
    return run_student(name, configs, bench_dir, args, QUICK_OVERRIDES if args.quick else [])


def main(argv: list[str] | None = None) -> list[dict]:
    raw = sys.argv[1:] if argv is None else argv
    args = parse_args(raw)
    os.chdir(ROOT)
    command = "python scripts/bench/distill_multiview_digits.py " + " ".join(shlex.quote(a) for a in raw)
    settings = window_settings(args.teacher)  # fails before any training
    now = datetime.datetime.now().strftime("%Y-%m-%dT%H-%M-%S")
    bench_dir = os.path.abspath(os.path.join(args.logdir, f"{now}_multiview" + ("_quick" if args.quick else "")))
    docs = args.docs or (os.path.join(bench_dir, "docs") if args.quick else "docs")
    os.makedirs(bench_dir, exist_ok=True)
    start = time.perf_counter()
    runs, commands = {}, [command]
    for key, configs, given in (("student_1step", ONE_STEP, args.student_1step),
                                ("student_4step", FOUR_STEP, args.student_4step)):
        if given:
            runs[key] = given
        else:
            runs[key], run_command = distil(key, configs, bench_dir, args)
            commands.append(run_command)

    from sgm.evaluation import multiview_digits as mv
    from sgm.evaluation.engines import load_engine
    from sgm.metrics.digits import default_metrics

    windows = mv.heldout_windows(args.clips, seed=args.seed, **settings)
    metrics = default_metrics()
    rows = [mv.reference_row(windows, metrics)]
    os.makedirs(docs, exist_ok=True)
    gifs = [mv.save_views_gif(windows.views, windows, os.path.join(docs, "multiview_digits_real.gif"))]
    strip = {"real": windows.views}
    models = [("teacher", f"teacher ({args.teacher})", args.teacher, args.teacher_steps),
              ("student_1step", "DMD2 1-step student", runs["student_1step"], None),
              ("student_4step", "DMD2 4-step student", runs["student_4step"], None)]
    for key, name, path, steps in models:
        print(f"[bench] {name}: {args.clips} windows", flush=True)
        engine = load_engine(path)
        row, views = mv.evaluate_engine(engine, windows, name, num_steps=steps, seed=args.seed, metrics=metrics)
        rows.append(row)
        gifs.append(mv.save_views_gif(views, windows, os.path.join(docs, f"multiview_digits_{key}.gif")))
        strip[key] = views
        del engine

    png = mv.save_frames_png(strip, windows, os.path.join(docs, "multiview_digits_frames.png"),
                             clips=tuple(range(min(2, args.clips))))
    iterations = args.iterations if args.iterations is not None else "the config's max_steps (300)"
    t, v = settings["num_frames"], settings["num_views"]
    text = "\n".join([
        "# Multi-view moving digits: SV4D 2.0 teacher vs. 1-step and 4-step DMD2 students",
        "",
        "Produced by",
        "",
        "```",
        *commands,
        "```",
        "",
        f"{args.clips} held-out windows ({t} input frames -> {v} novel views, {settings['size']}x{settings['size']}, "
        f"no reference views: SV4D 2.0's first window), the same windows and noise (seed {args.seed}) for every row; "
        f"students trained from `{args.teacher}` ({iterations} iterations each): 1-step `{runs['student_1step']}`, "
        f"4-step `{runs['student_4step']}`. Metrics (sgm/evaluation/multiview_digits.py): per view, after undoing its "
        "camera's shift and colour filter (on the columns all cameras see), frame accuracy on the window's digit class, Fréchet distance of digit-classifier "
        "features of 8x8 crops (lower is better; compare at equal n) and identity consistency across frames, "
        "averaged over the views; view consistency = mean |view i - view j| over pairs of views of the same frame "
        "after undoing both transforms, and true-view error = mean |generated - true view|, both in [-1, 1] pixel "
        "units (lower is better; the real views score 0). NFE per row (CFG counts twice).",
        "",
        mv.markdown_table(rows),
        "Per view (camera k of sgm/data/multiview_digits.py: the canvas slid by CAMERA_SHIFTS[k] = +1, -1, +2, -2 "
        "pixels for cameras 1-4, ink through a red, green, blue, yellow filter):",
        "",
        mv.per_view_table(rows),
        "GIFs (one frame per window; rows: the input view, then cameras 1-4 as generated; columns: frames): "
        + ", ".join(f"`{os.path.basename(g)}`" for g in gifs),
        "",
        f"Still (`{os.path.basename(png)}`; per window, left to right: real views, teacher, 1-step, 4-step student):",
        "",
        f"![multi-view digits]({os.path.basename(png)})",
        "",
    ])
    for d in sorted({bench_dir, docs}):
        with open(os.path.join(d, "multiview_digits_distillation.md"), "w") as f:
            f.write(text)
        with open(os.path.join(d, "multiview_digits_distillation.json"), "w") as f:
            json.dump({"commands": commands, "rows": rows}, f, indent=1)
    print(text, flush=True)
    print(f"[bench] wrote {docs}/multiview_digits_distillation.{{md,json}} and {len(gifs)} GIFs; "
          f"done in {time.perf_counter() - start:.0f} s: {bench_dir}", flush=True)
    return rows


if __name__ == "__main__":
    main()
