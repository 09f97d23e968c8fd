"""From per-(arm, replicate, prompt) metrics to the comparisons the evaluation reports.

Matched-NLL gain (the probes' protocol): on each prompt, the reference family's points
(NLL, metric) — e.g. the stock min-p temperature sweep — are joined into a piecewise-linear curve in
NLL; an arm's gain on that prompt is its metric minus the curve at the arm's own NLL. Reported: mean ±
standard error over prompts, t = mean / s.e., and the win rate (fraction of prompts with gain > 0).
Replicates are averaged per prompt first.

Interpolation only, never extrapolation: a curve says nothing outside its measured span (a two-point
sweep extended far past its points can manufacture a large contrast either way). An arm whose mean NLL
lies outside the span of the family's mean curve is "out of span" for that family (reported, no
number); on a prompt where the arm lies outside that prompt's own points, the prompt gives no number
(counted in `prompts_out_of_span`). Sweep a family far enough to span every arm it is compared with.

Pre-registered contrast (`matched_contrast`): one arm's gain at matched NLL against several baseline
families' curves, contrasted with the strongest of them, with 95 % confidence intervals (paired t and
bootstrap, scipy.stats) and a p value; `paired_contrast` gives the same statistics for any per-prompt
(or per-task) pairing.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from esamp_sgl.eval.metrics import mean_and_sem


def per_prompt(records: Iterable[dict[str, Any]], metric: str) -> dict[str, dict[int, float]]:
    """{arm: {prompt: metric averaged over replicates}} (NaNs skipped)."""
    acc: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        value = r.get(metric)
        if value is not None and not math.isnan(value):
            acc[r["arm"]][r["prompt"]].append(value)
    return {arm: {p: float(np.mean(v)) for p, v in by.items()} for arm, by in acc.items()}


def curve_at(xs: Sequence[float], ys: Sequence[float], x: float) -> float | None:
    """Piecewise-linear interpolation through the points sorted by x; None outside [min x, max x]
    (no extrapolation: the curve is not known there)."""
    pts = sorted(zip(xs, ys))
    xs_s = [p[0] for p in pts]
    if not pts or not xs_s[0] <= x <= xs_s[-1]:
        return None
    if len(pts) == 1:
        return pts[0][1]
    i = int(np.searchsorted(xs_s, x))
    i = min(max(i, 1), len(pts) - 1)
    (x0, y0), (x1, y1) = pts[i - 1], pts[i]
    if x1 == x0:
        return (y0 + y1) / 2
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


def mean_span(records: list[dict[str, Any]], arms: Sequence[str], quality: str = "nll") -> tuple[float, float] | None:
    """[min, max] of the arms' mean `quality` over prompts (the span of a family's mean curve)."""
    q = per_prompt(records, quality)
    means = [float(np.mean(list(q[a].values()))) for a in arms if q.get(a)]
    return (min(means), max(means)) if len(means) >= 2 else None


def matched_gain(records: list[dict[str, Any]], arm: str, reference_arms: Sequence[str],
                 metric: str = "vendi", quality: str = "nll") -> dict[str, Any] | None:
    """The arm's per-prompt gain in `metric` over the reference curve at matched `quality`, the
    prompt's own reference points interpolated, never extrapolated. None when there is no curve
    (fewer than two reference arms, or the arm not run). When the arm's mean quality lies outside the
    span of the family's mean curve: `{"out_of_span": True, "mean": nan, ...}` and no per-prompt
    numbers. Otherwise the statistics over the prompts where the arm lies inside the prompt's own
    points (`prompts_out_of_span`: the others), "out_of_span": False."""
    m, q = per_prompt(records, metric), per_prompt(records, quality)
    present = [a for a in reference_arms if a in m and a in q]
    if arm not in m or arm not in q or len(present) < 2:
        return None
    span = mean_span(records, present, quality)
    arm_quality = float(np.mean(list(q[arm].values())))
    base = {"span": list(span), "arm_quality": arm_quality}
    if not span[0] <= arm_quality <= span[1]:
        return {**_stats([]), **base, "out_of_span": True, "per_prompt": {}, "prompts_out_of_span": len(m[arm])}
    gains, by_prompt, outside = [], {}, 0
    for prompt, value in m[arm].items():
        refs = [a for a in reference_arms if prompt in m.get(a, {}) and prompt in q.get(a, {})]
        if len(refs) < 2 or prompt not in q[arm]:
            continue
        curve = curve_at([q[a][prompt] for a in refs], [m[a][prompt] for a in refs], q[arm][prompt])
        if curve is None:
            outside += 1
            continue
        gains.append(value - curve)
        by_prompt[prompt] = value - curve
    if not gains:
        return {**_stats([]), **base, "out_of_span": True, "per_prompt": {}, "prompts_out_of_span": outside}
    return {**_stats(gains), **base, "out_of_span": False, "per_prompt": by_prompt, "prompts_out_of_span": outside}


def _stats(values: Sequence[float]) -> dict[str, Any]:
    mean, sem = mean_and_sem(values)
    return {"mean": mean, "sem": sem, "t": mean / sem if sem > 0 else math.nan,
            "win_rate": float(np.mean([v > 0 for v in values])) if len(values) else math.nan,
            "prompts": len(values)}


BOOTSTRAP_SEED = 0  # fixed: a re-analysis of the same records reports the same interval
BOOTSTRAP_RESAMPLES = 9999


def contrast_stats(values: Sequence[float], seed: int = BOOTSTRAP_SEED) -> dict[str, Any]:
    """Paired differences → `_stats` plus the two-sided one-sample t test against 0 (`t`, `p`), its
    95 % interval `ci95_t` and a BCa bootstrap 95 % interval of the mean `ci95_bootstrap` (fixed
    seed), so the t interval's normality assumption can be checked against one that does not make it.
    Degenerate cases are explicit rather than scipy warnings: fewer than two values give NaN
    intervals and p; identical values (s.e. 0) give the point interval [mean, mean], t and p NaN."""
    from scipy import stats as sps

    v = np.asarray([x for x in values if not math.isnan(x)], dtype=np.float64)
    out = {**_stats(v.tolist()), "p": math.nan, "ci95_t": [math.nan, math.nan],
           "ci95_bootstrap": [math.nan, math.nan]}
    if v.size < 2:
        return out
    if out["sem"] == 0:
        return {**out, "ci95_t": [out["mean"]] * 2, "ci95_bootstrap": [out["mean"]] * 2}
    test = sps.ttest_1samp(v, 0.0)
    t_ci = test.confidence_interval(0.95)
    boot = sps.bootstrap((v,), np.mean, confidence_level=0.95, n_resamples=BOOTSTRAP_RESAMPLES,
                         method="BCa", rng=np.random.default_rng(seed)).confidence_interval
    return {**out, "t": float(test.statistic), "p": float(test.pvalue),
            "ci95_t": [float(t_ci.low), float(t_ci.high)], "ci95_bootstrap": [float(boot.low), float(boot.high)]}


def paired_contrast(a: Mapping[Any, float], b: Mapping[Any, float] | None) -> dict[str, Any] | None:
    """a − b over their common keys (prompts or tasks; b None: a against 0) with `contrast_stats`."""
    keys = sorted(set(a) & set(b)) if b is not None else sorted(a)
    if not keys:
        return None
    diffs = {k: a[k] - (b[k] if b is not None else 0.0) for k in keys}
    return {**contrast_stats(list(diffs.values())), "per_prompt": diffs}


def matched_contrast(records: list[dict[str, Any]], arm: str, families: Mapping[str, Sequence[str]],
                     other: str | None = None, metric: str = "vendi",
                     quality: str = "nll") -> dict[str, Any] | None:
    """The arm's `metric` at matched `quality` against the *strongest* baseline family.

    Per prompt, each family's curve (`matched_gain`) is read at the arm's own quality; the strongest
    family is the one whose mean curve value over the prompts every family covers is highest. The
    arm is then contrasted with that family alone: a post-hoc choice of the best competitor, which
    favours the baselines, so the contrast is conservative (an arm that beats it beats them all on
    average). With `other`, the contrast is the arm's gain minus `other`'s gain against the same
    curve — the control contrasts (trained vs frozen, Distiller vs random prior) go through this same
    code, and a difference of gains against one curve compares the two arms at matched quality.
    A family whose span does not hold the arm (or `other`) is listed in `families_out_of_span`, never
    chosen. None when the arm (or `other`) has no gain against any family."""
    found = {f: matched_gain(records, arm, refs, metric, quality) for f, refs in families.items()}
    gains = {f: g for f, g in found.items() if g and not g["out_of_span"]}
    if other is not None:  # the difference of gains needs both arms inside the family's span
        gains = {f: g for f, g in gains.items()
                 if (o := matched_gain(records, other, families[f], metric, quality)) and not o["out_of_span"]}
    common = set.intersection(*(set(g["per_prompt"]) for g in gains.values())) if gains else set()
    if not common:
        return None
    values = per_prompt(records, metric)[arm]
    table = {f: {"mean_at_matched_quality": float(np.mean([values[p] - g["per_prompt"][p] for p in common])),
                 "mean_gain": float(np.mean([g["per_prompt"][p] for p in common])), "arms": list(families[f])}
             for f, g in gains.items()}
    strongest = max(table, key=lambda f: table[f]["mean_at_matched_quality"])
    mine = {p: gains[strongest]["per_prompt"][p] for p in common}
    versus = None
    if other is not None:
        versus = matched_gain(records, other, families[strongest], metric, quality)
        if versus is None:
            return None
    result = paired_contrast(mine, versus["per_prompt"] if versus else None)
    if result is None:
        return None
    return {"arm": arm, "other": other, "metric": metric, "quality": quality, "strongest_family": strongest,
            "families": table, "families_without_curve": sorted(f for f, g in found.items() if g is None),
            "families_out_of_span": sorted(f for f, g in found.items() if g and f not in gains), **result}


def paired_difference(records: list[dict[str, Any]], a: str, b: str, metric: str) -> dict[str, Any] | None:
    """Per-prompt metric(a) − metric(b) with `contrast_stats` (win rate of a)."""
    m = per_prompt(records, metric)
    return paired_contrast(m.get(a, {}), m.get(b, {}))


def summarize(records: list[dict[str, Any]], arms: Sequence[str], metrics: Sequence[str]) -> dict[str, dict]:
    """{arm: {metric: {"mean", "sem"}}} over prompts (replicates averaged per prompt first)."""
    out: dict[str, dict] = {arm: {} for arm in arms}
    for metric in metrics:
        table = per_prompt(records, metric)
        for arm in arms:
            mean, sem = mean_and_sem(list(table.get(arm, {}).values()))
            out[arm][metric] = {"mean": mean, "sem": sem}
    return out


def pareto_front(points: dict[str, tuple[float, float]]) -> list[str]:
    """Arms not dominated in (lower NLL, higher diversity); points = {arm: (nll, diversity)}."""
    front = []
    for arm, (x, y) in points.items():
        if math.isnan(x) or math.isnan(y):
            continue
        dominated = any(ox <= x and oy >= y and (ox < x or oy > y)
                        for other, (ox, oy) in points.items() if other != arm
                        and not (math.isnan(ox) or math.isnan(oy)))
        if not dominated:
            front.append(arm)
    return sorted(front, key=lambda a: points[a][0])
