"""Issue 20's pre-registered contrasts: the paper's ESamp against vanilla, the sharpening its rule
contains, its own noise control and today's default — fixed here, in code, before any run, and
written into every result JSON as they stand.

pass@k (`passk_contrasts`): per task, arm − other in the unbiased pass@k at k = 16 and 64 (k ≤ n),
paired over tasks, 95 % intervals from the paired t test and a BCa bootstrap (analysis.paired_contrast).

Diversity (`diversity_contrasts`): Vendi at matched perplexity. Each arm's Vendi gain over the
temperature curve (stock, no filter, T sweep) at its own NLL (= log perplexity) per prompt, and the
contrast is the difference of the two arms' gains, paired over prompts (analysis.matched_contrast with
`other`): a difference of gains against one curve compares the two arms at matched perplexity. The
curve is interpolated only: an arm outside its span gets "out of span", no number. Vanilla and stock
T 0.8 lie on that curve (gain 0 by construction), so against them the contrast is the paper arm's own
gain. The same contrast against the min-p (T 1) and presence-β (T 1) families, and the raw paired
differences in Vendi, NLL and cosine distance, are reported beside it, not pre-registered.
"""

from __future__ import annotations

from typing import Any, Iterator, NamedTuple, Sequence

from esamp_sgl.eval import analysis
from esamp_sgl.eval.arms import (BOUNDED_ARM, MIN_P_ARM, NOISE_ARM, PAPER_ARM, SHARPENING_ARM, VANILLA_ARM, Arm,
                                 parse_arm)
from esamp_sgl.eval.metrics import pass_at_k


class Contrast(NamedTuple):
    label: str
    arm: str  # arm specs (arms.parse_arm)
    other: str


PREREGISTERED_CONTRASTS: tuple[Contrast, ...] = (
    Contrast("paper − vanilla", PAPER_ARM, VANILLA_ARM),
    Contrast("paper − stock T 0.8 (the rule's sharpening alone)", PAPER_ARM, SHARPENING_ARM),
    Contrast("paper − noise control", PAPER_ARM, NOISE_ARM),
    # added for issue 22 before its runs (the 135M runs of issue 20 report it where both arms ran)
    Contrast("paper − min-p 0.1", PAPER_ARM, MIN_P_ARM),
    Contrast("paper − today's default (bounded, compensated β 1)", PAPER_ARM, BOUNDED_ARM),
)
PASSK_CONTRAST_KS = (16, 64)
DIVERSITY_METRIC = "vendi"
# The pre-registered curve of the matched-perplexity contrast; the other families are reported beside it.
MATCHED_FAMILY = "temperature (stock, no filter, T sweep)"


def registered() -> list[dict[str, str]]:
    """The list as written into the result JSON: label, both arm specs and their names."""
    return [{"label": c.label, "arm": c.arm, "other": c.other, "arm_name": parse_arm(c.arm).name,
             "other_name": parse_arm(c.other).name} for c in PREREGISTERED_CONTRASTS]


def _runnable(arms: Sequence[Arm], out: dict[str, Any]) -> Iterator[tuple[Contrast, str, str]]:
    """The registered contrasts whose two arms were run, as (contrast, arm name, other name); each of the
    others gets a null result in `out` and the reason in its notes."""
    names = {a.name for a in arms}
    for c in PREREGISTERED_CONTRASTS:
        a, b = parse_arm(c.arm).name, parse_arm(c.other).name
        missing = [name for name in (a, b) if name not in names]
        if missing:
            out["results"][c.label] = None
            out["notes"].append(f"{c.label}: not among the arms run: {', '.join(missing)}")
            continue
        yield c, a, b


def passk_contrasts(per_task: dict[str, dict[Any, dict[str, Any]]], arms: Sequence[Arm], n: int) -> dict[str, Any]:
    """{"registered": the list, "ks", "results": {label: {"pass@16": stats, "pass@64": stats}},
    "notes"}; a contrast whose arms were not run is null, with the reason in notes."""
    ks = [k for k in PASSK_CONTRAST_KS if k <= n]
    out: dict[str, Any] = {"registered": registered(), "ks": ks, "results": {}, "notes": []}
    if len(ks) < len(PASSK_CONTRAST_KS):
        out["notes"].append(f"n = {n}: pass@k only for k ≤ n ({', '.join(f'pass@{k}' for k in ks) or 'none'})")
    for c, a, b in _runnable(arms, out):
        value = lambda name, k: {t: pass_at_k(n, row["correct"], k) for t, row in per_task[name].items()}
        out["results"][c.label] = {f"pass@{k}": analysis.paired_contrast(value(a, k), value(b, k)) for k in ks}
    return out


def sweep_families(arms: Sequence[Arm]) -> dict[str, list[str]]:
    """The baseline families of the matched-perplexity comparisons, each with its strength-0 point:
    temperature (stock, no filter), min-p at T 1 (stock T 1 is min-p 0), presence β at T 1 without a
    filter (stock T 1 is β 0). Families with fewer than two arms are left out."""
    plain = lambda a: a.top_p == 1.0 and a.min_p == 0.0
    vanilla = [a.name for a in arms if a.kind == "stock" and plain(a) and a.temperature == 1.0]
    families = {
        MATCHED_FAMILY: [a.name for a in sorted(arms, key=lambda a: a.temperature) if a.kind == "stock" and plain(a)],
        "min-p (stock, T 1, min-p sweep)": vanilla + [a.name for a in sorted(arms, key=lambda a: a.min_p)
                                                      if a.kind == "stock" and a.temperature == 1.0
                                                      and a.top_p == 1.0 and a.min_p > 0],
        "presence (T 1, no filter, β sweep)": vanilla + [a.name for a in sorted(arms, key=lambda a: a.beta)
                                                         if a.kind == "presence" and plain(a) and a.temperature == 1.0],
    }
    return {f: names for f, names in families.items() if len(names) >= 2}


def matched_table(records: list[dict[str, Any]], arms: Sequence[Arm], families: dict[str, list[str]],
                  metric: str = DIVERSITY_METRIC) -> dict[str, dict[str, Any]]:
    """{arm: {family: gain stats, or {"out_of_span": True, ...}}} for every arm outside the family."""
    return {a.name: {f: analysis.matched_gain(records, a.name, refs, metric=metric)
                     for f, refs in families.items() if a.name not in refs} for a in arms}


def diversity_contrasts(records: list[dict[str, Any]], arms: Sequence[Arm]) -> dict[str, Any]:
    """The pre-registered contrasts on Vendi at matched perplexity (see the module's docstring)."""
    families = sweep_families(arms)
    out: dict[str, Any] = {"registered": registered(), "metric": DIVERSITY_METRIC, "quality": "nll",
                           "matched_family": MATCHED_FAMILY, "families": families, "results": {}, "notes": []}
    if MATCHED_FAMILY not in families:
        out["notes"].append(f"no {MATCHED_FAMILY} curve (needs ≥ 2 stock arms without a filter)")
    for c, a, b in _runnable(arms, out):
        entry: dict[str, Any] = {"raw": {m: analysis.paired_difference(records, a, b, m)
                                         for m in ("vendi", "nll", "cos_dist")}, "matched": {}}
        for family, refs in families.items():
            matched = analysis.matched_contrast(records, a, {family: refs}, other=None if b in refs else b,
                                                metric=DIVERSITY_METRIC)
            entry["matched"][family] = matched if matched is not None else _why_not(records, a, b, refs)
        entry["preregistered"] = entry["matched"].get(MATCHED_FAMILY)
        out["results"][c.label] = entry
    return out


def _why_not(records: list[dict[str, Any]], a: str, b: str, refs: list[str]) -> dict[str, Any]:
    """Why a matched contrast has no number: either arm outside the family's span, or no curve."""
    reasons = {}
    for name in (a, b):
        if name in refs:
            continue
        g = analysis.matched_gain(records, name, refs, metric=DIVERSITY_METRIC)
        reasons[name] = "no curve" if g is None else ("out of span" if g["out_of_span"] else "in span")
    return {"out_of_span": any(r == "out of span" for r in reasons.values()), "mean": float("nan"),
            "reasons": reasons}


def passk_markdown_lines(pre: dict[str, Any]) -> list[str]:
    """The pass@k report's "Pre-registered contrasts (issue 20)" section."""
    from esamp_sgl.eval.report import CONTRAST_HEADER, bullet_lines, contrast_row, markdown_table

    rows = []
    for c in pre["registered"]:
        value = pre["results"].get(c["label"])
        for k in pre["ks"]:
            rows.append(contrast_row(f"{c['label']}, pass@{k} ({c['arm_name']} − {c['other_name']})",
                                     value.get(f"pass@{k}") if value else None))
    return (["", "## Pre-registered contrasts (issue 20)", "",
             "Fixed in `esamp_sgl/eval/paper.py: PREREGISTERED_CONTRASTS` before any run. Per task, the difference "
             "in unbiased pass@k, paired over tasks; 95 % intervals from the paired t test and a BCa bootstrap.", "",
             markdown_table(CONTRAST_HEADER, rows)] + bullet_lines(pre["notes"]))


def diversity_markdown_lines(pre: dict[str, Any], table: dict[str, dict[str, Any]]) -> list[str]:
    """The diversity report's matched-perplexity table and its pre-registered contrasts section."""
    from esamp_sgl.eval.report import CONTRAST_HEADER, bullet_lines, contrast_row, markdown_table

    families = list(pre["families"])
    cell = lambda g: ("—" if g is None else "out of span" if g.get("out_of_span") else
                      f"{g['mean']:+.3f} ± {g['sem']:.3f} ({g['prompts']} prompts"
                      + (f", {g['prompts_out_of_span']} out of span" if g.get("prompts_out_of_span") else "") + ")")
    gain_rows = [[arm] + [cell(gains.get(f)) if f in gains else "(on the curve)" for f in families]
                 for arm, gains in table.items()]
    lines = ["", "## Vendi at matched perplexity (interpolated only)", "",
             "Each arm's Vendi minus each baseline family's curve at the arm's own NLL (log perplexity), per prompt, "
             "mean ± s.e. A family whose measured span does not hold the arm's mean NLL gives no number "
             "(\"out of span\"): curves are never extended past their points. Families: "
             + "; ".join(f"{f}: {', '.join(v)}" for f, v in pre["families"].items()) + ".", "",
             markdown_table(["arm"] + families, gain_rows)]
    rows = []
    for c in pre["registered"]:
        entry = pre["results"].get(c["label"])
        label = f"{c['label']} ({c['arm_name']} − {c['other_name']})"
        if entry is None:
            rows.append(contrast_row(label, None))
            continue
        for family, value in entry["matched"].items():
            mark = " [pre-registered]" if family == pre["matched_family"] else ""
            if value is None or "ci95_t" not in value:
                out = "out of span" if value and value.get("out_of_span") else "n/a"
                rows.append([f"{label}, Vendi vs {family}{mark}", out] + [""] * (len(CONTRAST_HEADER) - 2))
            else:
                rows.append(contrast_row(f"{label}, Vendi vs {family}{mark}", value))
        for metric in ("vendi", "nll", "cos_dist"):
            rows.append(contrast_row(f"{label}, raw Δ{metric}", entry["raw"].get(metric)))
    return lines + ["", "## Pre-registered contrasts (issue 20)", "",
                    "Fixed in `esamp_sgl/eval/paper.py: PREREGISTERED_CONTRASTS` before any run. Vendi at matched "
                    f"perplexity: the difference of the two arms' gains against one family's curve (pre-registered: "
                    f"{pre['matched_family']}), paired over prompts; 95 % intervals from the paired t test and a BCa "
                    "bootstrap. Raw paired differences beside them.", "",
                    markdown_table(CONTRAST_HEADER, rows)] + bullet_lines(pre["notes"])


def diversity_summary_lines(summary: dict[str, dict[str, Any]], arms: Sequence[Arm]) -> list[str]:
    """The paper's creative-table columns per arm: Vendi, mean pairwise cosine similarity, perplexity
    (exp of the mean per-token NLL under the base model, averaged over prompts first), and the profile."""
    import math

    from esamp_sgl.eval.report import fmt, markdown_table

    rows = []
    for a in arms:
        s = summary[a.name]
        nll, cos = s["nll"], s["cos_dist"]
        similarity = {"mean": 1.0 - cos["mean"], "sem": cos["sem"]} if not math.isnan(cos["mean"]) else None
        ppl = "n/a" if math.isnan(nll["mean"]) else f"{math.exp(nll['mean']):.2f}"
        rows.append([a.name, a.profile if a.needs_profile else "any", fmt(s["vendi"], 2), fmt(similarity), ppl,
                     fmt(nll)])
    return ["", "## The paper's columns", "",
            markdown_table(["arm", "profile", "Vendi", "mean pairwise cosine similarity", "perplexity", "NLL"], rows)]
