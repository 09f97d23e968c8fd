"""`function`: `sgl.function` that refuses program arguments named like `SglFunction.run`'s own keywords.

`program.run(n=4)` sets the sampling default `n`, not a program argument `n`, so a program declared
as `def prog(s, n)` fails at run time with "missing 1 required positional argument: 'n'" (and
`temperature`, `stop`, `backend`, `stream`, ... behave the same). This decorator reports it at
definition time instead.
"""

from __future__ import annotations

import inspect
from typing import Callable, Optional

from sglang.lang.api import function as sgl_function
from sglang.lang.ir import SglFunction


def _run_keywords() -> frozenset[str]:
    names: set[str] = set()
    for method in (SglFunction.run, SglFunction.run_batch):
        for name, parameter in inspect.signature(method).parameters.items():
            if name != "self" and parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY):
                names.add(name)
    names.discard("batch_kwargs")  # run_batch's positional list, never a keyword
    return frozenset(names)


RUN_KEYWORDS = _run_keywords()


def _check_argument_names(func: Callable) -> None:
    spec = inspect.getfullargspec(func)
    clashes = sorted(set(spec.args[1:] + spec.kwonlyargs) & RUN_KEYWORDS)
    if clashes:
        raise ValueError(f"@function {func.__name__}: argument {clashes[0]!r} has the name of a keyword of "
                         f"SglFunction.run/run_batch (a sampling default or run option), so it could never be "
                         f"passed to the program; rename it")


def function(func: Optional[Callable] = None, num_api_spec_tokens: Optional[int] = None):
    """`sgl.function` (same use: `@function` or `@function(num_api_spec_tokens=...)`) with the check above."""
    def decorate(f: Callable) -> SglFunction:
        _check_argument_names(f)
        return sgl_function(f, num_api_spec_tokens=num_api_spec_tokens)

    return decorate(func) if func else decorate
