"""Multi-branch SGLang programs that explore with ESamp (each: a function, and `main(argv) -> int` for
`python -m programs.<name>`).

* `best_of_n` — n explored candidates in one group, verified, best returned with all scores.
* `fork_join_explore` — branches explore in one group per round; a join step chooses/summarizes.
* `tree_search` — beam search over steps; each expansion is an exploring fork group.

The verifiers they score with (exact-answer math, sandboxed Python tests) live in
`esamp_sgl.eval.verifiers`, where `esamp-sgl eval passk` uses them too.
"""
