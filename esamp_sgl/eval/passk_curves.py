"""pass@k for every k = 1…n with 95 % intervals (bootstrap over tasks), and its markdown table.

The unbiased estimator (metrics.pass_at_k) per task and k, averaged over tasks. The interval is a
percentile bootstrap over tasks, one set of resampled task indices (fixed seed) shared by every k and
every arm, so a curve's points move together and a re-analysis reports the same intervals. Paired
contrasts between arms (pass@16, pass@64) go through analysis.paired_contrast (t and BCa intervals).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from esamp_sgl.eval.metrics import pass_at_k

BOOTSTRAP_SEED = 0
BOOTSTRAP_RESAMPLES = 4000
TABLE_KS = (1, 2, 4, 8, 16, 32, 64)


def pass_at_k_matrix(correct: Sequence[int], n: int, ks: Sequence[int]) -> np.ndarray:
    """[tasks, len(ks)] unbiased pass@k of each task (n samples, correct[t] of them correct)."""
    return np.array([[pass_at_k(n, int(c), k) for k in ks] for c in correct], dtype=np.float64).reshape(len(correct), len(ks))


def bootstrap_indices(tasks: int, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """[resamples, tasks] task indices drawn with replacement (fixed seed)."""
    return np.random.default_rng(seed).integers(0, tasks, size=(resamples, tasks))


def curve_with_intervals(correct: Sequence[int], n: int, ks: Sequence[int],
                         indices: np.ndarray | None = None) -> dict[int, dict[str, float]]:
    """{k: {"mean", "sem", "ci95": [lo, hi]}} over tasks; `indices` from bootstrap_indices (shared by
    the arms of one run so their intervals use the same resamples)."""
    values = pass_at_k_matrix(correct, n, ks)
    tasks = values.shape[0]
    if tasks == 0:
        return {}
    indices = bootstrap_indices(tasks) if indices is None else indices
    boot = values[indices].mean(axis=1)  # [resamples, ks]
    lo, hi = np.percentile(boot, [2.5, 97.5], axis=0)
    sem = values.std(axis=0, ddof=1) / np.sqrt(tasks) if tasks > 1 else np.zeros(len(ks))
    return {int(k): {"mean": float(values[:, i].mean()), "sem": float(sem[i]), "ci95": [float(lo[i]), float(hi[i])]}
            for i, k in enumerate(ks)}


def curves(per_task: Mapping[str, Mapping[Any, Mapping[str, Any]]], arms: Sequence[str], n: int,
           ks: Sequence[int] | None = None) -> dict[str, dict[int, dict[str, float]]]:
    """{arm: curve_with_intervals} for k = 1…n (or `ks`), from passk.run's per_task rows ("correct")."""
    ks = list(ks) if ks else list(range(1, n + 1))
    out = {}
    for arm in arms:
        rows = per_task.get(arm, {})
        tasks = sorted(rows)
        if not tasks:
            continue
        out[arm] = curve_with_intervals([rows[t]["correct"] for t in tasks], n, ks, bootstrap_indices(len(tasks)))
    return out


def table_rows(curves_by_arm: Mapping[str, Mapping[int, Mapping[str, Any]]], n: int,
               profiles: Mapping[str, str] | None = None) -> tuple[list[str], list[list[str]]]:
    """A markdown table's header and rows: pass@k at k = 1, 2, 4, …, 64 (those ≤ n), each
    'mean [lo, hi]' with its 95 % bootstrap interval; with `profiles`, a column of the arm's profile."""
    ks = [k for k in TABLE_KS if k <= n]
    header = ["arm"] + (["profile"] if profiles is not None else []) + [f"pass@{k}" for k in ks]
    rows = []
    for arm, curve in curves_by_arm.items():
        cells = [f"{curve[k]['mean']:.3f} [{curve[k]['ci95'][0]:.3f}, {curve[k]['ci95'][1]:.3f}]"
                 if k in curve else "n/a" for k in ks]
        rows.append([arm] + ([profiles.get(arm, "—")] if profiles is not None else []) + cells)
    return header, rows


def markdown_lines(curves_by_arm: Mapping[str, Mapping[int, Mapping[str, Any]]], n: int,
                   profiles: Mapping[str, str] | None = None) -> list[str]:
    """The report's "pass@k with 95 % intervals" section."""
    from esamp_sgl.eval.report import markdown_table

    header, rows = table_rows(curves_by_arm, n, profiles)
    return ["", "## pass@k with 95 % intervals", "",
            f"Unbiased pass@k from n = {n}; mean over tasks [95 % percentile bootstrap over tasks, "
            f"{BOOTSTRAP_RESAMPLES} resamples, seed {BOOTSTRAP_SEED}]. Every k = 1…{n} is in the JSON (`curves`) "
            "and the plot `passk_curves.png`.", "", markdown_table(header, rows)]
