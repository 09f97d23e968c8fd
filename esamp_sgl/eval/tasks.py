"""Bundled evaluation material, written for this project, and loaders for user files.

* `CREATIVE_PROMPTS`: 30 short open-ended prompts (the diversity evaluation's default).
* `arithmetic_tasks(count, difficulty, seed)`: few-shot arithmetic and word problems with exact
  integer answers. Difficulty 1–5 scales the numbers and operations; calibrated on
  SmolLM2-135M-Instruct so that its greedy accuracy is in the 20–60 % band where pass@k can move
  (measured numbers in docs/results/).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

CREATIVE_PROMPTS = (
    "Invent a name and a one-line description for a new board game.",
    "Write the first sentence of a story about a lighthouse keeper.",
    "Describe a color to someone who has never seen it.",
    "Suggest an unusual hobby and say why someone might love it.",
    "Write a two-line poem about rain on a tin roof.",
    "Invent a new holiday and describe how people celebrate it.",
    "Give a creative name for a coffee shop run by cats.",
    "Describe the taste of a fruit that does not exist.",
    "Write the opening line of a letter from a time traveler.",
    "Propose a strange but harmless law for a small town.",
    "Describe a city in the year 3000 in two sentences.",
    "Invent a superhero whose power is slightly useless.",
    "Write a riddle whose answer is 'a shadow'.",
    "Suggest a title for a mystery novel set on a train.",
    "Describe a dream you might have after eating too much cheese.",
    "Invent a sport that can be played in zero gravity.",
    "Write a short motto for a school for dragons.",
    "Describe the sound of a forest at midnight.",
    "Give advice from a wise old tree to a young sapling.",
    "Invent a musical instrument and describe how it sounds.",
    "Write a one-sentence horror story about a teapot.",
    "Describe a robot's first day at a bakery.",
    "Name a planet and describe its strangest animal.",
    "Write a toast for the wedding of two penguins.",
    "Invent a flavor of ice cream and describe who would order it.",
    "Describe an old map that leads somewhere unexpected.",
    "Write a haiku about a lost umbrella.",
    "Suggest a plot twist for a story about a missing sock.",
    "Describe a market where people trade memories.",
    "Invent a word and give its definition.",
)

DIFFICULTIES = (1, 2, 3, 4, 5)
_NAMES = ("Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Goran", "Hana", "Ivo", "Juno")
_ITEMS = ("apples", "stamps", "marbles", "books", "shells", "coins", "pencils", "cards")


def _problem(rng: random.Random, difficulty: int) -> tuple[str, int]:
    """One (question, answer). 1: 1-digit sums; 2: 2-digit sums/differences; 3: adds word problems
    and 1-digit products; 4: 3-digit sums/differences and 2-digit x 1-digit; 5: three-term mixes."""
    digits = {1: (1, 9), 2: (10, 99), 3: (10, 99), 4: (100, 999), 5: (10, 99)}[difficulty]
    a, b = rng.randint(*digits), rng.randint(*digits)
    kinds = ["plus"] if difficulty == 1 else ["plus", "minus"]
    if difficulty >= 3:
        kinds += ["times", "word_more", "word_less"]
    if difficulty == 5:
        kinds = ["three", "word_three", "times"]
    kind = rng.choice(kinds)
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    if kind == "plus":
        return f"What is {a} plus {b}?", a + b
    if kind == "minus":
        a, b = max(a, b), min(a, b)
        return f"What is {a} minus {b}?", a - b
    if kind == "times":
        b = rng.randint(2, 9)
        a = rng.randint(2, 9) if difficulty == 3 else a
        return f"What is {a} times {b}?", a * b
    if kind == "word_more":
        return f"{name} has {a} {item} and gets {b} more. How many {item} does {name} have now?", a + b
    if kind == "word_less":
        a, b = max(a, b), min(a, b)
        return f"{name} has {a} {item} and gives away {b}. How many {item} are left?", a - b
    c = rng.randint(*digits)
    if kind == "three":
        return f"What is {a} plus {b} minus {c}?", a + b - c
    return (f"{name} has {a} {item}, buys {b} more and then loses {c}. How many {item} does {name} "
            f"have?", a + b - c)


def arithmetic_tasks(count: int = 40, difficulty: int = 3, seed: int = 0, shots: int = 3) -> list[dict[str, Any]]:
    """`count` few-shot completion problems: {"prompt", "answer", "question"}. The prompt shows
    `shots` worked examples ("Q: ...\\nA: 109\\n") and ends with "A:"; generate with stop "\\n"."""
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"difficulty must be one of {DIFFICULTIES}, got {difficulty!r}")
    if not 1 <= count <= 10_000:
        raise ValueError(f"count must be in [1, 10000], got {count}")
    rng = random.Random(f"arithmetic-{difficulty}-{seed}")
    tasks = []
    for _ in range(count):
        examples = [_problem(rng, difficulty) for _ in range(shots)]
        question, answer = _problem(rng, difficulty)
        shown = "".join(f"Q: {q}\nA: {a}\n" for q, a in examples)
        tasks.append({"prompt": f"{shown}Q: {question}\nA:", "answer": str(answer), "question": question})
    return tasks


def load_prompts(spec: str) -> list[str]:
    """'creative' (the bundled list) or a file: one prompt per line, or JSONL with a `prompt` field."""
    if spec == "creative":
        return list(CREATIVE_PROMPTS)
    path = Path(spec)
    if not path.is_file():
        raise ValueError(f"--prompts must be 'creative' or an existing file, got {spec!r}")
    prompts = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        if line.lstrip().startswith("{"):
            try:
                prompt = json.loads(line)["prompt"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{number}: a JSON line needs a string 'prompt' field ({exc})") from None
            if not isinstance(prompt, str):
                raise ValueError(f"{path}:{number}: 'prompt' must be a string")
            prompts.append(prompt)
        else:
            prompts.append(line.strip())
    if not prompts:
        raise ValueError(f"{path} has no prompts")
    return prompts


def load_tasks(spec: str, count: int = 40, difficulty: int = 3, seed: int = 0) -> list[dict[str, Any]]:
    """'arithmetic' (generated) or a JSONL file with `prompt` and `answer` (exact number) or
    `tests` (a list of Python test snippets for the sandboxed code verifier)."""
    if spec == "arithmetic":
        return arithmetic_tasks(count, difficulty, seed)
    path = Path(spec)
    if not path.is_file():
        raise ValueError(f"--task must be 'arithmetic' or an existing JSONL file, got {spec!r}")
    tasks = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            task = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{number}: not JSON ({exc})") from None
        if not isinstance(task, dict) or not isinstance(task.get("prompt"), str):
            raise ValueError(f"{path}:{number}: needs a string 'prompt'")
        if ("answer" in task) == ("tests" in task):
            raise ValueError(f"{path}:{number}: needs exactly one of 'answer' or 'tests'")
        if "tests" in task and not (isinstance(task["tests"], list)
                                    and all(isinstance(t, str) for t in task["tests"])):
            raise ValueError(f"{path}:{number}: 'tests' must be a list of strings")
        tasks.append(task)
    if not tasks:
        raise ValueError(f"{path} has no tasks")
    return tasks
