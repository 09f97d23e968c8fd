"""From per-(arm, replicate, prompt) metrics to the comparisons the evaluation reports.

Matched-NLL gain (the probes' protocol): on each prompt, the reference family's points
(NLL, metric) — e.g. the stock min-p temperature sweep — are joined into a piecewise-linear curve in
NLL (extended linearly beyond its end points); an arm's gain on that prompt is its metric minus the
curve at the arm's own NLL. Reported: mean ± standard error over prompts, t = mean / s.e., and the
win rate (fraction of prompts with gain > 0). Replicates are averaged per prompt first.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Iterable, Sequence

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


def curve_at(xs: Sequence[float], ys: Sequence[float], x: float) -> float:
    """Piecewise-linear interpolation through the points sorted by x, linear extrapolation outside."""
    pts = sorted(zip(xs, ys))
    if len(pts) == 1:
        return pts[0][1]
    xs_s, ys_s = [p[0] for p in pts], [p[1] for p in pts]
    i = int(np.searchsorted(xs_s, x))
    i = min(max(i, 1), len(pts) - 1)
    (x0, y0), (x1, y1) = pts[i - 1], pts[i]
    if x1 == x0:
        return (y0 + y1) / 2
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


def matched_gain(records: list[dict[str, Any]], arm: str, reference_arms: Sequence[str],
                 metric: str = "vendi", quality: str = "nll") -> dict[str, Any] | None:
    """The arm's per-prompt gain in `metric` over the reference curve at matched `quality`."""
    m, q = per_prompt(records, metric), per_prompt(records, quality)
    if arm not in m or len([a for a in reference_arms if a in m]) < 2:
        return None
    gains, by_prompt = [], {}
    for prompt, value in m[arm].items():
        refs = [a for a in reference_arms if prompt in m.get(a, {}) and prompt in q.get(a, {})]
        if len(refs) < 2 or prompt not in q.get(arm, {}):
            continue
        curve = curve_at([q[a][prompt] for a in refs], [m[a][prompt] for a in refs], q[arm][prompt])
        gains.append(value - curve)
        by_prompt[prompt] = value - curve
    if not gains:
        return None
    return {**_stats(gains), "per_prompt": by_prompt}


def _stats(values: Sequence[float]) -> dict[str, Any]:
    mean, sem = mean_and_sem(values)
    return {"mean": mean, "sem": sem, "t": mean / sem if sem > 0 else math.nan,
            "win_rate": float(np.mean([v > 0 for v in values])), "prompts": len(values)}


def gain_difference(gain_a: dict[str, Any], gain_b: dict[str, Any]) -> dict[str, Any] | None:
    """Per-prompt difference of two arms' matched gains (same reference): is a above b?"""
    common = sorted(set(gain_a["per_prompt"]) & set(gain_b["per_prompt"]))
    if not common:
        return None
    return _stats([gain_a["per_prompt"][p] - gain_b["per_prompt"][p] for p in common])


def paired_difference(records: list[dict[str, Any]], a: str, b: str, metric: str) -> dict[str, Any] | None:
    """Per-prompt metric(a) − metric(b): mean ± s.e., win rate of a."""
    m = per_prompt(records, metric)
    common = sorted(set(m.get(a, {})) & set(m.get(b, {})))
    if not common:
        return None
    return _stats([m[a][p] - m[b][p] for p in common])


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
