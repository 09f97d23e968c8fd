"""Verifiers: score a candidate answer. A verifier is any callable `(answer: str) -> Verdict`.

* `MathAnswerVerifier(expected)`: exact-answer math. The answer's value is the content of its last
  `\\boxed{...}` if it has one, else its last number; numbers may carry signs (`-`, `−`), thousands
  commas (`1,234`), decimals (`0.75`) or be fractions (`3/4`, `\\frac{3}{4}`). It must equal
  `expected` exactly (compared as `fractions.Fraction`, so `0.75 == 3/4`).
* `PythonTestsVerifier(tests)`: a code answer. Its code is the last fenced ```python block (else
  the last fenced block, else the whole answer); it runs with each test snippet in the sandbox of
  `esamp_sgl.eval.sandbox` (resource limits, timeout that kills the process tree, no network). Score =
  fraction of tests passed; passed = all of them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable, Sequence, Union

from esamp_sgl.eval.sandbox import SandboxLimits, run_python_tests


@dataclass(frozen=True)
class Verdict:
    score: float  # in [0, 1]; best_of_n picks the highest
    passed: bool
    detail: str


Verifier = Callable[[str], Verdict]

# -- math --------------------------------------------------------------------------------------------
_MINUS = "\u2212"  # the typographic minus sign
_NUMBER = re.compile(
    r"(?<![\w.])(?P<sign>[-+]?)"  # a sign only where it cannot be a binary minus ("10-3", "10 - 3" -> 3)
    r"(?:(?P<num>\d{1,3}(?:,\d{3})+|\d+)(?:\.(?P<frac>\d+))?)"
    r"(?:\s*/\s*(?P<den>\d+)(?!\.?\d))?"
)
_LATEX_FRAC = re.compile(r"\\[dt]?frac\s*\{\s*([-+]?\d+)\s*\}\s*\{\s*([-+]?\d+)\s*\}")


def _last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (nested braces allowed)."""
    start = text.rfind("\\boxed")
    while start != -1:
        brace = text.find("{", start)
        if brace != -1 and text[start + len("\\boxed"):brace].strip() == "":
            depth = 0
            for i in range(brace, len(text)):
                if text[i] == "{":
                    depth += 1
                elif text[i] == "}":
                    depth -= 1
                    if depth == 0:
                        return text[brace + 1:i]
        start = text.rfind("\\boxed", 0, start)
    return None


def extract_number(text: str) -> Fraction | None:
    """The answer's value (see the module docstring), or None when it has no number."""
    if not isinstance(text, str):
        raise TypeError(f"answer must be a str, got {type(text).__name__}")
    boxed = _last_boxed(text)
    region = boxed if boxed is not None else text
    region = region.replace(_MINUS, "-").replace("$", " ")
    candidates: list[tuple[int, Fraction]] = []
    for match in _LATEX_FRAC.finditer(region):
        numerator, denominator = int(match.group(1)), int(match.group(2))
        if denominator != 0:
            candidates.append((match.end(), Fraction(numerator, denominator)))
    for match in _NUMBER.finditer(region):
        if _inside_latex_frac(region, match.start()):
            continue
        value = Fraction(match.group("num").replace(",", "") + ("." + match.group("frac") if match.group("frac") else ""))
        if match.group("den") is not None:
            if int(match.group("den")) == 0:
                continue
            value /= int(match.group("den"))
        if match.group("sign") == "-":
            value = -value
        candidates.append((match.end(), value))
    if not candidates:
        return None
    return max(candidates, key=lambda c: c[0])[1]


def _inside_latex_frac(text: str, position: int) -> bool:
    return any(m.start() <= position < m.end() for m in _LATEX_FRAC.finditer(text))


def _as_fraction(value: Union[int, str, Fraction, float]) -> Fraction:
    if isinstance(value, bool):
        raise TypeError("expected answer must be a number, got a bool")
    if isinstance(value, (int, Fraction)):
        return Fraction(value)
    if isinstance(value, float):
        return Fraction(str(value))  # 0.1 means 1/10, not its binary approximation
    if isinstance(value, str):
        parsed = extract_number(value)
        if parsed is None:
            raise ValueError(f"expected answer {value!r} contains no number")
        return parsed
    raise TypeError(f"expected answer must be an int, float, str or Fraction, got {type(value).__name__}")


class MathAnswerVerifier:
    """Exact match of the answer's final number against `expected`."""

    def __init__(self, expected: Union[int, str, Fraction, float]) -> None:
        self.expected = _as_fraction(expected)

    def __call__(self, answer: str) -> Verdict:
        value = extract_number(answer)
        if value is None:
            return Verdict(0.0, False, "no number in the answer")
        ok = value == self.expected
        return Verdict(1.0 if ok else 0.0, ok, f"answer {_show(value)}, expected {_show(self.expected)}")

    def __repr__(self) -> str:
        return f"MathAnswerVerifier(expected={_show(self.expected)})"


def _show(value: Fraction) -> str:
    return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"


# -- python ------------------------------------------------------------------------------------------
_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)```", re.DOTALL)


def extract_code(answer: str) -> str:
    """The last ```python (or ```py) block, else the last fenced block, else the whole answer. An
    unterminated last fence (the model ran out of tokens) counts as running to the end."""
    blocks = [(m.group(1).lower(), m.group(2)) for m in _FENCE.finditer(answer)]
    tail = answer.rsplit("```", 1)
    if answer.count("```") % 2 == 1 and len(tail) == 2:  # an opened, never closed fence
        header, _, body = tail[1].partition("\n")
        blocks.append((header.strip().lower(), body))
    python_blocks = [code for lang, code in blocks if lang in ("python", "py", "python3")]
    if python_blocks:
        return python_blocks[-1]
    if blocks:
        return blocks[-1][1]
    return answer


class PythonTestsVerifier:
    """Run the answer's code with `tests` (snippets such as "assert add(2, 3) == 5") in the sandbox."""

    def __init__(self, tests: Sequence[str], limits: SandboxLimits | None = None, prefix: str = "") -> None:
        """`prefix`: for completion tasks (HumanEval), the prompt the answer continues; the code run is
        then `prefix + answer` as is, with no fenced block extracted."""
        if isinstance(tests, str) or not tests or not all(isinstance(t, str) and t.strip() for t in tests):
            raise ValueError("tests must be a non-empty list of non-empty Python snippets")
        for index, test in enumerate(tests):
            try:
                compile(test, f"<test {index}>", "exec")
            except SyntaxError as exc:
                raise ValueError(f"tests[{index}] is not valid Python: {exc}") from None
        self.tests = list(tests)
        self.limits = limits or SandboxLimits()
        self.prefix = prefix

    def __call__(self, answer: str) -> Verdict:
        code = self.prefix + answer if self.prefix else extract_code(answer)
        result = run_python_tests(code, self.tests, self.limits)
        passed = sum(result.passed)
        first_error = next((e for e in result.errors if e), "")
        detail = f"{passed}/{len(self.tests)} tests passed ({result.status})"
        if first_error:
            detail += f"; first failure: {first_error[:200]}"
        return Verdict(result.fraction_passed, result.all_passed, detail)

    def __repr__(self) -> str:
        return f"PythonTestsVerifier({len(self.tests)} tests)"
