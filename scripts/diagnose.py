"""Verdicts and curves from a run's LossDiagnostics metrics.

    python scripts/diagnose.py RUN_DIR                      # one verdict per loss, RUN_DIR/diagnostics.png
    python scripts/diagnose.py RUN_DIR --compare ABLATED    # which statistics moved in the ablated run

An ablation is a second run with one weight set to 0 (a dot-list override), e.g.

    python main.py --base configs/dmd/digits_dmd_gan.yaml configs/diagnostics/loss_diagnostics.yaml \
        --max_steps 200 model.params.gan_generator_weight=0

Always exits 0: verdicts are advice, not a test.
"""
from __future__ import annotations

import argparse
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sgm.diagnostics.rules import compare, read_metrics, verdicts  # noqa: E402

PANELS = (  # (title, metric-name test, log scale)
    ("gradient norm per loss", lambda k: k.startswith("grad/") and not k.endswith(("_ratio", "_detached")), True),
    ("share of the role's gradient", lambda k: k.startswith("grad/") and k.endswith("_ratio"), False),
    ("condition gain (shuffled - true)", lambda k: k.endswith("/cond_gain"), False),
    ("loss per sigma bin", lambda k: k.startswith(("loss/sigma_", "critic/loss_sigma_")), True),
    ("update ratio |dθ|/|θ|", lambda k: k.startswith("step/") and k.endswith("_update_ratio"), True),
    ("pred_real - pred_fake per sigma bin", lambda k: k.startswith("dmd/gap_sigma_"), True),
    ("generator vs teacher", lambda k: k in ("dmd/gen_mean", "dmd/gen_std", "dmd/teacher_mean", "dmd/teacher_std"),
     False),
    ("DMD normaliser and |grad|", lambda k: k in ("dmd/normalizer_mean", "dmd/grad_abs_mean"), True),
)


def plot(series: dict, path: str) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(t, [k for k in sorted(series) if test(k)], log) for t, test, log in PANELS]
    panels = [p for p in panels if p[1]]
    if not panels:
        return None
    cols = 2
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(12, 3.2 * rows), squeeze=False)
    for ax, (title, keys, log) in zip(axes.flat, panels):
        for key in keys:
            steps, values = zip(*series[key])
            ax.plot(steps, values, label=key, marker="." if len(steps) < 30 else None)
        if log and all(v > 0 for k in keys for _, v in series[k]):
            ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir")
    parser.add_argument("--compare", metavar="ABLATED_RUN", help="a run with one loss weight set to 0")
    parser.add_argument("--threshold", type=float, default=0.2, help="relative change that counts as moved")
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args(argv)
    series = read_metrics(args.run_dir)
    if not series:
        print(f"no metrics found under {args.run_dir}/csv/version_*/metrics.csv")
        return 0
    if not any(k.startswith(("grad/", "step/")) and k.endswith(("_ratio", "_update_ratio")) for k in series):
        print("no LossDiagnostics metrics in this run: add configs/diagnostics/loss_diagnostics.yaml to --base")
    for verdict in verdicts(series):
        print(verdict)
    if args.compare:
        moved = compare(series, read_metrics(args.compare), args.threshold)
        print(f"\nstatistics that moved by more than {args.threshold:.0%} in {args.compare}:")
        for key, a, b, change in moved:
            print(f"  {key:40s} {a:11.4g} -> {b:11.4g}  ({change:+.0%})")
        if not moved:
            print("  none")
    if not args.no_plot:
        path = plot(series, os.path.join(args.run_dir, "diagnostics.png"))
        if path:
            print(f"\ncurves: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
