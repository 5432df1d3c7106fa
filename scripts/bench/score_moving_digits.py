"""Score one image-to-video model on held-out moving digits: the figures of a teacher (or student) alone.

    python scripts/bench/score_moving_digits.py assets/moving_digits_teacher --max_speed 1
    python scripts/bench/score_moving_digits.py logs/<run> --ckpt "logs/<run>/checkpoints/<file>.ckpt" --steps 25 50
    python scripts/bench/score_moving_digits.py logs/<run> --clips 256 --out logs/<run>/score

The model is a main.py run directory (its EMA weights, last.ckpt unless --ckpt) or an export directory
(scripts/export_student.py). Held-out clips: `--clips` clips drawn with `--seed`; their size, frames and speeds
are the run's own data's (MovingDigitsDataModule.clip_options) unless given by flags (an export directory has no
data config: give --max_speed of the data it was trained on). Every row uses the same clips and noise, at each of
`--steps` (default: the model's own sampler). Prints the table (sgm/evaluation/moving_digits.py: frame accuracy,
FD, identity, speed error, ...) with the real clips' row, and writes it with GIFs to --out.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

import sgm  # noqa: E402,F401  (torchvision shim before anything imports Lightning)
from sgm.callbacks.video_eval import DEFAULT_CLIP_OPTIONS, clip_options  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="main.py run directory or export directory")
    p.add_argument("--ckpt", default=None, help="a checkpoint of the run (default: checkpoints/last.ckpt)")
    p.add_argument("--steps", type=int, nargs="*", default=None, help="sampler steps, one row each (default: its own)")
    p.add_argument("--clips", type=int, default=64, help="held-out clips per row")
    p.add_argument("--seed", type=int, default=0, help="held-out clips and sampling noise")
    p.add_argument("--out", default=None, help="table and GIFs (default: <model>/score)")
    for key, default in DEFAULT_CLIP_OPTIONS.items():
        p.add_argument(f"--{key}", type=type(default), default=None, help=f"held-out clips' {key} (default: the run's data's)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict]:
    raw = sys.argv[1:] if argv is None else argv
    args = parse_args(raw)
    from sgm.evaluation import moving_digits as md
    from sgm.evaluation.engines import load_engine, run_datamodule

    given = {k: getattr(args, k) for k in DEFAULT_CLIP_OPTIONS if getattr(args, k) is not None}
    options = clip_options(run_datamodule(args.model), given)
    heldout = md.heldout_set(args.clips, seed=args.seed, **options)
    engine = load_engine(args.model, ckpt=args.ckpt)
    name = args.model if args.ckpt is None else f"{args.model} ({os.path.basename(args.ckpt)})"
    out = args.out or os.path.join(args.model, "score")
    rows = [md.reference_row(heldout)]
    md.save_clips_gif(heldout.clips, os.path.join(out, "real.gif"))
    for steps in args.steps or [None]:
        row, clips = md.evaluate_engine(engine, heldout, name, steps, args.seed)
        rows.append(row)
        md.save_clips_gif(clips, os.path.join(out, f"model_{row['steps']}step.gif"))
    md.write_results(rows, out, stem="moving_digits_score")
    command = "python scripts/bench/score_moving_digits.py " + " ".join(shlex.quote(a) for a in raw)
    print(f"{command}\n{args.clips} held-out clips, {options}\n" + md.markdown_table(rows) + f"\n-> {out}", flush=True)
    return rows


if __name__ == "__main__":
    main()
