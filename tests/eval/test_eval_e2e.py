"""A tiny end-to-end evaluation on the session's real CPU server: valid JSON, PNGs and markdown."""

from __future__ import annotations

import json
import math

import pytest

from esamp_sgl.eval.cli import main as eval_main


@pytest.mark.timeout(900)
def test_diversity_eval_end_to_end(esamp_server, model_path, tmp_path):
    out = tmp_path / "div"
    # The stock curve spans T 0.5 to 2 so every other arm's NLL lies inside it (matched-NLL gains are
    # interpolated only: an arm outside the curve's span gets no number).
    arms = "stock:T=0.5,min_p=0.05;stock:T=2,min_p=0.05;esamp:rule=compensated,beta=3,min_p=0.05;" \
           "frozen:rule=compensated,beta=3,min_p=0.05;presence:beta=1.5,min_p=0.05"
    rc = eval_main(["diversity", "--url", esamp_server.url, "--model-path", str(model_path), "--limit", "2",
                    "--n", "4", "--max-tokens", "16", "--replicates", "1", "--arms", arms,
                    "--output", str(out)])
    assert rc == 0
    data = json.loads((out / "diversity.json").read_text())
    names = [a["name"] for a in data["config"]["arms"]]
    assert len(data["records"]) == 2 * len(names)
    for r in data["records"]:
        assert 1.0 <= r["vendi"] <= 4.0 + 1e-6  # between "all alike" and n
        assert 0 < r["nll"] < 20 and 0 < r["length"] <= 16
        assert 0.0 <= r["rep3"] <= 1.0 and 0.0 <= r["distinct_2"] <= 1.0
    by_arm = {r["arm"]: r for r in data["records"]}
    trained = by_arm["esamp-compensated-b3-T1-minp0.05"]
    frozen = by_arm["frozen-compensated-b3-T1-minp0.05"]
    assert trained["esamp_steps_trained"] > 0  # the group's Distiller learned during the request
    assert frozen["esamp_steps_trained"] == 0  # esamp_train=false: frozen
    assert "esamp_steps_trained" not in by_arm["stock-T0.5-minp0.05"]
    assert set(data["summary"]) == set(names)
    gains = data["matched_nll_gain"]["vendi"]["stock, min-p 0.05 (T sweep)"]
    assert set(gains) == set(names) - {"stock-T0.5-minp0.05", "stock-T2-minp0.05"}
    assert all(not g["out_of_span"] and not math.isnan(g["mean"]) for g in gains.values())
    assert data["pareto_front"] and set(data["pareto_front"]) <= set(names)
    assert any("test-time training" in k for k in data["contrasts"])
    pre = data["preregistered"]
    assert pre["primary"] is None and pre["notes"]  # the default primary arm (β = 1) is not among these arms
    (trained_vs_frozen,) = pre["secondary"].values()  # through the same code: gains against the one stock curve
    # Per prompt the curve is read only inside its own two points: a prompt where either arm's NLL falls
    # outside them is left out of the contrast (never extrapolated), so 1 or 2 of the 2 prompts remain.
    assert trained_vs_frozen["strongest_family"] == "stock, min-p 0.05 (T sweep)"
    assert 1 <= trained_vs_frozen["prompts"] <= 2
    assert "## Pre-registered contrast" in (out / "diversity.md").read_text()
    for png in ("vendi_vs_nll.png", "cosdist_vs_nll.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| esamp-compensated-b3" in (out / "diversity.md").read_text()


@pytest.mark.timeout(900)
def test_passk_eval_end_to_end(esamp_server, model_path, tmp_path):
    out = tmp_path / "pk"
    rc = eval_main(["passk", "--url", esamp_server.url, "--model-path", str(model_path), "--count", "3",
                    "--difficulty", "1", "--n", "4", "--k", "1,2,4", "--max-tokens", "6",
                    "--arms", "stock:T=1.0,min_p=0.05;esamp:rule=compensated,beta=3,min_p=0.05",
                    "--output", str(out)])
    assert rc == 0
    data = json.loads((out / "passk.json").read_text())
    assert data["ks"] == [1, 2, 4]
    for arm, s in data["summary"].items():
        p = [s["pass_at_k"][str(k)]["mean"] for k in (1, 2, 4)]
        assert 0.0 <= p[0] <= p[1] <= p[2] <= 1.0  # pass@k never decreases in k
        assert 1.0 <= s["distinct_answers"]["mean"] <= 4.0
    for arm, tasks in data["per_task"].items():
        for t, row in tasks.items():
            task = data["config"]["tasks"][int(t)]
            assert row["correct"] == sum(row["passed"])
            for text, ok in zip(row["texts"], row["passed"]):
                if text.strip() == task["answer"]:
                    assert ok  # exactly the answer passes
                if not any(ch.isdigit() for ch in text):
                    assert not ok  # no number cannot pass
    assert 0.0 <= data["greedy_accuracy"] <= 1.0
    assert (out / "passk.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.timeout(900)
def test_passk_worked_task_end_to_end(esamp_server, model_path, tmp_path):
    from fractions import Fraction

    from esamp_sgl.eval.tasks import extract_worked_answer

    out = tmp_path / "worked"
    rc = eval_main(["passk", "--url", esamp_server.url, "--model-path", str(model_path), "--task", "worked",
                    "--count", "2", "--n", "4", "--max-tokens", "32",
                    "--arms", "stock:T=1.0,min_p=0.05;esamp:rule=compensated,beta=1,min_p=0.05",
                    "--output", str(out)])
    assert rc == 0
    data = json.loads((out / "passk.json").read_text())
    assert data["config"]["chat"] is True and data["config"]["stop"] is None
    for arm, tasks in data["per_task"].items():
        for t, row in tasks.items():
            answer = Fraction(data["config"]["tasks"][int(t)]["answer"])
            assert row["passed"] == [extract_worked_answer(x) == answer for x in row["texts"]]
    pre = data["preregistered"]
    assert pre["k"] == 4 and pre["pass_at_k"]["prompts"] == 2 and pre["distinct_answers"]["prompts"] == 2
