"""Verdicts and curves from a run's LossDiagnostics metrics.

    python scripts/diagnose.py RUN_DIR                      # one verdict per loss, RUN_DIR/diagnostics.png
    python scripts/diagnose.py RUN_DIR --compare ABLATED    # which statistics moved in the ablated run

An ablation is a second run with one weight set to 0 (a dot-list override), e.g.

    python main.py --base configs/dmd/digits_dmd_gan.yaml configs/diagnostics/loss_diagnostics.yaml \
        --max_steps 200 model.params.terms.gan.params.generator_weight=0

scripts/ablate.py launches both runs itself and writes the comparison as ablation.md.

Always exits 0: verdicts are advice, not a test.
"""
from __future__ import annotations

import argparse
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sgm.diagnostics.rules import compare, kl_ablation_verdict, read_metrics, verdicts  # noqa: E402

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
    ("velocity vs eps - x0", lambda k: k in ("flow/cos", "flow/speed_ratio", "flow/nmse", "flow/cond_gain_cos"), False),
    ("velocity nmse per t bin", lambda k: k.startswith("flow/nmse_t"), True),
    ("Euler endpoint error vs fine reference", lambda k: k.startswith("flow/endpt_rmse@"), True),
    ("posterior q(z|x) vs N(0, I)", lambda k: k.startswith(("mu/", "std/", "logvar/")), False),
    ("sampled latent z", lambda k: k.startswith("z_init/") or k == "kl/per_dim", False),
)


RUN_STYLES = (("-", "solid"), ("--", "dashed"), (":", "dotted"), ("-.", "dash-dot"))  # per overlaid run


def plot(runs: dict[str, dict], path: str, keys: set[str] | None = None) -> str | None:
    """The PANELS of one run, or of several overlaid ({label: series}: colour per metric, line style per
    run). `keys`: only these metrics, those no panel takes in an extra "other statistics" panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = set().union(*runs.values()) if keys is None else set(keys) & set().union(*runs.values())
    panels = [(t, [k for k in sorted(names) if test(k)], log) for t, test, log in PANELS]
    panels = [p for p in panels if p[1]]
    if keys is not None:
        others = sorted(k for k in names if not any(test(k) for _, test, _ in PANELS))
        panels += [("other statistics", others, False)] if others else []
    if not panels:
        return None
    cols = 2
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(12, 3.2 * rows), squeeze=False)
    for ax, (title, panel_keys, log) in zip(axes.flat, panels):
        positive = True
        for i, key in enumerate(panel_keys):
            labelled = False
            for (run, series), (style, _) in zip(runs.items(), RUN_STYLES):
                if key not in series:
                    continue
                steps, values = zip(*series[key])
                positive = positive and all(v > 0 for v in values)
                ax.plot(steps, values, style, color=f"C{i % 10}", label=None if labelled else key,
                        marker="." if len(steps) < 30 else None)
                labelled = True
        if log and positive:
            ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    if len(runs) > 1:
        fig.suptitle(",   ".join(f"{run}: {word}" for run, (_, word) in zip(runs, RUN_STYLES)), fontsize=9)
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
        ablated = read_metrics(args.compare)
        moved = compare(series, ablated, args.threshold)
        print(f"\nstatistics that moved by more than {args.threshold:.0%} in {args.compare}:")
        for statistic in moved:
            print(f"  {statistic}")
        if not moved:
            print("  none")
        kl_verdict = kl_ablation_verdict(series, ablated)  # KL autoencoders: one run with kl_weight = 0
        if kl_verdict is not None:
            print(f"\n{kl_verdict}")
    if not args.no_plot:
        path = plot({args.run_dir: series}, os.path.join(args.run_dir, "diagnostics.png"))
        if path:
            print(f"\ncurves: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
