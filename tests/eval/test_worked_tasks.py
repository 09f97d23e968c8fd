"""The worked-solution pass@k task: generator (deterministic, correct answers) and answer extraction."""

from __future__ import annotations

import re
from fractions import Fraction

import pytest

from esamp_sgl.eval.passk import _answer_key, verifier_for
from esamp_sgl.eval.tasks import extract_worked_answer, load_tasks, worked_tasks

# Each template's numbers, read back from the question, and the answer they imply.
_TEMPLATES = [
    (r"has (\d+) [^.]+ and gets (\d+) more\. How many", lambda a, b: a + b),
    (r"has (\d+) [^.]+ and gives (\d+) away\. How many", lambda a, b: a - b),
    (r"has (\d+) \w+ with (\d+) .+ in each, and (\d+) more", lambda g, k, a: g * k + a),
    (r"has (\d+) [^.]+\. \w+ has (\d+) more", lambda a, b: 2 * a + b),
    (r"costs (\d+) dollars\. \w+ buys (\d+) .+ pays with (\d+) dollars", lambda p, q, paid: paid - p * q),
    (r"has (\d+) .+ gets (\d+) more, then shares them equally among (\d+) friends",
     lambda a, b, g: Fraction(a + b, g)),
    (r"has (\d+) \w+ with (\d+) .+ in each and (\d+) more .+ gives (\d+) away", lambda g, k, a, c: g * k + a - c),
]
_STEP = re.compile(r"(\d+) ([×+−÷]) (\d+) = (\d+)")
_OPS = {"×": lambda a, b: a * b, "+": lambda a, b: a + b, "−": lambda a, b: a - b, "÷": lambda a, b: Fraction(a, b)}


def _implied_answer(question: str) -> Fraction:
    for pattern, answer in _TEMPLATES:
        if m := re.search(pattern, question):
            return Fraction(answer(*map(int, m.groups())))
    raise AssertionError(f"no template matches {question!r}")


@pytest.mark.parametrize("difficulty", [1, 2, 3, 4, 5])
def test_worked_answers_are_correct_positive_integers_and_reproducible(difficulty):
    tasks = worked_tasks(40, difficulty, seed=7)
    assert tasks == worked_tasks(40, difficulty, seed=7)
    assert tasks != worked_tasks(40, difficulty, seed=8)
    for t in tasks:
        answer = int(t["answer"])
        assert answer > 0 and _implied_answer(t["question"]) == answer, t["question"]
        steps = _STEP.findall(t["solution"])
        assert steps and all(_OPS[op](int(a), int(b)) == int(c) for a, op, b, c in steps), t["solution"]
        assert t["solution"].endswith(f"\nAnswer: {answer}") and extract_worked_answer(t["solution"]) == answer
        assert t["prompt"].endswith(f"Problem: {t['question']}") and "Answer: <number>" in t["prompt"]
        assert t["extract"] == "answer_line"


def test_worked_difficulty_scales_the_numbers_and_shots():
    biggest = lambda d: max(int(x) for t in worked_tasks(40, d, seed=0) for x in re.findall(r"\d+", t["question"]))
    assert biggest(1) <= 18 < biggest(4)
    assert all(len(_STEP.findall(t["solution"])) == 1 for t in worked_tasks(40, 1, seed=0))  # one step
    assert all(len(_STEP.findall(t["solution"])) >= 2 for t in worked_tasks(40, 2, seed=0))
    assert "Example problem" not in worked_tasks(1, 1, shots=0)[0]["prompt"]
    assert worked_tasks(1, 1, shots=2)[0]["prompt"].count("Example problem") == 2
    assert len(load_tasks("worked", count=5, difficulty=2, seed=1)) == 5
    with pytest.raises(ValueError, match="difficulty"):
        worked_tasks(3, 0)
    with pytest.raises(ValueError, match="shots"):
        worked_tasks(3, 1, shots=9)


@pytest.mark.parametrize("text,want", [
    ("3 × 4 = 12. 12 + 5 = 17.\nAnswer: 17", 17),
    ("Answer: 17 apples, because 12 + 5 = 17 and 2 more", 17),  # the number right after the marker
    ("First guess. Answer: 4\nWait, 3 + 9 = 12.\nAnswer: 12", 12),  # the last marker wins
    ("**Answer:** $1,200", 1200),
    ("answer : −3", -3),
    ("12 + 5 = 17, so she has 17 apples.", 17),  # no marker: the last number
    ("Answer: I am not sure, maybe 6", 6),
    ("Answer: unknown", None),
    ("", None),
    ("The total is \\boxed{42}. It took 3 steps.", 42),  # no marker: the verifiers' rule, boxed first
])
def test_extract_worked_answer(text, want):
    assert extract_worked_answer(text) == (None if want is None else Fraction(want))


def test_answer_line_tasks_are_verified_and_keyed_by_the_answer_line():
    task = {"prompt": "p", "answer": "17", "extract": "answer_line"}
    verify = verifier_for(task)
    assert verify("12 + 5 = 17.\nAnswer: 17\nThat was 2 steps.").passed
    assert not verify("Answer: 12\n17 is wrong").passed
    assert _answer_key(task, "Answer: 17 (12 + 5)") == "17"
    plain = {"prompt": "p", "answer": "5"}
    assert not verifier_for(plain)("Answer: 5, that is 2 + 3").passed  # the default reads the last number


def test_task_files_accept_only_known_extractors(tmp_path):
    f = tmp_path / "t.jsonl"
    f.write_text('{"prompt": "p", "answer": "3", "extract": "answer_line"}\n')
    assert load_tasks(str(f))[0]["extract"] == "answer_line"
    f.write_text('{"prompt": "p", "answer": "3", "extract": "first"}\n')
    with pytest.raises(ValueError, match="'extract' must be one of"):
        load_tasks(str(f))
    with pytest.raises(ValueError, match="--task must be one of 'arithmetic', 'worked'"):
        load_tasks("nope")
