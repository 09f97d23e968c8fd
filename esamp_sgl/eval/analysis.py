"""From per-(arm, replicate, prompt) metrics to the comparisons the evaluation reports.

Matched-NLL gain (the probes' protocol): on each prompt, the reference family's points
(NLL, metric) — e.g. the stock min-p temperature sweep — are joined into a piecewise-linear curve in
NLL (extended linearly beyond its end points); an arm's gain on that prompt is its metric minus the
curve at the arm's own NLL. Reported: mean ± standard error over prompts, t = mean / s.e., and the
win rate (fraction of prompts with gain > 0). Replicates are averaged per prompt first.

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


def curve_at(xs: Sequence[float], ys: Sequence[float], x: float,
             slopes: tuple[float, float] | None = None) -> float:
    """Piecewise-linear interpolation through the points sorted by x. Outside their range: the end
    segment extended, or with `slopes` = (below, above) the end point continued at that slope."""
    pts = sorted(zip(xs, ys))
    if len(pts) == 1:
        return pts[0][1]
    xs_s, ys_s = [p[0] for p in pts], [p[1] for p in pts]
    if slopes is not None and not xs_s[0] <= x <= xs_s[-1]:
        end, slope = (0, slopes[0]) if x < xs_s[0] else (-1, slopes[1])
        return ys_s[end] + slope * (x - xs_s[end])
    i = int(np.searchsorted(xs_s, x))
    i = min(max(i, 1), len(pts) - 1)
    (x0, y0), (x1, y1) = pts[i - 1], pts[i]
    if x1 == x0:
        return (y0 + y1) / 2
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


def _mean_end_slopes(m: dict[str, dict[Any, float]], q: dict[str, dict[Any, float]],
                     refs: Sequence[str]) -> tuple[float, float] | None:
    """The slopes of the family's end segments on its mean curve (each arm's mean over prompts).
    A prompt's curve is extended past its own points at these slopes: per prompt, two points a
    little apart in quality give a slope that is mostly noise, and extending it gives meaningless
    values (a strength sweep whose first arms sit close to its stock anchor, say)."""
    pts = sorted((float(np.mean(list(q[a].values()))), float(np.mean(list(m[a].values())))) for a in refs)
    if len(pts) < 2 or pts[1][0] == pts[0][0] or pts[-1][0] == pts[-2][0]:
        return None
    slope = lambda p0, p1: (p1[1] - p0[1]) / (p1[0] - p0[0])
    return slope(pts[0], pts[1]), slope(pts[-2], pts[-1])


def matched_gain(records: list[dict[str, Any]], arm: str, reference_arms: Sequence[str],
                 metric: str = "vendi", quality: str = "nll") -> dict[str, Any] | None:
    """The arm's per-prompt gain in `metric` over the reference curve at matched `quality`: the
    prompt's own reference points, interpolated; extended past them at the mean curve's end slopes."""
    m, q = per_prompt(records, metric), per_prompt(records, quality)
    present = [a for a in reference_arms if a in m and a in q]
    if arm not in m or len(present) < 2:
        return None
    slopes = _mean_end_slopes(m, q, present)
    gains, by_prompt = [], {}
    for prompt, value in m[arm].items():
        refs = [a for a in reference_arms if prompt in m.get(a, {}) and prompt in q.get(a, {})]
        if len(refs) < 2 or prompt not in q.get(arm, {}):
            continue
        curve = curve_at([q[a][prompt] for a in refs], [m[a][prompt] for a in refs], q[arm][prompt], slopes)
        gains.append(value - curve)
        by_prompt[prompt] = value - curve
    if not gains:
        return None
    return {**_stats(gains), "per_prompt": by_prompt}


def _stats(values: Sequence[float]) -> dict[str, Any]:
    mean, sem = mean_and_sem(values)
    return {"mean": mean, "sem": sem, "t": mean / sem if sem > 0 else math.nan,
            "win_rate": float(np.mean([v > 0 for v in values])), "prompts": len(values)}


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
    None when the arm (or `other`) has no gain against any family."""
    gains = {f: g for f, refs in families.items() if (g := matched_gain(records, arm, refs, metric, quality))}
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
            "families": table, "families_without_curve": sorted(set(families) - set(gains)), **result}


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
