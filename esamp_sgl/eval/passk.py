"""`esamp-sgl eval passk`: n samples per task and arm (one request → one fork group), verified by
the programs' verifiers (exact numeric answer, or Python tests in the sandbox); unbiased pass@k,
distinct answers, distinct correct answers and majority-vote accuracy; greedy accuracy as the
calibration reference (the task is only informative where it is neither ~0 nor ~1)."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence

import numpy as np

from esamp_sgl.eval.arms import Arm
from esamp_sgl.eval.client import ServerClient
from esamp_sgl.eval.metrics import mean_and_sem, pass_at_k


def verifier_for(task: dict[str, Any]):
    from programs.verifiers import MathAnswerVerifier, PythonTestsVerifier

    return MathAnswerVerifier(task["answer"]) if "answer" in task else PythonTestsVerifier(task["tests"])


def _answer_key(task: dict[str, Any], text: str) -> str:
    """What counts as 'the same answer' for distinct-answer counts: the extracted number for math
    tasks, the stripped text for code."""
    if "answer" in task:
        from programs.verifiers import extract_number

        value = extract_number(text)
        return "none" if value is None else str(value)
    return " ".join(text.split())


def run(client: ServerClient, tasks: Sequence[dict[str, Any]], prompt_ids: Sequence[list[int]],
        arms: Sequence[Arm], n: int, max_tokens: int, stop: Sequence[str] | None, concurrency: int,
        progress: Callable[[], None] | None = None, ks: Sequence[int] | None = None) -> dict[str, Any]:
    """ks: the k of pass@k (default: powers of 2 up to n)."""
    verifiers = [verifier_for(t) for t in tasks]
    jobs = [(t, arm) for t in range(len(tasks)) for arm in arms] + [(t, None) for t in range(len(tasks))]

    def job(item: tuple[int, Arm | None]) -> tuple[int, str, list[str]]:
        t, arm = item
        if arm is None:  # greedy reference
            params, name, count = {"temperature": 0.0}, "greedy", 1
        else:
            params, name, count = arm.sampling_params(), arm.name, n
        gen = client.generate(prompt_ids[t], count, max_tokens, params, stop=stop)
        if progress:
            progress()
        return t, name, [s.text for s in gen.samples]

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


def _ms(values: Sequence[float]) -> dict[str, float]:
    mean, sem = mean_and_sem(values)
    return {"mean": mean, "sem": sem}
