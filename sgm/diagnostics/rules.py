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
import statistics
from dataclasses import dataclass
from typing import NamedTuple

Series = dict[str, list[tuple[int, float]]]  # metric -> [(step, value)] sorted by step

WEAK_RATIO = 0.05  # a term below 5% of its role's gradient barely steers the update
ZERO_GRAD = 1e-12
NEAR_ZERO = 1e-9  # compare(): two recent means both this close to 0 have not moved
NOT_COMPARED = ("diag/",)  # compare(): the diagnostics' own timing, not a statistic of training
COND_ABS_TOL = 1e-4  # |cond_gain| below this, or below COND_REL_TOL of the loss: condition ignored
COND_REL_TOL = 0.01
RISING = 1.25  # late / early mean of a low-sigma critic bin
LOW_SIGMA = 0.5  # bins whose upper edge is at most this are "low sigma"
STALL_UPDATE = 1e-7  # update ratio: the group does not move
HUGE_UPDATE = 1e-1
STD_RATIO = (0.5, 2.0)  # generator std / teacher std outside this: collapse or blow-up
# rectified flow (sgm/diagnostics/flow.py)
FLOW_COS_LOW = 0.5  # flow/cos below this: the velocity barely follows eps - x0 (digits_flow, 500 steps: 0.89)
FLOW_SCALE_WARN = (0.8, 1.25)  # speed_ratio / cos outside: |v_pred| off the calibrated scale (digits_flow: 0.99)
FLOW_SCALE_FAULT = (0.67, 1.5)  # ... far off: a scale error in the target, t_scale or the weighting
ENDPT_CONVERGED = 0.5  # rmse at the largest K / rmse at the smallest K above this: not converging
ENDPT_STRAIGHT = 1e-6  # rmse at the smallest K below this: a straight (or constant) field, nothing to judge
BOUNDARY_FACTOR = 4.0  # nmse of t bin 0 or 9 over the median of bins 2-7 (digits_flow: 2.5 and 0.6)
FLOW_COND_TOL = 0.01  # |flow/cond_gain_cos| below this: the condition does not steer the velocity
# KL autoencoder (sgm/diagnostics/vae.py); toy digits VAE after 600 steps: std/mean ~0.03 with the KL off
STD_COLLAPSED = 0.05  # std/mean below this: q(z|x) has shrunk to a point
KL_DEAD = 0.01  # kl/per_dim (nats per latent element) below this: q(z|x) = N(0, I) for every x
KL_DRIFT = 0.1  # relative move of mu/rms and |logvar/mean| in the late half of a run that counts as drift
KL_EFFECT = 0.1  # KL ablation: relative difference of mu/abs_mean and |log std/mean| that counts as an effect
# DINO-style semantic term (sgm/modules/distillation/semantic.py), thresholds of the loss-debugging notes, part A
DINO_WEAK_SHARE = 0.10  # grad/dino below 5-10% of the generator's gradient: weak supervision
DINO_SHARP = 0.02  # ent/teacher below this share of log K (≈ 0): targets too sharp, the student saturates
DINO_STUDENT_LOW = 0.05  # ent/student below this share of log K, with a weak gradient: raise T_s or the weight
DINO_HEAD_STALL = 1e-5  # step/dino_head_update_ratio below this: the projection head hardly moves


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
    out += update_verdicts(series) + dmd_verdicts(series) + dino_verdicts(series) + flow_verdicts(series)
    out += vae_verdicts(series)
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
        who = "the generator's samples do not depend on" if key.startswith("dmd/") else "the network ignores"
        out.append(gain_verdict(key, gain, tol,
                                ignored=f"{who} its conditioning (shuffled conditions do as well as the true ones)",
                                worse="shuffled conditions do better", used="the conditioning is used"))
    return out


def gain_verdict(key: str, gain: float, tol: float, ignored: str, worse: str, used: str) -> Verdict:
    """A condition-shuffle gain (true minus shuffled): ~0 FAULT (ignored), < 0 WARN (worse), else OK (used)."""
    name = key.split("/")[-1]
    if abs(gain) <= tol:
        return Verdict("FAULT", key, f"{name} = {gain:.3g} ≈ 0 (|gain| <= {tol:.2g}): {ignored}")
    if gain < 0:
        return Verdict("WARN", key, f"{name} = {gain:.3g} < 0: {worse}")
    return Verdict("OK", key, f"{name} = {gain:.3g}: {used}")


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


def dino_verdicts(series: Series) -> list[Verdict]:
    """DINO term: entropy of the targets and of the student, its share of the gradient, its head's steps."""
    if "ent/teacher" not in series:
        return []
    out = []
    log_k = mean(recent(series["semantic/entropy_max"])) if "semantic/entropy_max" in series else 1.0
    ent_t, ent_s = mean(recent(series["ent/teacher"])), mean(recent(series.get("ent/student", [(0, log_k)])))
    share = mean(recent(series["grad/dino_ratio"])) if "grad/dino_ratio" in series else None
    if ent_t < DINO_SHARP * log_k:
        out.append(Verdict("FAULT", "dino", f"ent/teacher = {ent_t:.3g} ≈ 0 (log K = {log_k:.2f}): the targets are "
                                            "one-hot, too sharp; raise T_t (teacher temperature) or check the centring"))
    if share is not None and ent_s < DINO_STUDENT_LOW * log_k and share < DINO_WEAK_SHARE:
        out.append(Verdict("WARN", "dino", f"ent/student = {ent_s:.3g} tiny with grad/dino at {share:.1%} of the "
                                           "generator's gradient: the student saturated; raise T_s or the weight"))
    if share is not None and share < DINO_WEAK_SHARE:
        out.append(Verdict("WARN", "dino", f"grad/dino is {share:.2%} of the generator's gradient (< "
                                           f"{DINO_WEAK_SHARE:.0%}): weak semantic supervision; raise its weight "
                                           "(x2, x4) or balance by gradient"))
    if "step/dino_head_update_ratio" in series:
        ratio = max(recent(series["step/dino_head_update_ratio"]))
        if ratio < DINO_HEAD_STALL:
            out.append(Verdict("FAULT", "dino_head", f"step/dino_head_update_ratio = {ratio:.2g} < {DINO_HEAD_STALL:g}: "
                                                     "the projection head is not updated (frozen, no gradient, or LR)"))
    if not out:
        out.append(Verdict("OK", "dino", f"ent/teacher {ent_t:.2f}, ent/student {ent_s:.2f} of log K {log_k:.2f}"
                                         + (f", {share:.0%} of the generator's gradient" if share is not None else "")))
    return out


class Moved(NamedTuple):
    """One statistic that differs between a base run and an ablated run (recent means)."""

    name: str
    base: float | None  # None: not logged by the base run
    ablated: float | None  # None: not logged by the ablated run
    change: float  # (ablated - base) / max(|base|, |ablated|), in [-2, 2]; +-inf: in one run only

    @property
    def how(self) -> str:
        """The change in words: relative and absolute, or in which run the statistic is alone."""
        if self.base is None or self.ablated is None:
            return f"only in the {'base' if self.ablated is None else 'ablated'} run"
        if not math.isfinite(self.change):
            return "not finite in one run"
        return f"{self.change:+.0%}, absolute {self.ablated - self.base:+.3g}"

    def __str__(self) -> str:
        def value(v: float | None) -> str:
            return f"{'absent':>11s}" if v is None else f"{v:11.4g}"

        return f"{self.name:40s} {value(self.base)} -> {value(self.ablated)}  ({self.how})"


def flow_verdicts(series: Series) -> list[Verdict]:
    """Rectified flow: direction, scale, integrability, boundary t bins and use of the condition."""
    out = []
    if "flow/cos" not in series:
        return out
    cos = mean(recent(series["flow/cos"]))
    if cos < 0:
        out.append(Verdict("FAULT", "flow/cos", f"cos(v_pred, eps - x0) = {cos:.2f} < 0: the velocity points "
                                                "away from its target (sign error: x0 - eps trained, or c_out's sign)"))
    elif cos < FLOW_COS_LOW:
        out.append(Verdict("WARN", "flow/cos", f"cos(v_pred, eps - x0) = {cos:.2f} < {FLOW_COS_LOW}: the velocity "
                                               "barely follows its target (undertrained, or a wrong target)"))
    else:
        out.append(Verdict("OK", "flow/cos", f"cos(v_pred, eps - x0) = {cos:.2f}"))
    out += flow_scale_verdicts(series, cos) + endpoint_verdicts(series) + boundary_verdicts(series)
    if "flow/cond_gain_cos" in series:
        out.append(gain_verdict(
            "flow/cond_gain_cos", mean(recent(series["flow/cond_gain_cos"])), FLOW_COND_TOL,
            ignored="the velocity ignores its conditioning (shuffled conditions align as well)",
            worse="shuffled conditions align better", used="the conditioning steers the velocity"))
    return out


def flow_scale_verdicts(series: Series, cos: float) -> list[Verdict]:
    """A calibrated field (the conditional mean of the target) has speed_ratio ≈ cos; a field scaled by c
    has speed_ratio ≈ c cos. So speed_ratio / cos is the field's scale error."""
    if "flow/speed_ratio" not in series or cos <= 0:
        return []
    speed = mean(recent(series["flow/speed_ratio"]))
    scale = speed / cos
    text = (f"speed_ratio = {speed:.2f} with cos = {cos:.2f}: |v_pred| is {scale:.2f}x a calibrated field's "
            "(speed_ratio ≈ cos); scale mismatch (target or latent scale, t_scale, loss weighting)")
    if not FLOW_SCALE_FAULT[0] <= scale <= FLOW_SCALE_FAULT[1]:
        return [Verdict("FAULT", "flow/speed_ratio", text)]
    if not FLOW_SCALE_WARN[0] <= scale <= FLOW_SCALE_WARN[1]:
        return [Verdict("WARN", "flow/speed_ratio", text)]
    return []


def _at_k(series: Series, prefix: str) -> list[tuple[int, float]]:
    """[(K, recent mean)] of the `<prefix>@K` columns, by K."""
    found = [(int(k[len(prefix) + 1:]), mean(recent(v))) for k, v in series.items()
             if k.startswith(prefix + "@") and k[len(prefix) + 1:].isdigit()]
    return sorted(found)


def endpoint_verdicts(series: Series) -> list[Verdict]:
    """Euler endpoints vs the fine reference: the error should shrink with K (about 1/K). The reference
    follows the same field, so scale and sign errors show in speed_ratio, cos and endpt_std_ratio instead."""
    out = []
    rmse = _at_k(series, "flow/endpt_rmse")
    if len(rmse) >= 2 and rmse[0][1] > ENDPT_STRAIGHT:
        first, last = rmse[0][1], rmse[-1][1]
        rising = [(a, b) for a, b in zip(rmse, rmse[1:]) if b[1] > 1.1 * a[1]]
        if last / first > ENDPT_CONVERGED or rising:
            curve = ", ".join(f"@{k}: {v:.3g}" for k, v in rmse)
            out.append(Verdict("WARN", "flow/endpt_rmse", f"Euler endpoint error does not fall with K ({curve}): "
                                                          "the sampler's steps cannot follow the trained field "
                                                          "(train/inference formula mismatch, or a stiff or "
                                                          "singular field near t = 0 or 1)"))
    spread = _at_k(series, "flow/endpt_std_ratio")
    if spread:
        k, ratio = spread[-1]
        lo, hi = STD_RATIO
        if not lo <= ratio <= hi:
            what = "collapsed" if ratio < lo else "blown up"
            out.append(Verdict("WARN", "flow/endpt_std_ratio", f"endpoint std / data std = {ratio:.2f} at {k} steps, "
                                                               f"outside [{lo}, {hi}]: samples' spread {what}"))
    return out


def boundary_verdicts(series: Series) -> list[Verdict]:
    """The t bins at the ends (t < 0.1, t >= 0.9) against the median of the middle bins (0.2 <= t < 0.8).

    Even the exact field has its largest nmse near t = 0, where eps cannot be told from x_t (for
    Gaussian data N(m, s^2): residual s^2 / ((1 - t)^2 s^2 + t^2), largest at t = s^2 / (1 + s^2)),
    hence the generous BOUNDARY_FACTOR."""
    bins = {b: mean(recent(series[f"flow/nmse_t{b}"])) for b in range(10) if f"flow/nmse_t{b}" in series}
    middle = [v for b, v in bins.items() if 2 <= b <= 7]
    if not middle:
        return []
    median = statistics.median(middle)
    out = []
    for b, where in ((0, "t < 0.1"), (9, "t >= 0.9")):
        if b in bins and median > 0 and bins[b] > BOUNDARY_FACTOR * median:
            text = (f"nmse at {where} = {bins[b]:.3g}, {bins[b] / median:.1f}x the middle bins' median "
                    f"{median:.3g}: the boundary is poorly learnt (sample or weight more t there)")
            out.append(Verdict("WARN", f"flow/nmse_t{b}", text))
    return out


def compare(base: Series, ablated: Series, threshold: float = 0.2, atol: float = NEAR_ZERO) -> list[Moved]:
    """Statistics whose recent mean moved by more than `threshold` relative to the larger of the two
    values, largest change first. Both within `atol` of 0: unchanged (a relative change of noise).
    A statistic logged by one run only is listed too (change -inf: gone in the ablated run, +inf: new)."""
    moved = []
    for key in sorted(k for k in set(base) | set(ablated) if not k.startswith(NOT_COMPARED)):
        if key not in ablated:
            moved.append(Moved(key, mean(recent(base[key])), None, -math.inf))
            continue
        if key not in base:
            moved.append(Moved(key, None, mean(recent(ablated[key])), math.inf))
            continue
        a, b = mean(recent(base[key])), mean(recent(ablated[key]))
        if math.isnan(a) or math.isnan(b):  # a run diverged (nan in its recent window)
            if not (math.isnan(a) and math.isnan(b)):
                moved.append(Moved(key, a, b, math.inf))
            continue
        scale = max(abs(a), abs(b))
        if scale <= atol:
            continue
        change = (b - a) / scale
        if abs(change) > threshold:
            moved.append(Moved(key, a, b, change))
    return sorted(moved, key=lambda m: -abs(m.change))


def ablation_verdict(base: Series, ablated: Series, term: str, role: str, weight: str) -> Verdict:
    """Did zeroing `weight` take `term`'s gradient away from `role`? grad/<term> in both runs."""
    metric = f"grad/{term}"
    if metric not in base or metric not in ablated:
        return Verdict("WARN", metric, "not logged by both runs: add configs/diagnostics/loss_diagnostics.yaml")
    a, b = mean(recent(base[metric])), mean(recent(ablated[metric]))
    if a <= ZERO_GRAD:
        return Verdict("WARN", metric, f"{a:.3g} -> {b:.3g} (no gradient in the base run either: the term "
                                       f"was not reaching the {role})")
    if b > ZERO_GRAD:
        return Verdict("FAULT", metric, f"{a:.3g} -> {b:.3g} (still nonzero with {weight} = 0: the weight "
                                        "does not switch this term off)")
    return Verdict("OK", metric, f"{a:.3g} -> {b:.3g} (the term was reaching the {role})")


# ---------------------------------------------------------------------------------- KL autoencoder
def kl_is_on(series: Series) -> bool:
    return "grad/kl" in series and mean(recent(series["grad/kl"])) > ZERO_GRAD


def late_half(values: list[tuple[int, float]]) -> tuple[float, float]:
    """(early, late) means of the first and last thirds of the second half of a series (after warm-up)."""
    half = [v for _, v in values[len(values) // 2:]]
    k = max(1, len(half) // 3)
    return mean(half[:k]), mean(half[-k:])


def vae_verdicts(series: Series) -> list[Verdict]:
    """Posterior of a KL autoencoder: sigma shrunk to 0, KL dead (posterior collapse), drift from N(0, I)."""
    if "std/mean" not in series:
        return []
    out = []
    kl_on = kl_is_on(series)
    std, mu = mean(recent(series["std/mean"])), mean(recent(series.get("mu/rms", [])))
    if std < STD_COLLAPSED:
        std_min = min(recent(series.get("std/min", series["std/mean"])))
        cause = ("the KL term is too weak to hold sigma up: raise kl_weight" if kl_on
                 else "the KL term is off (grad/kl = 0), nothing holds sigma up")
        out.append(Verdict("WARN", "std/mean", f"std/mean = {std:.3g} < {STD_COLLAPSED:g} (std/min {std_min:.2g}): "
                                               "q(z|x) has shrunk to a point and the VAE works as a plain "
                                               f"autoencoder; {cause}. (Lowering kl_weight makes this worse; "
                                               "posterior collapse proper is the opposite, KL -> 0.)"))
    kl_dim = series.get("kl/per_dim")
    if kl_on and kl_dim and mean(recent(kl_dim)) < KL_DEAD:
        active = mean(recent(series.get("mu/active_fraction", [])))
        out.append(Verdict("WARN", "kl/per_dim", f"posterior collapse: KL = {mean(recent(kl_dim)):.3g} nats per latent "
                                                 f"element < {KL_DEAD:g} (mu/rms {mu:.3g}, std/mean {std:.3g}, active "
                                                 f"latents {active:.0%}): q(z|x) = N(0, I) whatever x, the decoder "
                                                 "ignores z; lower kl_weight or warm it up"))
    out += kl_trend_verdicts(series) if kl_on else []
    if not out:
        out.append(Verdict("OK", "posterior", f"std/mean = {std:.3g}, mu/rms = {mu:.3g}, KL "
                                              f"{mean(recent(kl_dim or [])):.3g} nats per latent element"))
    return out


def kl_trend_verdicts(series: Series) -> list[Verdict]:
    """KL on, yet mu/rms grows and logvar/mean moves away from 0 late in the run (notes B.2: they should not)."""
    mu, logvar = series.get("mu/rms", []), series.get("logvar/mean", [])
    if len(mu) < 6 or len(logvar) < 6:
        return []
    (mu_a, mu_b), (lv_a, lv_b) = late_half(mu), late_half(logvar)
    if not (mu_b > mu_a * (1 + KL_DRIFT) and abs(lv_b) > abs(lv_a) * (1 + KL_DRIFT)):
        return []
    share = mean(recent(series.get("grad/kl_ratio", [])))
    message = (f"the KL is on (grad/kl {share:.1%} of the gradient) yet q(z|x) keeps drifting from N(0, I) late in "
               f"the run: mu/rms {mu_a:.3g} -> {mu_b:.3g}, logvar/mean {lv_a:.3g} -> {lv_b:.3g} (expected: mu "
               "shrinking, logvar -> 0); the KL is too weak to pull it back: raise kl_weight, and check with a "
               "kl_weight=0 ablation that it acts at all")
    return [Verdict("WARN", "kl trend", message)]


def kl_ablation_verdict(base: Series, ablated: Series) -> Verdict | None:
    """Notes B.2: with the KL on, mu/abs_mean is smaller and std/mean nearer 1 than with kl_weight = 0.
    None unless exactly one of the two runs has its KL on and both logged the posterior statistics."""
    keys = ("std/mean", "mu/abs_mean", "grad/kl")
    if not all(k in base and k in ablated for k in keys) or kl_is_on(base) == kl_is_on(ablated):
        return None
    on, off = (base, ablated) if kl_is_on(base) else (ablated, base)
    std_on, std_off = mean(recent(on["std/mean"])), mean(recent(off["std/mean"]))
    mu_on, mu_off = mean(recent(on["mu/abs_mean"])), mean(recent(off["mu/abs_mean"]))
    nearer_one = abs(math.log(std_on)) < abs(math.log(std_off)) * (1 - KL_EFFECT)
    smaller_mu = mu_on < mu_off * (1 - KL_EFFECT)
    figures = (f"std/mean {std_on:.3g} with the KL vs {std_off:.3g} without, "
               f"mu/abs_mean {mu_on:.3g} vs {mu_off:.3g}")
    if nearer_one and smaller_mu:
        return Verdict("OK", "kl ablation", f"the KL acts: {figures}")
    return Verdict("WARN", "kl ablation", f"the KL has no visible effect (expected with it: mu/abs_mean smaller and "
                                          f"std/mean nearer 1): {figures}")
