"""`esamp-sgl eval diversity`: n samples per prompt and arm through the real server; diversity
(Vendi, pairwise cosine distance over MiniLM embeddings, distinct-n) against quality (NLL under the
base model, within-sample repetition, on-topic similarity), as curves at matched NLL.

Every arm runs against the same server in one run, jobs interleaved (replicate → prompt → arms in a
rotating order) and several in flight, so arms share batches and machine noise. Common random
numbers across arms are not available: SGLang 0.5.23 honours a per-request `sampling_seed` only
under --enable-deterministic-inference and refuses it with min-p, and ESamp draws from one server
generator. Replicates and per-prompt pairing carry the comparison instead.

Pre-registered contrast (`preregistered`): the default ESamp arm (arms.PRIMARY_ARM, or `--primary`)
against the strongest of the baseline families (stock T sweep, temperature after truncation, the
presence penalty) at matched NLL; the trained-vs-frozen and ESamp-vs-random-prior controls through
the same code.
"""

from __future__ import annotations

import json
import math
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from esamp_sgl.eval import analysis
from esamp_sgl.eval.arms import PRIMARY_ARM, Arm, parse_arm
from esamp_sgl.eval.client import Generation, ServerClient
from esamp_sgl.eval.metrics import distinct_n, mean_pairwise_cosine_distance, repetition_rate, vendi_score

METRICS = ("vendi", "cos_dist", "distinct_1", "distinct_2", "distinct_3", "nll", "rep3", "length",
           "eos_rate", "on_topic")
TELEMETRY_FIELDS = ("steps_trained", "mean_loss", "r2", "corr_d_z")


def generate_all(client: ServerClient, prompt_ids: Sequence[list[int]], arms: Sequence[Arm], n: int,
                 max_tokens: int, replicates: int, concurrency: int,
                 progress: Callable[[], None] | None = None, journal: Path | None = None) -> list[dict[str, Any]]:
    """One job per (replicate, prompt, arm): generate n samples, score their NLL. With `journal`,
    every finished job is appended to that JSONL file at once, and jobs already in it are not run
    again (an interrupted run resumes; the replicate-major order makes a partial run balanced)."""
    done: dict[tuple[int, int, str], dict[str, Any]] = {}
    if journal is not None and journal.exists():
        for line in journal.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                done[(r["replicate"], r["prompt"], r["arm"])] = r
    jobs = []
    for rep in range(replicates):
        for p in range(len(prompt_ids)):
            shift = (rep * len(prompt_ids) + p) % len(arms)  # rotate so no arm always goes first
            jobs += [(rep, p, arm) for arm in list(arms[shift:]) + list(arms[:shift])
                     if (rep, p, arm.name) not in done]
    lock = threading.Lock()

    def run(job: tuple[int, int, Arm]) -> dict[str, Any]:
        rep, p, arm = job
        gen: Generation = client.generate(prompt_ids[p], n, max_tokens, arm.sampling_params())
        nlls = client.nll(prompt_ids[p], [s.output_ids for s in gen.samples])
        result = {"arm": arm.name, "replicate": rep, "prompt": p,
                  "texts": [s.text for s in gen.samples],
                  "output_ids": [s.output_ids for s in gen.samples],
                  "finish": [s.finish for s in gen.samples], "sample_nll": nlls,
                  "telemetry": gen.telemetry}
        if journal is not None:
            with lock, journal.open("a") as f:
                f.write(json.dumps(result) + "\n")
        if progress:
            progress()
        return result

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        fresh = list(pool.map(run, jobs))
    return list(done.values()) + fresh


def score(results: list[dict[str, Any]], prompts: Sequence[str], embed: Callable[[Sequence[str]], np.ndarray]) -> list[dict[str, Any]]:
    """Per-(arm, replicate, prompt) metric records."""
    texts = [t.strip() for r in results for t in r["texts"]]
    vectors = embed(texts) if texts else np.zeros((0, 384))
    prompt_vectors = embed(list(prompts))
    records, offset = [], 0
    for r in results:
        k = len(r["texts"])
        e = vectors[offset:offset + k]
        offset += k
        clean = [t.strip() for t in r["texts"]]
        nlls = [x for x in r["sample_nll"] if not math.isnan(x)]
        record = {
            "arm": r["arm"], "replicate": r["replicate"], "prompt": r["prompt"],
            "vendi": vendi_score(e), "cos_dist": mean_pairwise_cosine_distance(e),
            **{f"distinct_{i}": distinct_n(clean, i) for i in (1, 2, 3)},
            "nll": float(np.mean(nlls)) if nlls else math.nan,
            "rep3": float(np.mean([repetition_rate(ids, 3) for ids in r["output_ids"]])),
            "length": float(np.mean([len(ids) for ids in r["output_ids"]])),
            "eos_rate": float(np.mean([f == "stop" for f in r["finish"]])),
            "on_topic": float(np.mean(e @ prompt_vectors[r["prompt"]])),
        }
        t = r.get("telemetry") or {}
        record.update({f"esamp_{f}": t.get(f) for f in TELEMETRY_FIELDS if t})
        records.append(record)
    return records


# The baselines ESamp must beat, each a curve: the temperature sweep, temperature after truncation
# (a sweep of T'), and the sibling-aware presence penalty (a β sweep).
BASELINE_KINDS = ("stock", "tat", "presence")
# Control kind -> (the ESamp rule it is paired with; None: the control's own rule), what the pair isolates.
_CONTROLS = {"frozen": (None, "test-time training"),
             "random": ("compensated", "the Distiller's d vs a random prior"),
             "sharpen": ("contrastive", "the Distiller's d vs d = 0")}
PREREGISTERED_CONTROLS = ("frozen", "random")


def analyze(records: list[dict[str, Any]], arms: Sequence[Arm], primary: Arm | None = None) -> dict[str, Any]:
    """primary: the arm of the pre-registered contrast (default: arms.PRIMARY_ARM)."""
    names = [a.name for a in arms]
    families: dict[str, list[str]] = {}
    for a in arms:
        families.setdefault(a.family, []).append(a.name)
    references = {f: v for f, v in families.items() if f.startswith("stock") and len(v) >= 2}
    out: dict[str, Any] = {
        "summary": analysis.summarize(records, names, METRICS + tuple(f"esamp_{f}" for f in TELEMETRY_FIELDS)),
        "families": families,
        "matched_nll_gain": {},
        "contrasts": {},
    }
    for metric in ("vendi", "cos_dist", "distinct_2", "rep3", "on_topic"):
        for family, ref_arms in references.items():
            gains = {}
            for arm in names:
                if arm in ref_arms:
                    continue
                g = analysis.matched_gain(records, arm, ref_arms, metric=metric)
                if g is not None:
                    gains[arm] = g
            out["matched_nll_gain"].setdefault(metric, {})[family] = gains
    points = {a: (out["summary"][a]["nll"]["mean"], out["summary"][a]["vendi"]["mean"]) for a in names}
    out["pareto_front"] = analysis.pareto_front(points)
    out["contrasts"] = _contrasts(records, arms, out)
    out["preregistered"] = preregistered(records, arms, primary or parse_arm(PRIMARY_ARM))
    return out


def baseline_families(arms: Sequence[Arm], like: Arm) -> dict[str, list[str]]:
    """{family: arm names} of the baseline kinds under `like`'s filters (and, for the kinds that sweep
    something other than T, at its T): the curves `like` is compared against at matched NLL.

    A family that sweeps a strength (tat's Tp, presence's β) starts at strength 0, which *is* stock
    sampling at its T and filters: that stock arm, when run, is the family's first point. Without it
    the curve is only read off its own arms, and per prompt two nearby points extrapolated to an
    ESamp arm's lower NLL give meaningless values."""
    out: dict[str, list[str]] = {}
    for a in arms:
        if a.kind in BASELINE_KINDS and (a.min_p, a.top_p) == (like.min_p, like.top_p) \
                and (a.kind == "stock" or a.temperature == like.temperature):
            out.setdefault(a.family, []).append(a.name)
    anchor = next((a.name for a in arms if a.kind == "stock" and a.temperature == like.temperature
                   and (a.min_p, a.top_p) == (like.min_p, like.top_p)), None)
    if anchor is not None:
        for family, names in out.items():
            if not family.startswith("stock") and anchor not in names:
                names.insert(0, anchor)
    return out


def control_pairs(arms: Sequence[Arm], kinds: Sequence[str] = tuple(_CONTROLS)) -> list[tuple[Arm, Arm, str]]:
    """(ESamp arm, its control of one of `kinds` at the same T/filters/β, what the pair isolates)."""
    settings = lambda a: (a.temperature, a.top_p, a.min_p, a.beta)
    pairs = []
    for control in arms:
        if control.kind not in kinds:
            continue
        rule, what = _CONTROLS[control.kind]
        pairs += [(a, control, what) for a in arms if a.kind == "esamp" and a.rule == (rule or control.rule)
                  and settings(a) == settings(control)]
    return pairs


def preregistered(records: list[dict[str, Any]], arms: Sequence[Arm], primary: Arm,
                  metric: str = "vendi") -> dict[str, Any]:
    """The pre-registered analysis: the primary arm's Vendi at matched NLL minus the strongest baseline
    family's curve (analysis.matched_contrast; conservative), and, through the same code, the
    secondary contrasts trained − frozen and ESamp − random prior (difference of their gains against
    the strongest family's curve). A contrast that cannot be computed (arm not run, no baseline curve)
    is null, with the reason in `notes`."""
    names = {a.name for a in arms}
    out: dict[str, Any] = {"primary_arm": primary.name, "metric": metric, "quality": "nll",
                           "baseline_families": baseline_families(arms, primary), "primary": None,
                           "secondary": {}, "notes": []}
    if primary.name not in names:
        out["notes"].append(f"primary arm {primary.name} is not among the arms run")
    else:
        out["primary"] = analysis.matched_contrast(records, primary.name, out["baseline_families"], metric=metric)
        if out["primary"] is None:
            out["notes"].append(f"primary: no baseline family has a curve (>= 2 arms) on the prompts of "
                                f"{primary.name}; families: {sorted(out['baseline_families'])}")
    for a, control, what in control_pairs(arms, PREREGISTERED_CONTROLS):
        label = f"{a.name} − {control.name} ({what})"
        out["secondary"][label] = analysis.matched_contrast(records, a.name, baseline_families(arms, a),
                                                            other=control.name, metric=metric)
        if out["secondary"][label] is None:
            out["notes"].append(f"{label}: no baseline curve to match NLL against")
    return out


def _contrasts(records: list[dict[str, Any]], arms: Sequence[Arm], result: dict[str, Any]) -> dict[str, Any]:
    """The mechanism checks (paired raw differences): trained vs frozen, Distiller vs random prior,
    Distiller vs d = 0; and the best ESamp arm vs the best sibling baseline at matched NLL."""
    by_name = {a.name: a for a in arms}
    contrasts: dict[str, Any] = {}
    for a, control, what in control_pairs(arms):
        contrasts[f"{a.name} − {control.name} ({what})"] = {
            m: analysis.paired_difference(records, a.name, control.name, m)
            for m in ("vendi", "nll", "distinct_2", "rep3")}
    # Best ESamp arm vs best sibling-penalty arm by matched-NLL Vendi gain (same reference curve).
    gains = result["matched_nll_gain"].get("vendi", {})
    for family, table in gains.items():
        best = {}
        for kind in ("esamp", "presence", "frequency"):
            cands = [(g["mean"], n) for n, g in table.items() if by_name[n].kind == kind and not g["out_of_span"]]
            if cands:
                best[kind] = max(cands)[1]
        baselines = [best[k] for k in ("presence", "frequency") if k in best]
        if "esamp" in best and baselines:
            base = max(baselines, key=lambda n: table[n]["mean"])
            diff = analysis.paired_contrast(table[best["esamp"]]["per_prompt"], table[base]["per_prompt"])
            contrasts[f"best ESamp ({best['esamp']}) − best sibling baseline ({base}), Vendi gain vs {family}"] = diff
    return contrasts
