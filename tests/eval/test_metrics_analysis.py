"""Evaluation metrics and analysis against hand-computed values and brute force."""

from __future__ import annotations

import itertools
import math
import re

import numpy as np
import pytest

from esamp_sgl.eval import analysis
from esamp_sgl.eval.arms import PRESETS, PRIMARY_ARM, parse_arm, parse_arms
from esamp_sgl.eval.metrics import (distinct_n, mean_pairwise_cosine_distance, pass_at_k,
                                    repetition_rate, vendi_score)
from esamp_sgl.eval.tasks import arithmetic_tasks, load_prompts, load_tasks


def test_vendi_identical_orthogonal_and_a_mix():
    e = np.eye(5)
    assert vendi_score(np.tile(e[0], (4, 1))) == pytest.approx(1.0)
    assert vendi_score(e) == pytest.approx(5.0)
    # Two identical + one orthogonal: eigenvalues of K/3 are 2/3 and 1/3.
    mix = np.stack([e[0], e[0] * 3.0, e[1]])  # scale must not matter (cosine kernel)
    want = math.exp(-(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3)))
    assert vendi_score(mix) == pytest.approx(want)


def test_cosine_distance():
    e = np.eye(3)
    assert mean_pairwise_cosine_distance(e) == pytest.approx(1.0)
    assert mean_pairwise_cosine_distance(np.ones((4, 3))) == pytest.approx(0.0)
    two = np.array([[1.0, 0.0], [1.0, 1.0]])
    assert mean_pairwise_cosine_distance(two) == pytest.approx(1 - 1 / math.sqrt(2))


def test_distinct_n_and_repetition():
    texts = ["a b c a b", "a b d"]
    # unigrams: a b c a b a b d -> 4 unique / 8; bigrams: ab bc ca ab ab bd -> 4 unique / 6
    assert distinct_n(texts, 1) == pytest.approx(4 / 8)
    assert distinct_n(texts, 2) == pytest.approx(4 / 6)
    assert distinct_n([""], 2) == 0.0
    assert repetition_rate([1, 2, 3, 1, 2, 3, 1], 3) == pytest.approx(1 - 3 / 5)
    assert repetition_rate([1, 2, 3, 4], 3) == 0.0


@pytest.mark.parametrize("n,c", [(5, 0), (5, 2), (6, 3), (8, 8), (7, 1)])
def test_pass_at_k_equals_brute_force_over_subsets(n, c):
    outcomes = [True] * c + [False] * (n - c)
    for k in range(1, n + 1):
        subsets = list(itertools.combinations(range(n), k))
        brute = sum(any(outcomes[i] for i in s) for s in subsets) / len(subsets)
        assert pass_at_k(n, c, k) == pytest.approx(brute)
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)


def test_curve_interpolates_and_never_extrapolates():
    xs, ys = [1.0, 2.0, 3.0], [1.0, 3.0, 4.0]
    assert analysis.curve_at(xs, ys, 1.5) == pytest.approx(2.0)
    assert analysis.curve_at(xs, ys, 2.5) == pytest.approx(3.5)
    assert analysis.curve_at(xs, ys, 1.0) == pytest.approx(1.0) and analysis.curve_at(xs, ys, 3.0) == pytest.approx(4.0)
    assert analysis.curve_at(xs, ys, 0.0) is None  # outside the measured span: not known
    assert analysis.curve_at(xs, ys, 4.0) is None
    assert analysis.curve_at(list(reversed(xs)), list(reversed(ys)), 1.5) == pytest.approx(2.0)


def test_matched_gain_per_prompt_and_replicates_averaged():
    # Reference curve per prompt: vendi = nll (two arms at nll 1 and 3). Arm X at nll 2 has vendi 2.5
    # on prompt 0 (gain +0.5) and, averaged over two replicates, 1.5 on prompt 1 (gain -0.5).
    recs = []
    for p in (0, 1):
        recs += [{"arm": "lo", "prompt": p, "replicate": 0, "vendi": 1.0, "nll": 1.0},
                 {"arm": "hi", "prompt": p, "replicate": 0, "vendi": 3.0, "nll": 3.0}]
    recs += [{"arm": "x", "prompt": 0, "replicate": 0, "vendi": 2.5, "nll": 2.0},
             {"arm": "x", "prompt": 1, "replicate": 0, "vendi": 1.0, "nll": 2.0},
             {"arm": "x", "prompt": 1, "replicate": 1, "vendi": 2.0, "nll": 2.0}]
    g = analysis.matched_gain(recs, "x", ["lo", "hi"])
    assert g["per_prompt"] == {0: pytest.approx(0.5), 1: pytest.approx(-0.5)}
    assert g["mean"] == pytest.approx(0.0) and g["win_rate"] == 0.5 and g["sem"] == pytest.approx(0.5)
    assert analysis.matched_gain(recs, "x", ["lo"]) is None  # one point is not a curve


def test_pareto_front():
    pts = {"a": (1.0, 1.0), "b": (2.0, 3.0), "c": (2.5, 2.0), "d": (3.0, 4.0), "e": (1.0, 0.5)}
    assert analysis.pareto_front(pts) == ["a", "b", "d"]


def test_arm_specs_and_errors_name_the_field():
    arm = parse_arm("esamp:rule=compensated,beta=3,min_p=0.05")
    assert arm.sampling_params()["custom_params"] == {"esamp": True, "esamp_beta": 3.0, "esamp_rule": "compensated"}
    frozen = parse_arm("frozen:beta=2,min_p=0.05").sampling_params()["custom_params"]
    assert frozen["esamp_train"] is False and frozen["esamp_rule"] == "contrastive"
    assert parse_arm("presence:beta=1").sampling_params()["custom_params"]["esamp_rule"] == "group_presence"
    assert "custom_params" not in parse_arm("stock:T=0.7").sampling_params()
    for bad, needle in [("stock:beta=1", "no beta"), ("esamp:T=1", "needs beta"), ("esamp:beta=11", "beta"),
                        ("nope:beta=1", "arm kind"), ("stock:T=nan", "T"), ("presence:beta=1,rule=compensated", "rule"),
                        ("stock:temperature=1", "key")]:
        with pytest.raises(ValueError, match=needle):
            parse_arm(bad)
    with pytest.raises(ValueError, match="duplicate"):
        parse_arms("stock:T=1;stock:T=1.0")
    assert len(parse_arms("diversity")) >= 12


def test_tat_and_random_arms_map_to_the_server_rules():
    tat = parse_arm("tat:T=0.8,Tp=2,min_p=0.05")
    assert tat.name == "tat-Tp2-T0.8-minp0.05" and tat.family == "tat, min-p 0.05, T 0.8 (Tp sweep)"
    params = tat.sampling_params()
    assert params["temperature"] == 0.8 and params["min_p"] == 0.05  # truncation at T
    assert params["custom_params"] == {"esamp": True, "esamp_beta": 1.5, "esamp_rule": "temperature_after_truncation",
                                       "esamp_train": False}  # sampling at (1+β)·T = Tp
    assert parse_arm("tat:Tp=1").sampling_params()["custom_params"]["esamp_beta"] == 0.0  # Tp = T: stock
    rnd = parse_arm("random:beta=3,min_p=0.05")
    assert rnd.name == "random-b3-T1-minp0.05" and rnd.family == "random, min-p 0.05, T 1 (β sweep)"
    assert rnd.sampling_params()["custom_params"] == {"esamp": True, "esamp_beta": 3.0, "esamp_rule": "random_prior",
                                                      "esamp_train": False}
    for bad, needle in [("tat:T=1", "needs Tp"), ("tat:T=1,Tp=0.9", r"Tp must be in \[T"), ("tat:T=0.5,Tp=6", "Tp"),
                        ("tat:Tp=2,beta=1", "no beta"), ("esamp:beta=1,Tp=2", "no Tp"), ("stock:Tp=2", "no Tp"),
                        ("random:beta=1,rule=compensated", "rule")]:
        with pytest.raises(ValueError, match=needle):
            parse_arm(bad)


def test_presets_hold_the_preregistered_families():
    kinds = lambda preset: sorted(a.kind for a in parse_arms(preset))
    assert kinds("diversity") == sorted(["stock"] * 4 + ["tat"] * 3 + ["esamp"] * 2 + ["frozen", "random"]
                                        + ["presence"] * 2)
    assert kinds("passk") == sorted(["stock"] * 3 + ["tat"] * 2 + ["esamp"] * 2 + ["frozen", "random", "presence"])
    for preset in set(PRESETS) - {"paper", "paper-core"}:  # the paper's presets run without a filter
        arms = parse_arms(preset)
        assert parse_arm(PRIMARY_ARM).name in {a.name for a in arms}
        assert all(a.min_p == 0.05 for a in arms)
    assert len(parse_arms("quick")) <= 4


def test_arithmetic_answers_are_exact_and_reproducible():
    for difficulty in (1, 2, 3, 4, 5):
        tasks = arithmetic_tasks(30, difficulty, seed=3)
        assert tasks == arithmetic_tasks(30, difficulty, seed=3)
        for t in tasks:
            assert t["prompt"].endswith(f"Q: {t['question']}\nA:")
            nums = [int(x) for x in re.findall(r"\d+", t["question"])]
            q = t["question"]
            if " plus " in q and " minus " in q or "then loses" in q:
                want = nums[0] + nums[1] - nums[2]
            elif " plus " in q or "more" in q:
                want = nums[0] + nums[1]
            elif " minus " in q or "gives away" in q:
                want = nums[0] - nums[1]
            else:
                want = nums[0] * nums[1]
            assert int(t["answer"]) == want, q
    with pytest.raises(ValueError, match="difficulty"):
        arithmetic_tasks(3, 9)


def test_prompt_and_task_files(tmp_path):
    assert len(load_prompts("creative")) == 30
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "one"}\ntwo\n\n')
    assert load_prompts(str(f)) == ["one", "two"]
    f.write_text('{"text": "x"}\n')
    with pytest.raises(ValueError, match="prompt"):
        load_prompts(str(f))
    t = tmp_path / "t.jsonl"
    t.write_text('{"prompt": "2+2=", "answer": "4"}\n{"prompt": "code", "tests": ["assert f() == 1"]}\n')
    assert len(load_tasks(str(t))) == 2
    t.write_text('{"prompt": "2+2=", "answer": "4", "tests": []}\n')
    with pytest.raises(ValueError, match="exactly one"):
        load_tasks(str(t))
