"""The step function and the Explorer: stock identity, greedy rows, novelty, lifecycle, telemetry."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from esamp_core_refs import ref_keep, ref_scores
from esamp_sgl.core.candidates import candidate_set, stock_sample
from esamp_sgl.core.config import ESampConfig
from esamp_sgl.core.dlogits import distiller_logits_gather
from esamp_sgl.core.explorer import Explorer
from esamp_sgl.core.reweight import reweighted_logits
from esamp_sgl.core.plan import StepPlan
from esamp_sgl.core.step import StepBatch, explore_batch
from esamp_sgl.core.telemetry import Telemetry, candidate_corr

H, V = 16, 300


def _explorer(**kw):
    """Reweighting mechanics are tested ungated (fit_gate=False); the gate has its own tests."""
    cfg = ESampConfig(**{"rank": 8, "max_groups": 4, "fit_gate": False, **kw})
    w = torch.randn(V, H, generator=torch.Generator().manual_seed(123))
    return Explorer(cfg, H, w, device="cpu")


def _batch(gen, slots, betas, greedy=None, temps=None, top_k=None, top_p=None, min_p=None,
           rules="contrastive"):
    rows = len(slots)
    greedy = torch.zeros(rows, dtype=torch.bool) if greedy is None else torch.tensor(greedy)
    temps = torch.full((rows,), 0.8) if temps is None else temps
    logits = torch.randn(rows, V, generator=gen) * 3
    scaled = torch.where(greedy[:, None], logits, logits / temps[:, None])
    slots = torch.tensor(slots, dtype=torch.int64)
    return StepBatch(
        logits=scaled, temperatures=temps,
        top_k=torch.full((rows,), 40) if top_k is None else top_k,
        top_p=torch.full((rows,), 0.95) if top_p is None else top_p,
        min_p=torch.full((rows,), 0.02) if min_p is None else min_p,
        is_greedy=greedy,
        plan=StepPlan(slots=slots, betas=torch.tensor(betas, dtype=torch.float32),
                      any_active=bool((slots >= 0).any()), rules=rules),
        source=torch.randn(rows, H, generator=gen), target=torch.randn(rows, H, generator=gen),
        probs=torch.softmax(scaled, dim=-1))


def _stock(batch, gen):
    """The engine's stock sampler: greedy rows argmax, others SGLang's torch sampler."""
    def run():
        tok = stock_sample(batch.probs, batch.top_k, batch.top_p, batch.min_p, gen)
        return torch.where(batch.is_greedy, batch.logits.argmax(-1), tok)
    return run


def test_rows_without_slot_or_with_beta_zero_are_bit_identical_to_stock():
    ex = _explorer(train_mode="sync")
    a, b = ex.join_group("a"), ex.join_group("b")
    slots = [a, -1, a, b, b, -1, a, b]
    betas = [0.8, 0.8, 0.0, 2.0, 0.0, 0.0, 1.0, 0.5]
    greedy = [False, False, False, False, False, True, True, False]  # a greedy row with a slot too
    data_gen, stock_gen, ref_gen = (torch.Generator().manual_seed(s) for s in (1, 2, 2))
    changed = 0
    for _ in range(12):
        batch = _batch(data_gen, slots, betas, greedy=greedy)
        tokens = explore_batch(ex, batch, _stock(batch, stock_gen))
        ref = _stock(batch, ref_gen)()
        esamp_rows = [i for i in range(8) if slots[i] >= 0 and betas[i] > 0 and not greedy[i]]
        for i in range(8):
            if i not in esamp_rows:
                assert int(tokens[i]) == int(ref[i])
        changed += sum(int(tokens[i]) != int(ref[i]) for i in esamp_rows)
        # ESamp rows stay inside their own candidate set.
        cand = candidate_set(batch.logits, batch.top_k, batch.top_p, batch.min_p, 1024,
                             probs=batch.probs)
        for i in esamp_rows:
            assert int(tokens[i]) in set(cand.ids[i][cand.keep[i]].tolist())
    assert changed > 0  # the ESamp rows really are sampled differently
    assert ex.report("a")["tokens_reweighted"] == 12  # row 0 only (row 2: β=0, row 6: greedy)
    assert ex.report("b")["tokens_reweighted"] == 24  # rows 3 and 7
    assert ex.report("a")["steps_trained"] == 12
    ex.close()


def test_inactive_batch_returns_stock_tokens_and_does_nothing():
    ex = _explorer()
    batch = _batch(torch.Generator().manual_seed(3), [-1, -1, -1], [0.5, 0.5, 0.5])
    assert not batch.any_active
    before = {k: v.clone() for k, v in ex.bank.params.items()}
    tokens = explore_batch(ex, batch, _stock(batch, torch.Generator().manual_seed(4)))
    assert torch.equal(tokens, _stock(batch, torch.Generator().manual_seed(4))())
    for k, v in ex.bank.params.items():
        assert torch.equal(v, before[k])


def test_the_stock_draw_runs_only_when_some_row_keeps_its_stock_token():
    """On CPU a batch whose every row ESamp redraws skips the engine's draw (its tokens would all be
    discarded); one row that keeps its stock token (β = 0 here) brings the draw back, once."""
    def counted(batch, gen):
        draw = _stock(batch, gen)

        def run():
            calls.append(1)
            return draw()
        return run

    ex = _explorer()
    a = ex.join_group("a")
    for betas, expected_calls in (([1.0, 1.0, 1.0], 0), ([1.0, 0.0, 1.0], 1)):
        calls = []
        batch = _batch(torch.Generator().manual_seed(5), [a, a, a], betas)
        tokens = explore_batch(ex, batch, counted(batch, torch.Generator().manual_seed(6)))
        assert len(calls) == expected_calls
        assert tokens.shape == (3,) and tokens.dtype == torch.int64
        if expected_calls:
            assert int(tokens[1]) == int(_stock(batch, torch.Generator().manual_seed(6))()[1])
    ex.close()


@pytest.mark.parametrize("rule", ["contrastive", "compensated"])
def test_greedy_rows_take_the_argmax_of_the_reweighted_logits_when_asked(rule):
    ex = _explorer(apply_to_greedy=True, greedy_min_p=0.05, rule=rule)
    s = ex.join_group("g")
    gen = torch.Generator().manual_seed(5)
    for _ in range(3):
        batch = _batch(gen, [s, s, s, -1], [1.5, 1.5, 0.0, 1.5], greedy=[True, True, True, True],
                       rules=rule)
        ex.trainer.wait()
        h_hat = ex.bank(batch.source, batch.slots)
        tokens = explore_batch(ex, batch, _stock(batch, torch.Generator().manual_seed(0)))
        for i in range(4):
            if i >= 2:  # β = 0 and no slot: the stock argmax
                assert int(tokens[i]) == int(batch.logits[i].argmax())
                continue
            p_row = torch.softmax(batch.logits[i], -1).tolist()
            kept = [v for v, _ in ref_keep(p_row, 0, 1.0, 0.05)]
            ref = ref_scores(batch.logits[i].double().tolist(), kept, h_hat[i].double().tolist(),
                             ex.lm_head_weight.double().tolist(), 1.0, 1.5, rule, 1.0)
            assert int(tokens[i]) == max(ref, key=ref.get)


def test_greedy_rows_untouched_by_default():
    ex = _explorer()
    s = ex.join_group("g")
    batch = _batch(torch.Generator().manual_seed(6), [s, s], [3.0, 3.0], greedy=[True, True])
    tokens = explore_batch(ex, batch, _stock(batch, None))
    assert torch.equal(tokens, batch.logits.argmax(-1))
    assert ex.report("g")["tokens_reweighted"] == 0
    assert ex.report("g")["steps_trained"] == 1  # still trains on the greedy rows' pairs


def test_novelty_repeated_patterns_become_predictable_and_are_demoted():
    """Train a group on one repeated (context → state) pattern whose deep state points at token a.
    Afterwards that pattern is predicted better than unseen ones, and when the model is
    indifferent between a and b, ESamp prefers b (the continuation it has not seen)."""
    gen = torch.Generator().manual_seed(8)
    ex = _explorer(lr=1e-2, beta=1.0)
    fresh = _explorer(lr=1e-2, beta=1.0)
    w = ex.lm_head_weight
    tok_a, tok_b = 7, 42
    s = ex.join_group("seen")
    fresh.join_group("seen")
    x_rep = F.layer_norm(torch.randn(H, generator=gen), (H,))
    y_rep = F.layer_norm(w[tok_a], (H,))  # the deep state that produced token a

    def unseen(n):
        return (F.layer_norm(torch.randn(n, H, generator=gen), (H,)),
                F.layer_norm(torch.randn(n, H, generator=gen), (H,)))

    rows = 4
    for _ in range(150):
        batch = _batch(gen, [s] * rows, [1.0] * rows)
        batch.source = x_rep + 0.05 * torch.randn(rows, H, generator=gen)
        batch.target = y_rep.expand(rows, H)
        explore_batch(ex, batch, _stock(batch, gen))
    ex.trainer.wait()
    slot = torch.full((1,), s)
    err_seen = float((ex.bank(x_rep[None], slot) - y_rep).square().mean())
    xu, yu = unseen(32)
    err_unseen = float((ex.bank(xu, slot.expand(32)) - yu).square().mean(-1).mean())
    assert err_seen < 0.2 * err_unseen

    # The model is indifferent between a and b; everything else is far below.
    logits = torch.full((1, V), -20.0)
    logits[0, tok_a] = logits[0, tok_b] = 5.0
    def esamp_probs(explorer, bound=None):
        # Raw d (bound None) compares what the Distillers learned; the server's bounded tilt
        # caps a two-way tie's tilt at the floor, which keeps the direction only.
        h_hat = explorer.bank(x_rep[None], slot)
        cand = candidate_set(logits, torch.zeros(1, dtype=torch.int64), torch.ones(1),
                             torch.full((1,), 0.01), 16)
        d = distiller_logits_gather(h_hat, explorer.lm_head_weight, cand.ids)
        p = torch.softmax(reweighted_logits(cand.logits, d, torch.ones(1), torch.ones(1),
                                            "contrastive", bound), -1)[0]
        ids = cand.ids[0].tolist()
        return float(p[ids.index(tok_a)]), float(p[ids.index(tok_b)])
    pa_bounded, pb_bounded = esamp_probs(ex, bound=1.0)
    assert pa_bounded < pb_bounded
    pa, pb = esamp_probs(ex)
    pa0, _ = esamp_probs(fresh)
    assert pa < pb  # the repeated continuation is demoted ...
    assert pa < pa0  # ... and more so than before training
    assert pa < 0.3


def test_slot_lifecycle_capacity_and_reinit_on_reuse():
    ex = _explorer(max_groups=2)
    a = ex.join_group("a")
    assert ex.join_group("a") == a  # a second member shares the slot
    b = ex.join_group("b")
    assert {a, b} == {0, 1}
    assert ex.join_group("c") is None and ex.bank_full_count == 1  # full → stock sampling
    assert ex.report("c") == {"group": "c", "slot": None}
    gen = torch.Generator().manual_seed(9)
    for _ in range(3):
        batch = _batch(gen, [a, a, b, -1], [0.5, 0.5, 0.5, 0.5])
        explore_batch(ex, batch, _stock(batch, gen))
    assert ex.report("a")["steps_trained"] == 3
    assert ex.leave_group("a") is None  # one member left
    assert ex.leave_group("a") == a  # last member: slot freed and re-initialised
    assert ex.leave_group("c") is None  # the stock group's member leaves: the group is gone
    c = ex.join_group("c")
    assert c == a
    for k, v in ex.bank.params.items():
        assert torch.equal(v[c], ex.bank.template[k])
        assert float(ex.trainer.exp_avg[k][c].abs().sum()) == 0.0
    assert float(ex.trainer.step_count[c]) == 0.0
    snap = ex.report("c")
    assert snap["steps_trained"] == 0 and snap["predictions"] == 0 and snap["mean_loss"] is None
    assert ex.report("b")["steps_trained"] == 3  # the other group kept its state


def test_group_counts_follow_each_groups_tokens_and_reset_with_the_slot():
    ex = _explorer(max_groups=3)
    a, b = ex.join_group("a"), ex.join_group("b")
    gen = torch.Generator().manual_seed(41)
    seen = {a: torch.zeros(V), b: torch.zeros(V)}
    for step in range(4):
        batch = _batch(gen, [a, b, a, -1], [1.0, 1.0, 1.0, 0.0], rules="group_presence")
        tokens = explore_batch(ex, batch, _stock(batch, gen))
        for row, slot in enumerate([a, b, a]):
            seen[slot][tokens[row]] += 1
    assert torch.equal(ex.group_counts[a], seen[a]) and torch.equal(ex.group_counts[b], seen[b])
    assert float(ex.group_counts[2].sum()) == 0.0  # the free slot and stock rows count nothing
    # A large presence penalty forbids every token the group already produced, when others remain.
    batch = _batch(gen, [a, a], [10.0, 10.0], rules="group_presence", top_k=torch.full((2,), 0),
                   top_p=torch.ones(2), min_p=torch.zeros(2))
    batch.logits = torch.zeros(2, V)  # flat: every token is a candidate with the same logit
    batch.probs = torch.softmax(batch.logits, -1)
    tokens = explore_batch(ex, batch, _stock(batch, gen))
    assert all(seen[a][t] == 0 for t in tokens.tolist())
    ex.leave_group("a")
    assert float(ex.group_counts[a].sum()) == 0.0


def test_frozen_rows_do_not_train_their_group():
    ex = _explorer()
    frozen, trained = ex.join_group("frozen"), ex.join_group("trained")
    before = {k: v[frozen].clone() for k, v in ex.bank.params.items()}
    gen = torch.Generator().manual_seed(43)
    for _ in range(3):
        batch = _batch(gen, [frozen, trained, frozen], [1.0, 1.0, 1.0])
        batch.plan.train = torch.tensor([False, True, False])
        explore_batch(ex, batch, _stock(batch, gen))
    assert ex.report("frozen")["steps_trained"] == 0
    assert ex.report("frozen")["predictions"] == 6  # still predicts and reweights
    assert ex.report("trained")["steps_trained"] == 3
    assert all(torch.equal(v[frozen], before[k]) for k, v in ex.bank.params.items())


def _gated_run(ex, gen, slots, steps, beta=3.0):
    """Run `steps` steps; per step (tokens, the stock tokens of the same draw)."""
    out = []
    for _ in range(steps):
        batch = _batch(gen, slots, [beta] * len(slots), rules="compensated")
        state = gen.get_state()
        stock = _stock(batch, gen)()
        gen.set_state(state)
        out.append((explore_batch(ex, batch, _stock(batch, gen)), stock))
    return out


def test_a_distiller_at_init_leaves_every_token_exactly_stock():
    ex = Explorer(ESampConfig(rank=8, max_groups=4, beta=3.0), H,
                  torch.randn(V, H, generator=torch.Generator().manual_seed(123)), device="cpu")
    a = ex.join_group("a")
    (tokens, stock), = _gated_run(ex, torch.Generator().manual_seed(47), [a, a, a], 1)
    assert torch.equal(tokens, stock)
    t = ex.report("a")
    assert t["gate"] == 0.0 and t["gate_r2"] is None and t["tokens_reweighted"] == 0


def test_gate_follows_the_held_out_fit_and_opens_after_a_good_warm_start():
    """g = clamp(R̄²/r2_full, 0, 1) with R̄² from an EMA of SSE and SST (checked by hand), and a
    warm start on a learnable prompt opens it from the first token."""
    gen = torch.Generator().manual_seed(5)
    ex = Explorer(ESampConfig(rank=8, max_groups=4, beta=3.0, gate_window=4, gate_r2_full=0.5,
                              warm_start_steps=200, warm_start_lr=1e-2), H,
                  torch.randn(V, H, generator=torch.Generator().manual_seed(123)), device="cpu")
    a = ex.join_group("a")
    # A learnable map: target = LN(source @ M) for a fixed M.
    m = torch.randn(H, H, generator=gen) / H ** 0.5

    def pairs(n):
        x = F.layer_norm(torch.randn(n, H, generator=gen), (H,))
        return x, F.layer_norm(x @ m, (H,))
    xs, ys = pairs(64)
    assert ex.warm_start_group("a", xs, ys)
    t = ex.report("a")
    h = ex.bank(xs, torch.full((64,), a))
    sse = float((h - ys).square().sum(-1).mean())
    sst = float((ys - ys.mean(0)).square().sum(-1).mean())
    assert t["warm_start_r2"] == pytest.approx(1 - sse / sst, rel=1e-4)
    assert t["warm_start_r2"] > 0 and t["warm_start_positions"] == 64
    assert t["gate"] == pytest.approx(min(1.0, max(0.0, (1 - sse / sst) / 0.5)), rel=1e-4)
    assert t["gate"] > 0

    # One decode step: the EMA moves a quarter of the way to this step's held-out SSE/SST.
    ema_sse, ema_sst, mu, count = sse, sst, ys.mean(0), 64
    x1, y1 = pairs(3)
    batch = _batch(gen, [a] * 3, [3.0] * 3, rules="compensated")
    batch.source, batch.target = x1, y1
    pred = ex.bank(x1, torch.full((3,), a))
    explore_batch(ex, batch, _stock(batch, gen))
    step_sse = float((pred - y1).square().sum(-1).mean())
    step_sst = float((y1 - mu).square().sum(-1).mean())
    ema_sse += 0.25 * (step_sse - ema_sse)
    ema_sst += 0.25 * (step_sst - ema_sst)
    t = ex.report("a")
    assert t["gate_r2"] == pytest.approx(1 - ema_sse / ema_sst, rel=1e-4)
    assert t["tokens_reweighted"] == 3  # the gate was open for this step
    assert torch.allclose(ex.gate.mean_target[a], (mu * count + y1.sum(0)) / (count + 3), atol=1e-5)


def test_gate_stays_shut_for_an_unlearnable_stream_and_controls_are_not_gated():
    gen = torch.Generator().manual_seed(6)
    ex = Explorer(ESampConfig(rank=8, max_groups=4, beta=3.0, prefill_warm_start=False), H,
                  torch.randn(V, H, generator=torch.Generator().manual_seed(123)), device="cpu")
    a, b = ex.join_group("a"), ex.join_group("b")
    for tokens, stock in _gated_run(ex, gen, [a, a], 6):  # targets are noise: R̄² < 0
        assert torch.equal(tokens, stock)
    assert ex.report("a")["gate"] == 0.0 and ex.report("a")["gate_r2"] < 0
    # The random prior and temperature after truncation are baselines: ungated from the first token.
    batch = _batch(gen, [b, b], [3.0, 3.0], rules=["random_prior", "temperature_after_truncation"])
    explore_batch(ex, batch, _stock(batch, gen))
    assert ex.report("b")["tokens_reweighted"] == 2


def test_explore_step_under_inference_mode():
    with torch.inference_mode():
        ex = _explorer()
        s = ex.join_group("g")
        gen = torch.Generator().manual_seed(10)
        for _ in range(2):
            batch = _batch(gen, [s, s], [0.5, 0.5])
            explore_batch(ex, batch, _stock(batch, gen))
        ex.leave_group("g")
    assert ex.report("g") == {"group": "g", "slot": None}


def test_telemetry_r2_and_corr_match_direct_formulas():
    gen = torch.Generator().manual_seed(12)
    tel = Telemetry(2, 6)
    target = torch.randn(10, 6, generator=gen)
    pred = target + 0.5 * torch.randn(10, 6, generator=gen)
    slot = torch.tensor([1] * 10)
    tel.record_prediction(slot[:4], torch.ones(4, dtype=torch.bool), pred[:4], target[:4])
    tel.record_prediction(slot[4:], torch.ones(6, dtype=torch.bool), pred[4:], target[4:])
    t = target.double()
    sse = float((pred.double() - t).square().sum())
    sst = float((t - t.mean(0)).square().sum())
    snap = tel.snapshot(1)
    assert snap["r2"] == pytest.approx(1 - sse / sst, rel=1e-6)
    assert snap["mean_novelty"] == pytest.approx(float((pred - target).square().mean()), rel=1e-5)
    assert tel.snapshot(0)["r2"] is None and tel.snapshot(0)["predictions"] == 0

    d = torch.randn(3, 8, generator=gen)
    z = torch.randn(3, 8, generator=gen)
    keep = torch.ones(3, 8, dtype=torch.bool)
    keep[1, 5:] = False
    keep[2, 2:] = False  # 2 candidates: not enough for a correlation
    corr, ok = candidate_corr(d, torch.where(keep, z, float("-inf")), keep)
    assert ok.tolist() == [True, True, False]
    for r, n in ((0, 8), (1, 5)):
        want = np.corrcoef(d[r, :n].numpy(), z[r, :n].numpy())[0, 1]
        assert float(corr[r]) == pytest.approx(want, abs=1e-5)


def test_the_gate_updates_its_state_in_place():
    """Telemetry reads the gate's tensors on another stream under the overlap scheduler (CUDA): an
    update writes into the same storage instead of rebinding new tensors (issue 21, defect 1)."""
    from esamp_sgl.core.gate import FitGate

    gate = FitGate(2, H, "cpu", window=2)
    state = (gate.ema_sse, gate.ema_sst, gate.mean_target, gate.count, gate.measured)
    pointers = [t.data_ptr() for t in state]
    gen = torch.Generator().manual_seed(0)
    slots = torch.tensor([0, 0, 1])
    for _ in range(3):
        gate.update(slots, torch.ones(3, dtype=torch.bool), torch.randn(3, H, generator=gen),
                    torch.randn(3, H, generator=gen))
    assert [t.data_ptr() for t in (gate.ema_sse, gate.ema_sst, gate.mean_target, gate.count,
                                   gate.measured)] == pointers
    assert bool((gate.ema_sst[:2] > 0).all()) and gate.count[:2].tolist() == [6.0, 3.0]
