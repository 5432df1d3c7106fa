"""Chained multi-view video on the SV4D toy: how far teacher and students drift over SV4D 2.0 windows.

    python scripts/bench/chain_multiview_digits.py --student_1step logs/<run> --student_4step logs/<run> \
        --student_sf logs/<run>                                              # any of the three may be left out
    python scripts/bench/chain_multiview_digits.py --windows 3 --clips 32     # (the defaults)

Each model turns the same `--clips` held-out clips of 1 + N (t - 1) frames into views window by window
(`sgm.evaluation.multiview_digits.evaluate_chain`: window k+1 starts on window k's last frame and is given the
views generated for it, as scripts/sampling/simple_video_sample_4d.py samples long videos). Per window: frame
accuracy / FD / identity of the views (undone), view consistency and the error against the true views. Written to
`--docs` (default docs): multiview_digits_chain.{md,json} and multiview_digits_chain_<model>.gif (one GIF frame
per clip: rows = the input view and cameras 1-4, columns = all F frames).
"""
from __future__ import annotations

import argparse
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
from distill_multiview_digits import DEFAULT_TEACHER, window_settings  # noqa: E402

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default=DEFAULT_TEACHER, metavar="DIR", help="the teacher's run or export directory")
    p.add_argument("--student_1step", default=None, metavar="RUN", help="a trained 1-step run")
    p.add_argument("--student_4step", default=None, metavar="RUN", help="a trained 4-step run")
    p.add_argument("--student_sf", default=None, metavar="RUN",
                   help="a trained Self-Forcing run (+ configs/dmd/multiview_digits_dmd_chain.yaml)")
    p.add_argument("--windows", type=int, default=3, help="windows per clip (N)")
    p.add_argument("--clips", type=int, default=32, help="held-out clips")
    p.add_argument("--teacher_steps", type=int, default=None, help="teacher sampler steps (default: its config's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--docs", default="docs", help="where the table and GIFs go")
    return p.parse_args(argv)


def table(rows: list[dict]) -> str:
    """One row per model and window: the metrics of sgm.evaluation.multiview_digits' main table."""
    from sgm.evaluation.multiview_digits import VIEW_METRICS, WINDOW_METRICS

    columns = VIEW_METRICS + WINDOW_METRICS
    lines = ["| model | window | " + " | ".join(title for _, title, _ in columns) + " |",
             "|---|---:|" + "---:|" * len(columns)]
    for r in rows:
        lines.append(f"| {r['model']} | {r['window']} | " + " | ".join(fmt.format(r[k]) for k, _, fmt in columns) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> list[dict]:
    raw = sys.argv[1:] if argv is None else argv
    args = parse_args(raw)
    os.chdir(ROOT)
    from sgm.data.video_batch import window_chain_frames
    from sgm.evaluation import multiview_digits as mv
    from sgm.evaluation.engines import load_engine
    from sgm.metrics.digits import default_metrics

    settings = window_settings(args.teacher)
    t = settings["num_frames"]
    frames = window_chain_frames(args.windows, t)
    clips = mv.heldout_windows(args.clips, seed=args.seed, **(settings | {"num_frames": frames}))
    metrics = default_metrics()
    models = [("teacher", f"teacher ({args.teacher})", args.teacher, args.teacher_steps),
              ("student_1step", "DMD2 1-step student", args.student_1step, None),
              ("student_4step", "DMD2 4-step student", args.student_4step, None),
              ("student_sf", "DMD2 1-step Self-Forcing student", args.student_sf, None)]
    start, rows, gifs = time.perf_counter(), [], []
    os.makedirs(args.docs, exist_ok=True)
    for key, name, path, steps in models:
        if path is None:
            continue
        print(f"[bench] {name}: {args.clips} clips x {args.windows} windows", flush=True)
        engine = load_engine(path)
        model_rows, views = mv.evaluate_chain(engine, clips, t, name, num_steps=steps, seed=args.seed,
                                              metrics=metrics)
        rows += model_rows
        gifs.append(mv.save_views_gif(views, clips, os.path.join(args.docs, f"multiview_digits_chain_{key}.gif")))
        del engine
    command = "python scripts/bench/chain_multiview_digits.py " + " ".join(shlex.quote(a) for a in raw)
    text = "\n".join([
        "# Multi-view moving digits: chained SV4D 2.0 windows",
        "",
        "Produced by",
        "",
        "```",
        command,
        "```",
        "",
        f"{args.clips} held-out clips of {frames} frames, {args.windows} windows of {t} frames x "
        f"{settings['num_views']} views each, the same noise per window for every model (seed {args.seed}); window "
        "k+1 starts on window k's last frame and is given the views the model generated for it. Metrics per window "
        "as in multiview_digits_distillation.md (against that window's true views).",
        "",
        table(rows),
        "GIFs (one frame per clip; rows: the input view and cameras 1-4; columns: all frames): "
        + ", ".join(f"`{os.path.basename(g)}`" for g in gifs),
        "",
    ])
    with open(os.path.join(args.docs, "multiview_digits_chain.md"), "w") as f:
        f.write(text)
    with open(os.path.join(args.docs, "multiview_digits_chain.json"), "w") as f:
        json.dump({"command": command, "rows": [{k: v for k, v in r.items() if k != "per_view"} for r in rows]}, f,
                  indent=1)
    print(text, flush=True)
    print(f"[bench] done in {time.perf_counter() - start:.0f} s", flush=True)
    return rows


if __name__ == "__main__":
    main()
