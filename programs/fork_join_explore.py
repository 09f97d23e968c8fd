"""fork_join_explore: branches explore in one ESamp group, then a join step chooses (and optionally
summarizes); later rounds branch again from the joined conversation.

Each round forks `branches` children from the main conversation; their drafts share one Distiller
(the round's fork group, `<root>/<round>`), so they spread over different ideas. The join step shows
all drafts to the model and lets it choose one with `select` (choices "1".."branches", scored by
log-probability, no sampling); with `join="summarize"` it also writes a combined answer. The next
round's branches see that whole exchange and are asked to improve on it.

Example (Python):

    from esamp_sgl.lang import ESampRuntimeEndpoint
    from programs.fork_join_explore import fork_join_explore

    result = fork_join_explore("Suggest a name for a bakery.", branches=4, rounds=2,
                               backend=ESampRuntimeEndpoint("http://127.0.0.1:30000"))
    print(result.final)
    for r in result.rounds:
        print(r.group, r.chosen, r.drafts)

Example (CLI; without --url an in-process Engine is started):

    python -m programs.fork_join_explore "Suggest a name for a bakery." --branches 4 --rounds 2
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Literal, Sequence

from esamp_sgl.lang import assistant, function, gen, group_of, report_from_meta_info, user
from programs.common import (Sampling, add_backend_args, add_sampling_args, backend_from_args, positive_int,
                             print_json, raise_child_errors, resolve_backend, sampling_from_args)

JoinMode = Literal["choose", "summarize"]


@dataclass
class Round:
    index: int
    group: str | None  # the ESamp group the round's branches shared (None without exploration)
    drafts: list[str]
    telemetry: list[dict[str, Any] | None]  # one ESamp report per branch
    chosen: int  # index into drafts, picked by the join step
    summary: str | None  # join="summarize" only


@dataclass
class ForkJoinResult:
    question: str
    rounds: list[Round]
    final: str  # the last round's summary, or its chosen draft


def _listing(drafts: Sequence[str]) -> str:
    return "\n\n".join(f"Answer {i + 1}:\n{d.strip()}" for i, d in enumerate(drafts))


@function
def fork_join_program(s, question: str, branches: int, rounds: int, sampling: Sampling, join: str,
                      summary_tokens: int):
    s += user(question)
    records = []
    for r in range(rounds):
        forks = s.fork(branches)
        try:
            forks += assistant(gen("draft", **sampling.gen_kwargs()))
            raise_child_errors(forks)
            drafts = [f["draft"] for f in forks]
            reports = [report_from_meta_info(f.get_meta_info("draft")) for f in forks]
            group = group_of(forks[0]) if sampling.explore else None
        finally:
            forks.join()  # also on errors: it ends the children's worker threads

        s += user(f"Here are {branches} candidate answers to my question.\n\n{_listing(drafts)}\n\n"
                  "Which answer is best? Reply with its number only.")
        s += assistant(gen(f"choice_{r}", choices=[str(i + 1) for i in range(branches)]))
        chosen = int(s[f"choice_{r}"]) - 1
        summary = None
        if join == "summarize":
            s += user("Combine the best ideas of these answers into one improved answer.")
            s += assistant(gen(f"summary_{r}", max_tokens=summary_tokens, temperature=0.3, explore=False))
            summary = s[f"summary_{r}"]
        records.append(Round(r, group, drafts, reports, chosen, summary))
        if r + 1 < rounds:
            s += user(f"Now write a new, better answer to my original question: {question}")
    return records


def fork_join_explore(question: str, branches: int, rounds: int = 1, *, backend: Any = None,
                      sampling: Sampling | None = None, join: JoinMode = "choose",
                      summary_tokens: int | None = None) -> ForkJoinResult:
    if not isinstance(question, str) or not question.strip():
        raise ValueError("question must be a non-empty string")
    positive_int("branches", branches)
    positive_int("rounds", rounds)
    if join not in ("choose", "summarize"):
        raise ValueError(f"join must be 'choose' or 'summarize', got {join!r}")
    sampling = sampling or Sampling()
    state = fork_join_program.run(question=question, branches=branches, rounds=rounds, sampling=sampling,
                                  join=join, summary_tokens=summary_tokens or sampling.max_tokens,
                                  backend=resolve_backend(backend))
    raise_child_errors([state])
    records: list[Round] = state.ret_value
    last = records[-1]
    final = last.summary if last.summary is not None else last.drafts[last.chosen]
    return ForkJoinResult(question, records, final)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m programs.fork_join_explore", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("question")
    parser.add_argument("--branches", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--join", choices=("choose", "summarize"), default="choose")
    add_sampling_args(parser, max_tokens=128)
    add_backend_args(parser)
    args = parser.parse_args(argv)
    with backend_from_args(args) as backend:
        result = fork_join_explore(args.question, args.branches, args.rounds, backend=backend,
                                   sampling=sampling_from_args(args), join=args.join)
    if args.json:
        print_json(result)
        return 0
    for r in result.rounds:
        print(f"round {r.index} (group {r.group}):")
        for i, draft in enumerate(r.drafts):
            print(f"  {'*' if i == r.chosen else ' '} [{i + 1}] {draft.strip()[:200]!r}")
        if r.summary is not None:
            print(f"  summary: {r.summary.strip()[:300]!r}")
    print(f"final: {result.final.strip()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
