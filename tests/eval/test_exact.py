"""esamp_sgl.eval.exact: exact pass@n over the min-p candidate tree, on the real SmolLM2 (3 tasks, depth 3).

The tree's stock and temperature-after-truncation distributions are checked against an independent brute
force (full-sequence forwards, no KV cache, plain torch); the ESamp arms that cannot steer (β = 0, or the fit
gate shut at init) must give exactly stock's numbers.
"""

from __future__ import annotations

import math
import re

import pytest
import torch

from esamp_sgl.core.plan import StepPlan
from esamp_sgl.eval import exact
from esamp_sgl.eval.tasks import arithmetic_tasks

TASKS, DEPTH, N, MIN_P = 3, 3, 16, 0.05
TAT = "esamp:rule=temperature_after_truncation,beta=1"
ARMS = ["stock", "esamp:beta=0", "esamp:prefill_warm_start=false", TAT]


# -- (d) the small helpers on synthetic distributions -------------------------------------------------------
def test_pass_at_n_and_expected_distinct_on_a_synthetic_distribution():
    dist = {"7": 0.5, "17": 0.25, "none": 0.25}
    assert exact.pass_at_n(0.5, 1) == 0.5
    assert exact.pass_at_n(0.5, 3) == pytest.approx(1 - 0.125)
    assert exact.pass_at_n(0.0, 16) == 0.0 and exact.pass_at_n(1.0, 16) == 1.0
    # E[distinct] = Σ_a P(a drawn at least once); n = 1: exactly one answer; n = 2 by enumeration.
    assert exact.expected_distinct(dist, 1) == pytest.approx(1.0)
    pairs = sum(pa * pb * (1 if a == b else 2) for a, pa in dist.items() for b, pb in dist.items())
    assert exact.expected_distinct(dist, 2) == pytest.approx(pairs)
    assert exact.expected_distinct(dist, 10_000) == pytest.approx(3.0)
    assert exact.one_digit_mass(dist) == 0.5
    assert exact.one_digit_mass({"-3": 0.2, "12": 0.8}) == pytest.approx(0.2)
    m = exact.task_metrics(dist, "17", 4)
    assert m["pass_at_1"] == 0.25 and m["pass_at_n"] == pytest.approx(1 - 0.75 ** 4)
    assert exact.task_metrics(dist, "8", 4)["pass_at_n"] == 0.0
    assert exact.normalised({"1": 1.0, "2": 3.0}) == {"1": 0.25, "2": 0.75}


def test_answer_extraction_and_mean_sem():
    assert exact.answer_of(" 12\nQ: next") == "12"
    assert exact.answer_of(" -4") == "-4"
    assert exact.answer_of(" 3 apples") == "3"
    assert exact.answer_of("\n 5") == "none"  # the first line has no number
    assert exact.answer_of(" x") == "none"
    s = exact.mean_sem([1.0, 2.0, 3.0])
    assert s["mean"] == 2.0 and s["sem"] == pytest.approx(1 / math.sqrt(3))
    assert exact.mean_sem([4.0])["sem"] is None


def test_arm_specs_are_esamp_config_fields_with_clear_errors():
    arm = exact.parse_arm(" esamp:beta=3, rule=compensated,tilt_bound=1 ")
    assert arm.name == "esamp:beta=3,rule=compensated,tilt_bound=1"
    assert arm.config.beta == 3.0 and arm.config.tilt_bound == 1.0 and arm.config.source_layer == 2
    assert exact.parse_arm("esamp").config == exact.ESampConfig()
    assert exact.parse_arm("stock").is_stock
    for spec, message in (("esamp:beta=11", "esamp_beta must be a finite number in [0, 10]"),
                          ("esamp:betta=1", "unknown ESampConfig field 'betta'"),
                          ("esamp:rule=nope", "esamp_rule must be one of"),
                          ("esamp:fit_gate=maybe", "esamp_fit_gate must be a boolean"),
                          ("esamp:beta", "is not field=value"),
                          ("esamp:beta=1,beta=2", "given twice"),
                          ("esamp:rule=group_presence", "sibling samples"),
                          ("stock:T=2", "takes no settings"),
                          ("tat:Tp=2", "must be 'stock' or 'esamp")):
        with pytest.raises(ValueError, match=re.escape(message)):
            exact.parse_arm(spec)
    with pytest.raises(ValueError, match="given twice"):
        exact.parse_arms("stock;stock")
    for preset in exact.PRESETS:
        assert exact.parse_arms(preset)[0].is_stock


def test_cli_rejects_bad_flags_naming_them(capsys):
    for argv, message in ((["--depth", "0"], "--depth must be an integer in [1, 16], got 0"),
                          (["--min-p", "0"], "--min-p must be in (0, 1], got 0"),
                          (["--arms", "esamp:tilt_bound=-1"],
                           "--arms: arm 'esamp:tilt_bound=-1': esamp_tilt_bound must be a finite number in [0, 10]")):
        with pytest.raises(SystemExit):
            exact.main(argv + ["--output", "unused"])
        assert message in capsys.readouterr().err


def test_replayed_branch_state_and_probabilities_are_the_servers_explore_step(one_intra_op_thread):
    """The replay of a path's decode steps must leave the Explorer exactly where the server's own
    explore_batch leaves it (Distiller, optimiser, fit gate), and reweight the next node the same."""
    from esamp_sgl.core.config import ESampConfig
    from esamp_sgl.core.explorer import Explorer
    from esamp_sgl.core.step import explore_batch

    gen = torch.Generator().manual_seed(0)
    hidden, vocab, positions = 16, 40, 6
    lm_head = torch.randn(vocab, hidden, generator=gen)
    src, tgt = ("residual", 2), ("final_norm",)
    prompt = {src: torch.randn(positions, hidden, generator=gen), tgt: torch.randn(positions, hidden, generator=gen)}

    def node(parent):
        return exact.Node((), parent, {}, logits=torch.randn(vocab, generator=gen) * 2,
                          taps={src: torch.randn(hidden, generator=gen), tgt: torch.randn(hidden, generator=gen)})

    root = node(None)
    child = node(root)
    grandchild = node(child)
    spec = "esamp:beta=2,fit_gate=false,train_steps_per_decode=2,rank=4"
    filters = exact.Filters(temperature=1.0, min_p=0.05)
    arm = exact.ESampArm(exact.parse_arm(spec), filters, hidden, 4, lm_head)
    arm.start_task("g", prompt)
    got = arm.probs(child, [grandchild])[0]  # replays root and child, then reweights grandchild

    config = exact.parse_arm(spec).config.model_copy(update=exact.RUN_OVERRIDES)
    ex = Explorer(config, hidden, lm_head, device="cpu")
    ex.join_group("g")
    ex.warm_start_group("g", prompt[src], prompt[tgt])

    def batch(n):
        t = exact._row_tensors([n], filters)
        return exact.StepBatch(logits=t["logits"], temperatures=t["temperatures"], top_k=t["top_k"],
                               top_p=t["top_p"], min_p=t["min_p"], is_greedy=torch.zeros(1, dtype=torch.bool),
                               plan=StepPlan(slots=torch.zeros(1, dtype=torch.int64),
                                             betas=torch.full((1,), config.beta), any_active=True,
                                             rules=config.rule),
                               source=n.taps[src][None], target=n.taps[tgt][None])

    for n in (root, child):
        explore_batch(ex, batch(n), lambda: torch.zeros(1, dtype=torch.int64))
    for mine, server in zip(exact.snapshot(arm.ex), exact.snapshot(ex), strict=True):
        assert torch.equal(mine, server)
    last = batch(grandchild)
    rw = exact.tilted_candidates(ex, last, exact.predict(ex, last))
    assert bool(rw.applied[0])
    assert got == exact.candidate_probs(rw.cand.ids[0], rw.scores[0])
    assert got != exact.candidate_probs(rw.cand.ids[0], rw.cand.logits[0])  # it does steer
    arm.close()
    ex.close()


def test_restore_puts_back_every_field_of_the_fit_gate(one_intra_op_thread):
    """A branch's replay must not leak into its sibling's: the gate's positions measured included
    (it opens at `gate_window` of them), not only its EMAs and mean."""
    from esamp_sgl.core.explorer import Explorer
    from esamp_sgl.core.step import learn_from_step

    gen = torch.Generator().manual_seed(1)
    hidden = 16
    config = exact.parse_arm("esamp:rank=4,gate_window=4").config.model_copy(update=exact.RUN_OVERRIDES)
    ex = Explorer(config, hidden, torch.randn(40, hidden, generator=gen), device="cpu")
    slot = ex.join_group("g")
    x, y = torch.randn(3, hidden, generator=gen), torch.randn(3, hidden, generator=gen)
    ex.warm_start_group("g", x, y)
    before = [t.clone() for t in (ex.gate.stats, ex.gate.mean_target)]
    state = exact.snapshot(ex)
    plan = StepPlan(slots=torch.tensor([slot]), betas=torch.full((1,), config.beta), any_active=True)
    for _ in range(2):
        source, target = torch.randn(1, hidden, generator=gen), torch.randn(1, hidden, generator=gen)
        learn_from_step(ex, plan, source, target, ex.bank(source, plan.slots), torch.ones(1, dtype=torch.bool))
    ex.trainer.wait()
    assert not torch.equal(ex.gate.measured, before[0][:, 3])  # the steps did measure
    exact.restore(ex, state)
    assert torch.equal(ex.gate.stats, before[0]) and torch.equal(ex.gate.mean_target, before[1])
    ex.close()


# -- the tree on the real model --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lm(model_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    yield model, tokenizer
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tasks():
    return arithmetic_tasks(TASKS, 1, 0)


@pytest.fixture(scope="module")
def result(lm, tasks):
    model, tokenizer = lm
    return exact.exact_passk(model, tokenizer, tasks, ARMS, n=N, min_p=MIN_P, depth=DEPTH, prune=0.0)


def _same_numbers(result, arm, other="stock"):
    for task in result["per_task"]:
        a, b = task["arms"][arm], task["arms"][other]
        assert a["answers"] == b["answers"]
        assert all(a[m] == b[m] for m in exact.METRICS)
    assert all(result["vs_stock"][arm][m]["mean"] == 0.0 for m in exact.METRICS)


def test_beta_zero_gives_exactly_stock(result):
    _same_numbers(result, "esamp:beta=0")
    assert result["per_task"][0]["arms"]["esamp:beta=0"]["telemetry"]["warm_start_steps"] == 50


def test_default_esamp_with_the_gate_shut_at_init_gives_exactly_stock(result):
    _same_numbers(result, "esamp:prefill_warm_start=false")
    assert all(t["arms"]["esamp:prefill_warm_start=false"]["telemetry"]["gate"] == 0.0 for t in result["per_task"])


@torch.no_grad()
def _brute_force(model, tokenizer, prompt, beta):
    """Independent: every path by full-sequence forwards; min-p on softmax(z) at T = 1, then the survivors
    sampled at T' = 1 + beta (beta = 0: stock)."""
    answers = {}

    def walk(path, prob):
        z = model(input_ids=torch.tensor([prompt + path])).logits[0, -1].double()
        p = torch.softmax(z, -1)
        ids = (p >= MIN_P * p.max()).nonzero().squeeze(1)
        q = torch.softmax(z[ids] / (1.0 + beta), -1)
        for tok, qk in zip(ids.tolist(), q.tolist()):
            stop = tok == tokenizer.eos_token_id or "\n" in tokenizer.decode([tok])
            if stop or len(path) + 1 == DEPTH:
                a = exact.answer_of(tokenizer.decode(path + [tok]))
                answers[a] = answers.get(a, 0.0) + prob * qk
            else:
                walk(path + [tok], prob * qk)

    walk([], 1.0)
    return answers


def test_stock_and_temperature_after_truncation_match_a_brute_force(lm, tasks, result):
    model, tokenizer = lm
    differs = False
    for task, row in zip(tasks, result["per_task"]):
        prompt = tokenizer.encode(task["prompt"])
        for arm, beta in (("stock", 0.0), (TAT, 1.0)):
            want = _brute_force(model, tokenizer, prompt, beta)
            got = row["arms"][arm]["answers"]
            assert set(got) == set(want)
            for a in want:
                assert got[a] == pytest.approx(want[a], abs=2e-5), (arm, a)
            assert row["arms"][arm]["pruned_mass"] == 0.0
        differs |= row["arms"][TAT]["answers"] != row["arms"]["stock"]["answers"]
    assert differs
    # T' = 2 flattens the survivors: more distinct answers than stock on every task.
    assert all(t["arms"][TAT]["distinct"] > t["arms"]["stock"]["distinct"] for t in result["per_task"])


def test_deterministic_and_writes_json_and_markdown(lm, tasks, result, tmp_path):
    model, tokenizer = lm
    again = exact.exact_passk(model, tokenizer, tasks[:1], [TAT, "esamp:beta=3"], n=N, min_p=MIN_P,
                              depth=DEPTH, prune=0.0)
    assert again["per_task"][0]["arms"][TAT]["answers"] == result["per_task"][0]["arms"][TAT]["answers"]
    assert again["vs_stock"] is None  # no stock arm: no paired differences
    exact.write_outputs(tmp_path, result, "esamp-sgl eval exact (test)")
    md = (tmp_path / "exact.md").read_text()
    assert "| esamp:beta=0 |" in md and "Δ pass@16 vs stock" in md
    import json

    data = json.loads((tmp_path / "exact.json").read_text())
    assert data["config"]["depth"] == DEPTH and len(data["per_task"]) == TASKS
