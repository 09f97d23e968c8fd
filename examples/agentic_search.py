"""Agentic search: a step-by-step beam search where every expansion is an exploring fork group.

    python examples/agentic_search.py                    # in-process sglang.Engine
    python examples/agentic_search.py --url http://127.0.0.1:30000 --distillers depth

Each step is one line; a child's score is 1 when its trajectory's last number is the right answer
(MathAnswerVerifier), and the search stops as soon as one child scores 1.
"""

from __future__ import annotations

import argparse
from typing import Sequence

from programs.common import Sampling, add_backend_args, backend_from_args
from programs.tree_search import tree_search, verdict_scorer
from esamp_sgl.eval.verifiers import MathAnswerVerifier

PROBLEM = ("Anna has 2 apples and buys 3 more. How many apples does she have now? "
           "Think step by step, one short step per line, and end with the number.")
ANSWER = 5


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=3)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--beam", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--distillers", choices=("expansion", "depth"), default="expansion")
    add_backend_args(parser)
    args = parser.parse_args(argv)
    with backend_from_args(args) as backend:
        result = tree_search(PROBLEM, args.width, args.depth, verdict_scorer(MathAnswerVerifier(ANSWER)),
                             beam=args.beam, backend=backend, distillers=args.distillers, stop_score=1.0,
                             sampling=Sampling(max_tokens=args.max_tokens, temperature=0.9))
    for node in result.nodes:
        print(f"{'+' if node.kept else ' '} {'.'.join(map(str, node.path)):<6} score {node.score:.0f} "
              f"group {node.group}  {node.step[:70]!r}")
    groups = {node.group for node in result.nodes}
    print(f"{len(result.nodes)} nodes, {result.depth_reached} depths, {len(groups)} Distiller groups")
    print(f"best ({'.'.join(map(str, result.best.path))}, score {result.best.score:.0f}):\n{result.best.trajectory}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
