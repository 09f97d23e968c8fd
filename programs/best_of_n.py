"""best_of_n: explore-sample n candidates in one ESamp group, verify each, return the best.

The n candidates are the children of one `s.fork(n)`, so they share one Distiller and each is pushed
away from what its siblings already wrote. Each candidate is scored by the verifier (any callable
`answer -> Verdict`, see esamp_sgl/eval/verifiers.py); the best is the highest score (the first one on ties).

Example (Python):

    from esamp_sgl.lang import ESampRuntimeEndpoint
    from programs.best_of_n import best_of_n
    from esamp_sgl.eval.verifiers import MathAnswerVerifier

    result = best_of_n("What is 17 * 23? End with the number.", n=8,
                       verifier=MathAnswerVerifier(391), backend=ESampRuntimeEndpoint("http://127.0.0.1:30000"))
    print(result.best.text, result.scores, result.group)

Example (CLI; without --url an in-process Engine is started):

    python -m programs.best_of_n "What is 17 * 23? End with the number." --n 8 --verifier math --expected 391
    python -m programs.best_of_n "Write add(a, b) in Python." --n 4 --verifier python --test "assert add(2, 3) == 5"
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any, Sequence

from esamp_sgl.lang import assistant, function, gen, group_of, report_from_meta_info, system, user
from programs.common import (Sampling, add_backend_args, add_sampling_args, backend_from_args, positive_int,
                             print_json, raise_child_errors, resolve_backend, sampling_from_args)
from esamp_sgl.eval.verifiers import MathAnswerVerifier, PythonTestsVerifier, Verdict, Verifier


@dataclass
class Candidate:
    index: int
    text: str
    verdict: Verdict
    telemetry: dict[str, Any] | None  # the group's ESamp report when this candidate finished


@dataclass
class BestOfNResult:
    best_index: int
    candidates: list[Candidate]
    group: str | None  # the ESamp group the candidates shared (None without exploration)
    scores: list[float] = field(init=False)

    def __post_init__(self) -> None:
        self.scores = [c.verdict.score for c in self.candidates]

    @property
    def best(self) -> Candidate:
        return self.candidates[self.best_index]


@function
def sample_candidates(s, prompt: str, count: int, sampling: Sampling, system_prompt: str | None):
    """One user turn, then `count` forked assistant answers (one fork group). Returns [(text, meta_info, group)]."""
    if system_prompt:
        s += system(system_prompt)
    s += user(prompt)
    forks = s.fork(count)
    try:
        forks += assistant(gen("answer", **sampling.gen_kwargs()))
        raise_child_errors(forks)
        return [(f["answer"], f.get_meta_info("answer"), group_of(f)) for f in forks]
    finally:
        forks.join()  # also on errors: it ends the children's worker threads


def pick_best(verdicts: Sequence[Verdict]) -> int:
    """Index of the highest score; the first one on ties."""
    return max(range(len(verdicts)), key=lambda i: (verdicts[i].score, -i))


def best_of_n(prompt: str, n: int, verifier: Verifier, *, backend: Any = None, sampling: Sampling | None = None,
              system_prompt: str | None = None) -> BestOfNResult:
    """Sample n answers to `prompt` (exploring, one group), score each with `verifier`, pick the best."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("prompt must be a non-empty string")
    positive_int("n", n)
    if not callable(verifier):
        raise TypeError(f"verifier must be a callable answer -> Verdict, got {type(verifier).__name__}")
    sampling = sampling or Sampling()
    state = sample_candidates.run(prompt=prompt, count=n, sampling=sampling, system_prompt=system_prompt,
                                  backend=resolve_backend(backend))
    raise_child_errors([state])
    samples = state.ret_value
    candidates = []
    for index, (text, meta_info, _) in enumerate(samples):
        verdict = verifier(text)
        if not isinstance(verdict, Verdict):
            raise TypeError(f"verifier returned {type(verdict).__name__}, expected a Verdict")
        candidates.append(Candidate(index, text, verdict, report_from_meta_info(meta_info)))
    group = samples[0][2] if sampling.explore else None
    return BestOfNResult(pick_best([c.verdict for c in candidates]), candidates, group)


# -- CLI ---------------------------------------------------------------------------------------------
def build_verifier(args: argparse.Namespace) -> Verifier:
    if args.verifier == "math":
        if args.expected is None:
            raise SystemExit("--verifier math needs --expected VALUE")
        return MathAnswerVerifier(args.expected)
    if not args.test:
        raise SystemExit("--verifier python needs at least one --test SNIPPET")
    return PythonTestsVerifier(args.test)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m programs.best_of_n", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prompt")
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--verifier", choices=("math", "python"), default="math")
    parser.add_argument("--expected", help="math: the exact expected answer (e.g. 391, -2.5, 3/4)")
    parser.add_argument("--test", action="append", help="python: a test snippet, e.g. 'assert f(1) == 2' (repeatable)")
    parser.add_argument("--system", help="optional system prompt")
    add_sampling_args(parser, max_tokens=256)
    add_backend_args(parser)
    args = parser.parse_args(argv)
    verifier = build_verifier(args)
    with backend_from_args(args) as backend:
        result = best_of_n(args.prompt, args.n, verifier, backend=backend, sampling=sampling_from_args(args),
                           system_prompt=args.system)
    if args.json:
        print_json(result)
    else:
        for c in result.candidates:
            mark = "*" if c.index == result.best_index else " "
            print(f"{mark} [{c.index}] score {c.verdict.score:.2f}  {c.verdict.detail}\n    {c.text.strip()[:300]!r}")
        print(f"best: #{result.best_index} (score {result.best.verdict.score:.2f}); group {result.group}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
