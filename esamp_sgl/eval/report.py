"""Writing results: JSON (every number and the configuration), PNG plots, a markdown summary."""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from typing import Any, Iterator, Sequence


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=_jsonable))


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def fmt(stat: dict[str, Any] | None, digits: int = 3) -> str:
    if not stat or stat.get("mean") is None or math.isnan(stat["mean"]):
        return "n/a"
    sem = stat.get("sem")
    if sem is None or math.isnan(sem):
        return f"{stat['mean']:.{digits}f}"
    return f"{stat['mean']:.{digits}f} ± {sem:.{digits}f}"


CONTRAST_HEADER = ("contrast", "mean difference", "95 % CI (paired t)", "95 % CI (bootstrap)", "t", "p",
                   "win rate", "n")


def contrast_row(label: str, stat: dict[str, Any] | None) -> list[str]:
    """One row under CONTRAST_HEADER for an analysis.contrast_stats result (None: not computed)."""
    if not stat or math.isnan(stat["mean"]):
        return [label, "n/a"] + [""] * (len(CONTRAST_HEADER) - 2)
    interval = lambda ci: "n/a" if math.isnan(ci[0]) else f"[{ci[0]:+.3f}, {ci[1]:+.3f}]"
    number = lambda x, spec: "n/a" if math.isnan(x) else format(x, spec)
    return [label, f"{stat['mean']:+.3f}", interval(stat["ci95_t"]), interval(stat["ci95_bootstrap"]),
            number(stat["t"], ".2f"), number(stat["p"], ".3g"), f"{stat['win_rate']:.0%}", str(stat["prompts"])]


def bullet_lines(notes: Sequence[str]) -> list[str]:
    """A markdown list after a blank line (nothing for no notes)."""
    return [""] + [f"* {note}" for note in notes] if notes else []


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def frontier_plot(path: Path, points: dict[str, tuple[float, float]], families: dict[str, str],
                  front: Sequence[str], errors: dict[str, tuple[float, float]] | None = None,
                  x_label: str = "mean per-token NLL under the base model (lower = more fluent)",
                  y_label: str = "Vendi score (MiniLM)", title: str = "") -> None:
    """Diversity (y) vs NLL (x): one colour per family (lines join a family's arms in NLL order),
    the Pareto frontier as a dashed black line with ringed points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 6))
    by_family: dict[str, list[str]] = {}
    for arm, family in families.items():
        if arm in points:
            by_family.setdefault(family, []).append(arm)
    markers = "osD^v<>ph*X"
    for i, (family, arms) in enumerate(sorted(by_family.items())):
        arms = sorted(arms, key=lambda a: points[a][0])
        xs, ys = [points[a][0] for a in arms], [points[a][1] for a in arms]
        style = "-" if family.startswith("stock") else "--"
        ax.plot(xs, ys, style, marker=markers[i % len(markers)], label=family, alpha=0.85)
        if errors:
            ax.errorbar(xs, ys, xerr=[errors[a][0] for a in arms], yerr=[errors[a][1] for a in arms],
                        fmt="none", alpha=0.3, color=ax.lines[-1].get_color())
        for a, x, y in zip(arms, xs, ys):
            ax.annotate(_short_label(a), (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
    if front:
        fx, fy = [points[a][0] for a in front], [points[a][1] for a in front]
        ax.plot(fx, fy, "k:", linewidth=1.2, label="Pareto frontier")
        ax.scatter(fx, fy, s=140, facecolors="none", edgecolors="k", linewidths=1.2)
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _short_label(arm: str) -> str:
    """'stock-T0.7-minp0.05' -> 'T0.7' (the family is in the legend); others drop the settings."""
    head, _, rest = arm.partition("-T")
    return "T" + rest.split("-")[0] if head == "stock" else head


@contextlib.contextmanager
def _passk_axes(path: Path, title: str, ylabel: str, size: tuple[float, float]) -> Iterator[Any]:
    """A pass@k figure (log2 k axis): yields the axes, then labels, saves to `path` and closes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size)
    yield ax
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def passk_plot(path: Path, curves: dict[str, dict[int, float]], title: str = "") -> None:
    with _passk_axes(path, title, "pass@k (unbiased estimator)", (7, 5)) as ax:
        for arm, curve in curves.items():
            ks = sorted(curve)
            ax.plot(ks, [curve[k] for k in ks], marker="o", label=arm)


def passk_band_plot(path: Path, curves: dict[str, dict[int, dict[str, Any]]], title: str = "") -> None:
    """pass@k for k = 1…n per arm, each with its 95 % interval as a shaded band (log2 k axis)."""
    with _passk_axes(path, title, "pass@k (unbiased; band: 95 % bootstrap over tasks)", (8, 5.5)) as ax:
        for arm, curve in curves.items():
            ks = sorted(curve)
            line, = ax.plot(ks, [curve[k]["mean"] for k in ks], label=arm, linewidth=1.4)
            ax.fill_between(ks, [curve[k]["ci95"][0] for k in ks], [curve[k]["ci95"][1] for k in ks],
                            color=line.get_color(), alpha=0.12, linewidth=0)
