"""Bundled evaluation material, written for this project, and loaders for user files.

* `CREATIVE_PROMPTS`: 30 short open-ended prompts (the diversity evaluation's default).
* `arithmetic_tasks(count, difficulty, seed)`: few-shot arithmetic and word problems with exact
  integer answers. Difficulty 1–5 scales the numbers and operations; calibrated on
  SmolLM2-135M-Instruct so that its greedy accuracy is in the 20–60 % band where pass@k can move
  (measured numbers in docs/results/).
* `worked_tasks(count, difficulty, seed)`: word problems for a chat model that writes a short worked
  solution and ends with `Answer: <number>`; `extract_worked_answer` reads that line. Difficulty 1 is
  one step (gets more, gives away), 2–5 are two or three steps (items in groups, comparisons, prices
  and change, fair shares) with larger numbers. SmolLM2-135M-Instruct solves difficulty 1 in the
  band where pass@k can move and hardly solves 2 (measured numbers in docs/results.md).
* `TASK_DEFAULTS`: per generated task, the generation settings the pass@k CLI uses by default.
"""

from __future__ import annotations

import json
import random
import re
from fractions import Fraction
from pathlib import Path
from typing import Any, NamedTuple

from esamp_sgl.eval.public_tasks import HUMANEVAL_STOP, gsm8k_tasks, humaneval_tasks

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
    _check_generator_args(count, difficulty, shots)
    rng = random.Random(f"arithmetic-{difficulty}-{seed}")
    tasks = []
    for _ in range(count):
        examples = [_problem(rng, difficulty) for _ in range(shots)]
        question, answer = _problem(rng, difficulty)
        shown = "".join(f"Q: {q}\nA: {a}\n" for q, a in examples)
        tasks.append({"prompt": f"{shown}Q: {question}\nA:", "answer": str(answer), "question": question})
    return tasks


# -- worked solutions ----------------------------------------------------------------------------------
# (singular, plural) so a price can name one item and a purchase several.
_GOODS = (("notebook", "notebooks"), ("pencil", "pencils"), ("ticket", "tickets"), ("apple", "apples"),
          ("cup", "cups"), ("plant", "plants"), ("toy car", "toy cars"), ("sticker", "stickers"))
_CONTAINERS = ("boxes", "bags", "packs", "crates", "jars")
# difficulty: (smallest, largest plain number; smallest, largest group size or price), and the kinds.
_WORKED_NUMBERS = {1: (2, 9, 2, 5), 2: (2, 9, 2, 5), 3: (5, 20, 2, 9), 4: (10, 60, 2, 9), 5: (20, 200, 3, 15)}
_WORKED_KINDS = {1: ("add", "take"), 2: ("groups", "compare"), 3: ("groups", "compare", "price"),
                 4: ("groups", "compare", "price", "share"), 5: ("three_steps", "price", "share")}
WORKED_INSTRUCTION = ("Solve the problem. Write a short worked solution (one or two lines), then end with "
                      "a line 'Answer: <number>'.")


def _worked_problem(rng: random.Random, difficulty: int) -> tuple[str, str, int]:
    """One (question, worked solution ending in 'Answer: N', N); every answer a positive integer.
    add: a and b more; take: a + b, b given away; groups: g containers of k plus e loose; compare: a,
    and b more than a, together; price: change from a note after q items at p each; share: a + b
    shared equally by g; three_steps: groups, then some given away."""
    lo, hi, small_lo, small_hi = _WORKED_NUMBERS[difficulty]
    kind = rng.choice(_WORKED_KINDS[difficulty])
    name, other = rng.sample(_NAMES, 2)
    one, many = rng.choice(_GOODS)
    box = rng.choice(_CONTAINERS)
    g, k = rng.randint(small_lo, small_hi), rng.randint(small_lo, small_hi)
    a, b = rng.randint(lo, hi), rng.randint(lo, hi)
    if kind == "add":
        return (f"{name} has {a} {many} and gets {b} more. How many {many} does {name} have now?",
                f"{a} + {b} = {a + b}.", a + b)
    if kind == "take":
        return (f"{name} has {a + b} {many} and gives {b} away. How many {many} does {name} have left?",
                f"{a + b} − {b} = {a}.", a)
    if kind == "groups":
        return (f"{name} has {g} {box} with {k} {many} in each, and {a} more {many}. How many {many} "
                f"does {name} have?", f"{g} × {k} = {g * k}. {g * k} + {a} = {g * k + a}.", g * k + a)
    if kind == "compare":
        return (f"{name} has {a} {many}. {other} has {b} more {many} than {name}. How many {many} do they "
                f"have together?", f"{other} has {a} + {b} = {a + b}. {a} + {a + b} = {2 * a + b}.", 2 * a + b)
    if kind == "price":
        cost, change = g * k, rng.randint(1, hi)
        return (f"One {one} costs {k} dollars. {name} buys {g} {many} and pays with {cost + change} dollars. "
                f"How many dollars of change does {name} get?",
                f"{g} × {k} = {cost}. {cost + change} − {cost} = {change}.", change)
    if kind == "share":
        total = g * k
        first = rng.randint(1, total - 1)
        return (f"{name} has {first} {many} and gets {total - first} more, then shares them equally among "
                f"{g} friends. How many {many} does each friend get?",
                f"{first} + {total - first} = {total}. {total} ÷ {g} = {k}.", k)
    given = rng.randint(1, g * k + a - 1)
    return (f"{name} has {g} {box} with {k} {many} in each and {a} more {many}, then gives {given} away. "
            f"How many {many} does {name} have left?",
            f"{g} × {k} = {g * k}. {g * k} + {a} = {g * k + a}. {g * k + a} − {given} = {g * k + a - given}.",
            g * k + a - given)


def worked_tasks(count: int = 40, difficulty: int = 1, seed: int = 0, shots: int = 1) -> list[dict[str, Any]]:
    """`count` word problems for a chat model: {"prompt", "answer", "question", "solution",
    "extract": "answer_line"}. The prompt (to be wrapped in the chat template) gives the
    instruction, `shots` solved examples in the expected format, then the problem; verify with
    `extract_worked_answer` (what "extract": "answer_line" selects in the pass@k verifier)."""
    _check_generator_args(count, difficulty, shots)
    rng = random.Random(f"worked-{difficulty}-{seed}")
    tasks = []
    for _ in range(count):
        examples = [_worked_problem(rng, difficulty) for _ in range(shots)]
        question, solution, answer = _worked_problem(rng, difficulty)
        shown = "".join(f"Example problem: {q}\nExample solution: {s}\nAnswer: {n}\n\n" for q, s, n in examples)
        tasks.append({"prompt": f"{WORKED_INSTRUCTION}\n\n{shown}Problem: {question}", "answer": str(answer),
                      "question": question, "solution": f"{solution}\nAnswer: {answer}", "extract": "answer_line"})
    return tasks


_ANSWER_MARK = re.compile(r"answer\s*:", re.IGNORECASE)
_PLAIN_NUMBER = re.compile(r"[-−]?\d+(?:,\d{3})*(?:\.\d+)?(?:\s*/\s*\d+)?")


def worked_answer_text(text: str) -> str:
    """The part of a worked solution that holds its answer: the number right after the last
    'Answer:' (case-insensitive; '**Answer:** $1,200 total' → '1,200'), else — no marker, or no
    number after it — the whole text. The marker wins over later numbers because a worked
    solution's last number is often an intermediate or a restated quantity."""
    marks = list(_ANSWER_MARK.finditer(text))
    number = _PLAIN_NUMBER.search(text, marks[-1].end()) if marks else None
    return number.group() if number else text


def extract_worked_answer(text: str) -> Fraction | None:
    """The answer's value: the verifiers' `extract_number` on `worked_answer_text`, so without an
    'Answer:' number it is the text's last number (or its last \\boxed{}); None without any number."""
    from esamp_sgl.eval.verifiers import extract_number

    return extract_number(worked_answer_text(text))


def _check_generator_args(count: int, difficulty: int, shots: int) -> None:
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"difficulty must be one of {DIFFICULTIES}, got {difficulty!r}")
    if not 1 <= count <= 10_000:
        raise ValueError(f"count must be in [1, 10000], got {count}")
    if not 0 <= shots <= 8:
        raise ValueError(f"shots must be in [0, 8], got {shots}")


class TaskDefaults(NamedTuple):
    """How the pass@k CLI runs a generated task unless told otherwise."""
    max_tokens: int
    min_max_tokens: int  # fewer new tokens cannot hold the expected answer format
    stop: tuple[str, ...] | None
    chat: bool


TASK_DEFAULTS = {
    "arithmetic": TaskDefaults(max_tokens=8, min_max_tokens=1, stop=("\n",), chat=False),  # few-shot completion
    # a worked solution plus its 'Answer:' line; the chat model ends it with its end-of-turn token
    "worked": TaskDefaults(max_tokens=64, min_max_tokens=32, stop=None, chat=True),
    # public benchmarks (esamp_sgl.eval.public_tasks): a worked solution ending in \boxed{N}; a function
    # body continued from HumanEval's prompt, cut where a new top-level statement starts
    "gsm8k": TaskDefaults(max_tokens=256, min_max_tokens=32, stop=None, chat=True),
    "humaneval": TaskDefaults(max_tokens=384, min_max_tokens=16, stop=HUMANEVAL_STOP, chat=False),
}
PUBLIC_TASKS = ("gsm8k", "humaneval")
GENERATED_TASKS = tuple(TASK_DEFAULTS)
# How an answer task's text becomes its number: the last number (the verifiers' default) or the
# number after the last 'Answer:' line (worked solutions).
EXTRACTORS = ("last_number", "answer_line")
FILE_TASK_DEFAULTS = TaskDefaults(max_tokens=8, min_max_tokens=1, stop=None, chat=False)


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


def load_tasks(spec: str, count: int = 40, difficulty: int = 3, seed: int = 0,
               split: str = "dev") -> list[dict[str, Any]]:
    """'arithmetic' or 'worked' (generated), 'gsm8k' or 'humaneval' (the first `count` of `split`,
    esamp_sgl.eval.public_tasks) or a JSONL file with `prompt` and `answer` (exact number)
    or `tests` (a list of Python test snippets for the sandboxed code verifier); an answer task may
    set "extract": "answer_line" to be verified by `extract_worked_answer`."""
    if spec in PUBLIC_TASKS:
        return {"gsm8k": gsm8k_tasks, "humaneval": humaneval_tasks}[spec](count, split)  # type: ignore[arg-type]
    if spec in GENERATED_TASKS:
        return {"arithmetic": arithmetic_tasks, "worked": worked_tasks}[spec](count, difficulty, seed)
    path = Path(spec)
    if not path.is_file():
        allowed = ", ".join(f"'{t}'" for t in GENERATED_TASKS)
        raise ValueError(f"--task must be one of {allowed} or an existing JSONL file, got {spec!r}")
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
        if task.get("extract", "last_number") not in EXTRACTORS or ("extract" in task and "answer" not in task):
            raise ValueError(f"{path}:{number}: 'extract' must be one of {EXTRACTORS} and needs 'answer', "
                             f"got {task.get('extract')!r}")
        if "tests" in task and not (isinstance(task["tests"], list)
                                    and all(isinstance(t, str) for t in task["tests"])):
            raise ValueError(f"{path}:{number}: 'tests' must be a list of strings")
        tasks.append(task)
    if not tasks:
        raise ValueError(f"{path} has no tasks")
    return tasks
