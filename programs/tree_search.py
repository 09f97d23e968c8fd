"""tree_search: agentic beam search over reasoning steps; each expansion is an exploring fork.

The answer is built one step (one line, `stop="\\n"`) at a time inside a single assistant turn. At
each depth every frontier node forks `width` children that each write the next step; a `scorer`
(`trajectory -> float`, or a verifier returning a Verdict) scores every child, and the `beam` best
become the next frontier. All expansions of one depth run concurrently.

Which Distiller a step trains and uses (`distillers=`):

* "expansion" (default): one ESamp group per expansion (= per fork call). Siblings share it and
  are pushed apart; cousins (children of different frontier nodes) do not interact. Group id:
  `<parent lineage>/<fork ordinal>` (esamp_sgl.lang.lineage), e.g. `sgl-…/0` at depth 0 and
  `sgl-…/0.2/0` for the expansion of that fork's child 2.
* "depth": one group per depth, `<root group>/depth<d>`, shared by every expansion of that depth,
  so all steps written at one depth are pushed apart from each other.

A Distiller lives while its group has a request in flight, so nothing is carried from one depth to
the next (each depth starts a fresh one).

Example (Python):

    from esamp_sgl.lang import ESampRuntimeEndpoint
    from programs.tree_search import tree_search, verdict_scorer
    from esamp_sgl.eval.verifiers import MathAnswerVerifier

    result = tree_search("Tom has 3 bags of 4 apples. How many apples? Think step by step.",
                         width=3, depth=3, scorer=verdict_scorer(MathAnswerVerifier(12)),
                         backend=ESampRuntimeEndpoint("http://127.0.0.1:30000"))
    print(result.best.trajectory, result.best.score)

Example (CLI; without --url an in-process Engine is started):

    python -m programs.tree_search "Tom has 3 bags of 4 apples. How many apples?" --width 3 --depth 3 --expected 12
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Sequence, Union

from esamp_sgl.lang import assistant_begin, function, gen, group_of, report_from_meta_info, user
from programs.common import (Sampling, add_backend_args, add_sampling_args, backend_from_args, positive_int,
                             print_json, raise_child_errors, resolve_backend, sampling_from_args)
from esamp_sgl.eval.verifiers import MathAnswerVerifier, Verdict

Scorer = Callable[[str], Union[float, Verdict]]
DistillerScope = Literal["expansion", "depth"]


@dataclass
class Node:
    path: tuple[int, ...]  # child indices from the root, e.g. (0, 2)
    step: str  # the text this node added
    trajectory: str  # all steps from the root to here
    score: float
    group: str | None  # the ESamp group of the expansion that produced it
    telemetry: dict[str, Any] | None = None
    kept: bool = False  # made it into the next frontier (or is the final best)


@dataclass
class TreeSearchResult:
    best: Node
    nodes: list[Node] = field(default_factory=list)  # every scored node, in expansion order
    depth_reached: int = 0


def verdict_scorer(verifier: Callable[[str], Verdict]) -> Scorer:
    """Score a trajectory by a verifier's score (e.g. MathAnswerVerifier on the steps so far)."""
    return lambda trajectory: verifier(trajectory).score


def _score(scorer: Scorer, trajectory: str) -> float:
    value = scorer(trajectory)
    if isinstance(value, Verdict):
        value = value.score
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"scorer must return a number or a Verdict, got {type(value).__name__}")
    return float(value)


@function
def tree_search_program(s, prompt: str, width: int, depth: int, beam: int, sampling: Sampling, scorer: Scorer,
                        distillers: str, stop_score: float | None):
    s += user(prompt)
    s += assistant_begin()
    frontier: list[tuple[Any, Node | None]] = [(s, None)]
    nodes: list[Node] = []
    reached = 0
    root_group = group_of(s)
    live: list[Any] = []  # forked states still running; ended when dropped from the beam or on errors
    try:
        for d in range(depth):
            reached = d + 1
            shared = {"group": f"{root_group}/depth{d}"} if distillers == "depth" and sampling.explore else {}
            expansions = []
            for state, parent in frontier:  # submit every expansion first, so one depth runs concurrently
                forks = state.fork(width)
                live.extend(forks.states)
                forks += gen(f"step{d}", stop="\n", **sampling.gen_kwargs(), **shared)
                expansions.append((forks, parent))
            children: list[tuple[Any, Node]] = []
            for forks, parent in expansions:
                raise_child_errors(forks)
                group = (shared.get("group") or group_of(forks[0])) if sampling.explore else None
                for i, child in enumerate(forks):
                    step = child[f"step{d}"].strip()
                    trajectory = f"{parent.trajectory}\n{step}" if parent else step
                    node = Node((*(parent.path if parent else ()), i), step, trajectory,
                                _score(scorer, trajectory), group,
                                report_from_meta_info(child.get_meta_info(f"step{d}")))
                    nodes.append(node)
                    children.append((child, node))
            children.sort(key=lambda c: -c[1].score)  # stable: ties keep expansion order
            frontier = children[:beam]
            for child, _ in children[beam:]:
                child.stream_executor.end()
            for child, node in frontier:
                node.kept = True
                child += "\n"  # the next step starts on a new line
            if stop_score is not None and frontier[0][1].score >= stop_score:
                break
        return nodes, frontier[0][1], reached
    finally:
        for state in live:
            state.stream_executor.end()  # idempotent for states already ended


def tree_search(prompt: str, width: int, depth: int, scorer: Scorer, *, beam: int = 2, backend: Any = None,
                sampling: Sampling | None = None, distillers: DistillerScope = "expansion",
                stop_score: float | None = None) -> TreeSearchResult:
    """Beam search over steps: `depth` levels, `width` explored children per expanded node, keep `beam`."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("prompt must be a non-empty string")
    positive_int("width", width)
    positive_int("depth", depth)
    positive_int("beam", beam)
    if not callable(scorer):
        raise TypeError(f"scorer must be a callable trajectory -> float, got {type(scorer).__name__}")
    if distillers not in ("expansion", "depth"):
        raise ValueError(f"distillers must be 'expansion' or 'depth', got {distillers!r}")
    sampling = sampling or Sampling(max_tokens=64)
    state = tree_search_program.run(prompt=prompt, width=width, depth=depth, beam=beam, sampling=sampling,
                                    scorer=scorer, distillers=distillers, stop_score=stop_score,
                                    backend=resolve_backend(backend))
    raise_child_errors([state])
    nodes, best, reached = state.ret_value
    return TreeSearchResult(best, nodes, reached)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m programs.tree_search", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prompt")
    parser.add_argument("--width", type=int, default=3)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--beam", type=int, default=2)
    parser.add_argument("--expected", required=True, help="the exact answer; a step's score is 1 when the "
                                                          "trajectory's last number equals it")
    parser.add_argument("--distillers", choices=("expansion", "depth"), default="expansion")
    add_sampling_args(parser, max_tokens=48)
    add_backend_args(parser)
    args = parser.parse_args(argv)
    scorer = verdict_scorer(MathAnswerVerifier(args.expected))
    with backend_from_args(args) as backend:
        result = tree_search(args.prompt, args.width, args.depth, scorer, beam=args.beam, backend=backend,
                             sampling=sampling_from_args(args), distillers=args.distillers, stop_score=1.0)
    if args.json:
        print_json(result)
        return 0
    for node in result.nodes:
        mark = "+" if node.kept else " "
        print(f"{mark} {'.'.join(map(str, node.path)):<8} score {node.score:.2f} group {node.group}  {node.step[:100]!r}")
    print(f"best ({'.'.join(map(str, result.best.path))}, score {result.best.score:.2f}):\n{result.best.trajectory}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
