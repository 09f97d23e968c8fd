"""best_of_n, fork_join_explore and tree_search end to end on the real CPU server.

SmolLM2-135M is weak, so these check the machinery (groups, telemetry, argmax, verifier results on
the real outputs), not answer quality."""

from __future__ import annotations

import json

import pytest

from esamp_sgl.lang import ESampRuntimeEndpoint
from programs import best_of_n as best_of_n_module
from programs import fork_join_explore as fork_join_module
from programs import tree_search as tree_search_module
from programs.best_of_n import best_of_n, pick_best
from programs.common import Sampling
from programs.fork_join_explore import fork_join_explore
from programs.tree_search import tree_search
from esamp_sgl.eval.verifiers import MathAnswerVerifier, PythonTestsVerifier, Verdict

pytestmark = pytest.mark.e2e

SHORT = Sampling(max_tokens=24, temperature=1.0)


@pytest.fixture(scope="module")
def backend(esamp_server):
    return ESampRuntimeEndpoint(esamp_server.url)


def length_verifier(answer: str) -> Verdict:
    """Deterministic and different per answer: lets the test know the argmax."""
    return Verdict(min(len(answer) / 1000.0, 1.0), False, f"{len(answer)} chars")


def test_pick_best_takes_the_first_of_equal_scores():
    verdicts = [Verdict(s, False, "") for s in (0.2, 0.9, 0.9, 0.1)]
    assert pick_best(verdicts) == 1


def test_best_of_n_returns_the_argmax_with_all_scores_from_one_group(backend):
    result = best_of_n("Describe the sea in one sentence.", 4, length_verifier, backend=backend, sampling=SHORT)
    assert len(result.candidates) == 4 and result.scores == [c.verdict.score for c in result.candidates]
    assert result.scores == [length_verifier(c.text).score for c in result.candidates]
    assert result.best_index == max(range(4), key=lambda i: (result.scores[i], -i))
    assert {c.telemetry["group"] for c in result.candidates} == {result.group}
    assert all(c.telemetry["steps_trained"] > 0 for c in result.candidates)


def test_best_of_n_with_the_math_verifier_scores_real_answers_exactly(backend):
    verifier = MathAnswerVerifier(42)
    result = best_of_n("What is 17 + 25? Answer with the number only.", 4, verifier, backend=backend,
                       sampling=Sampling(max_tokens=16, temperature=0.8))
    for c in result.candidates:
        assert c.verdict == verifier(c.text)
    assert result.best.verdict.score == max(result.scores)


def test_best_of_n_with_the_python_verifier_runs_every_candidate(backend):
    verifier = PythonTestsVerifier(["assert add(2, 3) == 5", "assert add(0, 0) == 0"])
    result = best_of_n("Write a Python function add(a, b) that returns a + b. Reply with code only.", 2, verifier,
                       backend=backend, sampling=Sampling(max_tokens=48, temperature=0.7))
    assert all(0.0 <= s <= 1.0 for s in result.scores)
    assert all("tests passed" in c.verdict.detail for c in result.candidates)


def test_best_of_n_without_exploration_has_no_group(backend):
    result = best_of_n("Say a number.", 2, length_verifier, backend=backend,
                       sampling=Sampling(max_tokens=8, explore=False))
    assert result.group is None and all(c.telemetry is None for c in result.candidates)


def test_fork_join_explore_branches_share_a_group_per_round_and_the_join_chooses(backend):
    result = fork_join_explore("Suggest a name for a cat.", branches=3, rounds=2, backend=backend, sampling=SHORT,
                               join="summarize", summary_tokens=16)
    assert len(result.rounds) == 2
    for r in result.rounds:
        assert len(r.drafts) == 3 and 0 <= r.chosen < 3 and r.summary is not None
        assert {t["group"] for t in r.telemetry} == {r.group}
    assert result.rounds[0].group != result.rounds[1].group  # each round's fork is its own group
    assert result.final == result.rounds[-1].summary


@pytest.mark.parametrize("distillers", ["expansion", "depth"])
def test_tree_search_groups_follow_the_documented_rule(backend, distillers):
    result = tree_search("List steps to make tea.", width=2, depth=2, scorer=lambda t: len(t) % 7, beam=2,
                         backend=backend, sampling=Sampling(max_tokens=12), distillers=distillers)
    assert result.depth_reached == 2 and len(result.nodes) == 2 + 2 * 2
    depth0 = [n for n in result.nodes if len(n.path) == 1]
    depth1 = [n for n in result.nodes if len(n.path) == 2]
    for node in result.nodes:
        assert node.telemetry["group"] == node.group
        assert node.score == len(node.trajectory) % 7
    assert len({n.group for n in depth0}) == 1
    if distillers == "expansion":  # one group per expansion: the two frontier nodes' children differ
        assert len({n.group for n in depth1}) == 2
        # child i of the first fork (group <root>/0) has lineage <root>/0.i; its expansion is <root>/0.i/0
        assert all(n.group == f"{depth0[0].group}.{n.path[0]}/0" for n in depth1)
    else:
        assert len({n.group for n in depth1}) == 1 and depth1[0].group.endswith("/depth1")
    kept = [n for n in depth1 if n.kept]
    assert result.best in kept and result.best.score == max(n.score for n in depth1)


@pytest.mark.parametrize("module, argv", [
    (best_of_n_module, ["What is 2 + 2?", "--n", "2", "--expected", "4", "--max-tokens", "8"]),
    (fork_join_module, ["Name a fruit.", "--branches", "2", "--max-tokens", "8"]),
    (tree_search_module, ["What is 3 + 4?", "--width", "2", "--depth", "1", "--expected", "7", "--max-tokens", "8"]),
])
def test_program_cli_main(module, argv, esamp_server, capsys):
    assert module.main([*argv, "--url", esamp_server.url, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert isinstance(out, dict) and out
