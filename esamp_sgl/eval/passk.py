"""`esamp-sgl eval passk`: n samples per task and arm (one request → one fork group), verified by
the programs' verifiers (exact numeric answer, or Python tests in the sandbox); unbiased pass@k,
distinct answers, distinct correct answers and majority-vote accuracy; greedy accuracy as the
calibration reference (the task is only informative where it is neither ~0 nor ~1).

Pre-registered "do no harm" check (`preregistered`): the default ESamp arm (arms.PRIMARY_ARM, or
`--primary`) minus stock sampling at the same T and filters, paired over tasks, in pass@16 and in
distinct answers, with 95 % intervals (paired t and bootstrap)."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence

import numpy as np

from esamp_sgl.eval import analysis
from esamp_sgl.eval.arms import Arm
from esamp_sgl.eval.client import ServerClient
from esamp_sgl.eval.journal import PassKJournal, job_key
from esamp_sgl.eval.metrics import mean_and_sem, pass_at_k
from esamp_sgl.eval.tasks import worked_answer_text


def answer_text(task: dict[str, Any], text: str) -> str:
    """Where an answer task's number is read: the 'Answer:' line for "extract": "answer_line"
    (worked solutions), else the whole text (its last number)."""
    return worked_answer_text(text) if task.get("extract") == "answer_line" else text


def verifier_for(task: dict[str, Any]):
    from esamp_sgl.eval.verifiers import MathAnswerVerifier, PythonTestsVerifier

    if "answer" not in task:  # "code_prefix": a completion task (HumanEval) whose prompt the answer continues
        return PythonTestsVerifier(task["tests"], prefix=task.get("code_prefix", ""))
    verify = MathAnswerVerifier(task["answer"])
    return lambda text: verify(answer_text(task, text))


def _answer_key(task: dict[str, Any], text: str) -> str:
    """What counts as 'the same answer' for distinct-answer counts: the extracted number for math
    tasks, the stripped text for code."""
    if "answer" in task:
        from esamp_sgl.eval.verifiers import extract_number

        value = extract_number(answer_text(task, text))
        return "none" if value is None else str(value)
    return " ".join(text.split())


def run(client: ServerClient, tasks: Sequence[dict[str, Any]], prompt_ids: Sequence[list[int]],
        arms: Sequence[Arm], n: int, max_tokens: int, stop: Sequence[str] | None, concurrency: int,
        progress: Callable[[], None] | None = None, ks: Sequence[int] | None = None,
        journal: "PassKJournal | None" = None) -> dict[str, Any]:
    """ks: the k of pass@k (default: powers of 2 up to n). journal: every finished job is appended to
    it as it completes, and a job it already holds (same key) is not generated again (`--resume`)."""
    verifiers = [verifier_for(t) for t in tasks]
    jobs = [(t, arm) for t in range(len(tasks)) for arm in arms] + [(t, None) for t in range(len(tasks))]

    def job(item: tuple[int, Arm | None]) -> tuple[int, str, list[str]]:
        t, arm = item
        if arm is None:  # greedy reference
            params, name, count = {"temperature": 0.0}, "greedy", 1
        else:
            params, name, count = arm.sampling_params(), arm.name, n
        key = job_key(t, name, prompt_ids[t], count, max_tokens, stop)
        texts = journal.finished(key) if journal is not None else None
        if texts is None:
            gen = client.generate(prompt_ids[t], count, max_tokens, params, stop=stop)
            texts = [s.text for s in gen.samples]
            if journal is not None:
                journal.record(key, texts)
        if progress:
            progress()
        return t, name, texts

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        outputs = list(pool.map(job, jobs))
    per_task: dict[str, dict[int, dict[str, Any]]] = {}
    for t, name, texts in outputs:
        verdicts = [verifiers[t](x) for x in texts]
        keys = [_answer_key(tasks[t], x) for x in texts]
        per_task.setdefault(name, {})[t] = {
            "texts": texts, "passed": [v.passed for v in verdicts], "answers": keys,
            "correct": sum(v.passed for v in verdicts),
            "distinct_answers": len(set(keys)),
            "distinct_correct": len({k for k, v in zip(keys, verdicts) if v.passed}),
            "majority_correct": bool(verdicts[keys.index(Counter(keys).most_common(1)[0][0])].passed),
        }
    ks = list(ks) if ks else [k for k in (1, 2, 4, 8, 16, 32, 64) if k <= n]
    summary = {}
    for arm in arms:
        rows = per_task[arm.name]
        summary[arm.name] = {
            "pass_at_k": {k: _ms([pass_at_k(n, rows[t]["correct"], k) for t in rows]) for k in ks},
            "distinct_answers": _ms([rows[t]["distinct_answers"] for t in rows]),
            "distinct_correct": _ms([rows[t]["distinct_correct"] for t in rows]),
            "majority_vote_accuracy": _ms([float(rows[t]["majority_correct"]) for t in rows]),
        }
    greedy = per_task["greedy"]
    return {"ks": ks, "greedy_accuracy": float(np.mean([greedy[t]["correct"] for t in greedy])),
            "summary": summary, "per_task": per_task}


PRIMARY_K = 16  # the pre-registered pass@k (smaller n: k = n)


def preregistered(result: dict[str, Any], arms: Sequence[Arm], primary: Arm, n: int) -> dict[str, Any]:
    """The "do no harm" check: the primary ESamp arm minus stock sampling at its T and filters, paired
    over tasks, in pass@PRIMARY_K (k = n when n is smaller) and in distinct answers, with the
    same statistics as the diversity contrasts (analysis.paired_contrast: 95 % t and bootstrap
    intervals, p, win rate). Null with the reason in `notes` when either arm was not run."""
    baseline = Arm(kind="stock", temperature=primary.temperature, top_p=primary.top_p, min_p=primary.min_p)
    k = min(PRIMARY_K, n)
    out: dict[str, Any] = {"primary_arm": primary.name, "baseline_arm": baseline.name, "k": k,
                           "pass_at_k": None, "distinct_answers": None, "notes": []}
    missing = [a.name for a in (primary, baseline) if a.name not in {x.name for x in arms}]
    if missing:
        out["notes"].append(f"not among the arms run: {', '.join(missing)}")
        return out
    rows = {name: result["per_task"][name] for name in (primary.name, baseline.name)}
    per_task = lambda name, value: {t: value(row) for t, row in rows[name].items()}
    for key, value in (("pass_at_k", lambda row: pass_at_k(n, row["correct"], k)),
                       ("distinct_answers", lambda row: float(row["distinct_answers"]))):
        out[key] = analysis.paired_contrast(per_task(primary.name, value), per_task(baseline.name, value))
    return out


def _ms(values: Sequence[float]) -> dict[str, float]:
    mean, sem = mean_and_sem(values)
    return {"mean": mean, "sem": sem}
