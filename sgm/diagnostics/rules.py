"""Verdicts on the metrics of `LossDiagnostics`, read back from a run's CSV (scripts/diagnose.py).

Each rule names the metric and threshold that fired, so a verdict can be checked by eye in the
curves. A series is judged on its recent window (the last quarter of its points, at least 3).
"""
from __future__ import annotations

import csv
import glob
import math
import os
import re
from dataclasses import dataclass

Series = dict[str, list[tuple[int, float]]]  # metric -> [(step, value)] sorted by step

WEAK_RATIO = 0.05  # a term below 5% of its role's gradient barely steers the update
ZERO_GRAD = 1e-12
COND_ABS_TOL = 1e-4  # |cond_gain| below this, or below COND_REL_TOL of the loss: condition ignored
COND_REL_TOL = 0.01
RISING = 1.25  # late / early mean of a low-sigma critic bin
LOW_SIGMA = 0.5  # bins whose upper edge is at most this are "low sigma"
STALL_UPDATE = 1e-7  # update ratio: the group does not move
HUGE_UPDATE = 1e-1
STD_RATIO = (0.5, 2.0)  # generator std / teacher std outside this: collapse or blow-up


@dataclass
class Verdict:
    level: str  # "FAULT", "WARN" or "OK"
    subject: str  # the loss / statistic judged
    message: str  # the rule that fired, with its numbers

    def __str__(self) -> str:
        return f"{self.level:5s} {self.subject}: {self.message}"


def read_metrics(run_dir: str) -> Series:
    """All numeric columns of `<run>/csv/version_*/metrics.csv` (every version: resumed runs)."""
    paths = sorted(glob.glob(os.path.join(run_dir, "csv", "version_*", "metrics.csv")))
    if not paths and os.path.isfile(os.path.join(run_dir, "metrics.csv")):
        paths = [os.path.join(run_dir, "metrics.csv")]
    series: Series = {}
    for path in paths:
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                step = row.get("step")
                if step in (None, ""):
                    continue
                for key, value in row.items():
                    if key == "step" or value in (None, ""):
                        continue
                    try:
                        series.setdefault(key, []).append((int(float(step)), float(value)))
                    except ValueError:
                        continue
    return {k: sorted(v) for k, v in series.items()}


def recent(values: list[tuple[int, float]]) -> list[float]:
    n = max(3, len(values) // 4)
    return [v for _, v in values[-n:]]


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def grad_terms(series: Series) -> list[str]:
    """Loss terms with a `grad/<term>_ratio` column."""
    return sorted(k[len("grad/"):-len("_ratio")] for k in series if k.startswith("grad/") and k.endswith("_ratio"))


def verdicts(series: Series) -> list[Verdict]:
    out = gradient_verdicts(series) + cond_verdicts(series) + critic_verdicts(series)
    out += update_verdicts(series) + dmd_verdicts(series)
    return out


def gradient_verdicts(series: Series) -> list[Verdict]:
    out = []
    terms = grad_terms(series)
    for term in terms:
        norm = mean(recent(series.get(f"grad/{term}", [])))
        ratio = mean(recent(series[f"grad/{term}_ratio"]))
        detached = series.get(f"grad/{term}_detached", [])
        if detached and max(recent(detached)) > 0:
            out.append(Verdict("FAULT", term, f"grad/{term}_detached = 1: the loss is on but has no gradient "
                                              "path to the trainable parameters (detached)"))
        if norm <= ZERO_GRAD:
            out.append(Verdict("FAULT", term, f"grad/{term} is 0: loss weighted 0 or detached"))
        elif ratio < WEAK_RATIO:
            out.append(Verdict("WARN", term, f"grad/{term} is {ratio:.1%} of its role's total gradient: "
                                             f"{term} term too weak (raise its weight)"))
        elif not any(v.subject == term for v in out):
            out.append(Verdict("OK", term, f"grad/{term} = {norm:.3g}, {ratio:.0%} of its role's total"))
    return out


def cond_verdicts(series: Series) -> list[Verdict]:
    out = []
    references = {"loss/cond_gain": "loss/cond_true"}
    for key in sorted(k for k in series if k.endswith("/cond_gain")):
        gain = mean(recent(series[key]))
        ref_key = references.get(key)
        ref = abs(mean(recent(series[ref_key]))) if ref_key in series else 0.0
        tol = max(COND_ABS_TOL, COND_REL_TOL * ref)
        if abs(gain) <= tol:
            who = "the generator's samples do not depend on" if key.startswith("dmd/") else "the network ignores"
            out.append(Verdict("FAULT", key, f"cond_gain = {gain:.3g} ≈ 0 (|gain| <= {tol:.2g}): {who} its "
                                             "conditioning (shuffled conditions do as well as the true ones)"))
        elif gain < 0:
            out.append(Verdict("WARN", key, f"cond_gain = {gain:.3g} < 0: shuffled conditions do better"))
        else:
            out.append(Verdict("OK", key, f"cond_gain = {gain:.3g}: the conditioning is used"))
    return out


def _bin_upper(key: str) -> float:
    match = re.search(r"sigma_([0-9.e+-]+)-([0-9.e+-]+)$", key)
    return float(match.group(2)) if match else math.inf


def critic_verdicts(series: Series) -> list[Verdict]:
    out = []
    for key in sorted(k for k in series if k.startswith("critic/loss_sigma_")):
        values = [v for _, v in series[key]]
        if _bin_upper(key) > LOW_SIGMA or len(values) < 6:
            continue
        third = len(values) // 3
        early, late = mean(values[:third]), mean(values[-third:])
        if early > 0 and late / early > RISING:
            out.append(Verdict("WARN", key, f"critic loss rising in the low-sigma bins ({early:.3g} -> {late:.3g}): "
                                            "the critic no longer tracks the generator's fine detail"))
    return out


def update_verdicts(series: Series) -> list[Verdict]:
    out = []
    for key in sorted(k for k in series if k.startswith("step/") and k.endswith("_update_ratio")):
        values = recent(series[key])
        group = key[len("step/"):-len("_update_ratio")]
        if max(values) < STALL_UPDATE:
            out.append(Verdict("WARN", key, f"{group} update ratio {max(values):.2g} < {STALL_UPDATE:g}: "
                                            "the group barely moves (LR, frozen, or no gradient)"))
        elif mean(values) > HUGE_UPDATE:
            out.append(Verdict("WARN", key, f"{group} update ratio {mean(values):.2g} > {HUGE_UPDATE:g}: "
                                            "steps too large"))
    return out


def dmd_verdicts(series: Series) -> list[Verdict]:
    out = []
    if "dmd/gen_std_ratio" in series:
        ratio = mean(recent(series["dmd/gen_std_ratio"]))
        lo, hi = STD_RATIO
        if not lo <= ratio <= hi:
            what = "collapsed" if ratio < lo else "blown up"
            out.append(Verdict("WARN", "dmd/gen_std", f"generator std / teacher std = {ratio:.2f} outside "
                                                      f"[{lo}, {hi}]: output spread {what}"))
    if "dmd/normalizer_min" in series and min(recent(series["dmd/normalizer_min"])) <= 1e-6:
        out.append(Verdict("WARN", "dmd/normalizer", "normaliser ≈ 0: DMD gradient divided by ~0"))
    return out


def compare(base: Series, ablated: Series, threshold: float = 0.2) -> list[tuple[str, float, float, float]]:
    """Statistics whose recent mean moved by more than `threshold` (relative): (name, base, ablated, change)."""
    moved = []
    for key in sorted(set(base) & set(ablated)):
        a, b = mean(recent(base[key])), mean(recent(ablated[key]))
        scale = max(abs(a), abs(b), 1e-12)
        change = (b - a) / scale
        if abs(change) > threshold:
            moved.append((key, a, b, change))
    return sorted(moved, key=lambda m: -abs(m[3]))
