"""The SGLang DSL with exploration: one `s.fork(8)`, eight exploring answers, one shared Distiller.

    python examples/fork8_dsl.py                         # starts an in-process sglang.Engine (CPU: ~1 min)
    python examples/fork8_dsl.py --url http://127.0.0.1:30000   # a server with --sampling-backend esamp

The eight children of the fork share one ESamp group (printed), so each is steered away from what
its siblings already wrote. `forks.join()` gathers the children's `name` variables into the parent.
"""

from __future__ import annotations

import argparse
from typing import Sequence

from esamp_sgl.core.telemetry import group_report
from esamp_sgl.lang import assistant, explore_report, function, gen, group_of, user
from programs.common import add_backend_args, backend_from_args


@function
def name_ideas(s, thing: str, count: int, max_tokens: int, beta: float):
    s += user(f"Suggest a creative name for {thing}. Reply with the name only.")
    forks = s.fork(count)
    forks += assistant(gen("name", max_tokens=max_tokens, temperature=1.0, min_p=0.05, explore=True, beta=beta))
    reports = [explore_report(f, "name") for f in forks]
    groups = [group_of(f) for f in forks]
    forks.join()  # s["name"] is now the list of the n names
    return groups, reports


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--thing", default="a bakery")
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--beta", type=float, default=1.0)
    add_backend_args(parser)
    args = parser.parse_args(argv)
    with backend_from_args(args) as backend:
        state = name_ideas.run(thing=args.thing, count=args.n, max_tokens=args.max_tokens, beta=args.beta,
                               backend=backend)
        groups, reports = state.ret_value
        names = state["name"]
    for i, name in enumerate(names):
        print(f"[{i}] {name.strip()!r}")
    print(f"fork group: {groups[0]} (shared by all {len(set(groups)) == 1 and len(groups)} children)")
    last = group_report(reports)
    if last:
        print(f"Distiller: steps_trained={last['steps_trained']} predictions={last['predictions']} "
              f"tokens_reweighted={last['tokens_reweighted']} mean_loss={last['mean_loss']}")
    print(f"distinct answers: {len({n.strip() for n in names})}/{len(names)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
