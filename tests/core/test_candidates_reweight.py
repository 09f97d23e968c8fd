"""Candidate set, distiller logits, rules and candidate sampling against slow loop references."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from esamp_core_refs import assert_same_candidates, ref_keep, ref_scores, softmax_dict
from esamp_sgl.core.candidates import candidate_set, stock_keep_mask, stock_sample
from esamp_sgl.core.dlogits import distiller_logits_gather
from esamp_sgl.core.reweight import draw_tokens, reweighted_logits
from esamp_sgl.core.rules import RULES
from esamp_sgl.core.plan import StepPlan
from esamp_sgl.core.step import StepBatch, row_filters

TOP_KS = [0, 1, 5, 40]
TOP_PS = [1.0, 0.9, 0.5]
MIN_PS = [0.0, 0.05, 0.3]
COMBOS = list(itertools.product(TOP_KS, TOP_PS, MIN_PS))


def _batch(logits, temps, top_k, top_p, min_p, greedy, betas, h):
    rows = logits.shape[0]
    return StepBatch(logits=logits, temperatures=temps, top_k=top_k, top_p=top_p, min_p=min_p,
                     is_greedy=greedy, plan=StepPlan(slots=torch.zeros(rows, dtype=torch.int64), betas=betas,
                                                     any_active=True),
                     source=h, target=h)


def _pipeline(batch, h_hat, w, rules, greedy_min_p=0.1, max_candidates=1024, trim=False, bound=1.0):
    f = row_filters(batch, greedy_min_p)
    probs = torch.softmax(batch.logits.float(), dim=-1)
    cand = candidate_set(batch.logits, f.top_k, f.top_p, f.min_p, max_candidates, probs=probs,
                         trim=trim)
    d = distiller_logits_gather(h_hat, w, cand.ids)
    counts = (cand.ids % 3).float()  # stand-in group counts for the baseline rules: 0, 1, 2
    signals = {"distiller": d, "noise": d.roll(1, -1), "random": d.flip(-1), "presence": (counts > 0).float(),
               "frequency": counts}
    scores = reweighted_logits(cand.logits, signals, f.temperature, batch.betas, rules, bound)
    return f, probs, cand, scores


@pytest.mark.parametrize("rule", ["contrastive", "compensated"])
@pytest.mark.parametrize("trim,bound", [(False, None), (False, 1.0), (True, 1.0), (False, 0.3)])
def test_reweighting_matches_slow_reference_every_filter_combination(rule, trim, bound):
    gen = torch.Generator().manual_seed(7)
    rows, vocab, hidden = len(COMBOS), 300, 12
    logits = torch.randn(rows, vocab, generator=gen) * 2.5
    temps = torch.rand(rows, generator=gen) * 1.2 + 0.3
    scaled = logits / temps[:, None]
    top_k = torch.tensor([c[0] for c in COMBOS])
    top_p = torch.tensor([c[1] for c in COMBOS])
    min_p = torch.tensor([c[2] for c in COMBOS])
    greedy = torch.zeros(rows, dtype=torch.bool)
    greedy[::5] = True  # mixed greedy / random rows in one batch
    betas = torch.rand(rows, generator=gen) * 2
    h_hat = torch.randn(rows, hidden, generator=gen)
    w = torch.randn(vocab, hidden, generator=gen) * 0.5
    # Greedy rows arrive at T = 1 (SGLang rewrites greedy to T=1, top_k=1).
    scaled = torch.where(greedy[:, None], logits, scaled)
    batch = _batch(scaled, temps, top_k, top_p, min_p, greedy, betas, h_hat)
    f, probs, cand, scores = _pipeline(batch, h_hat, w, rule, greedy_min_p=0.2, trim=trim, bound=bound)
    tokens = draw_tokens(scores, cand.ids, greedy, torch.Generator().manual_seed(0))

    for r in range(rows):
        p_row = probs[r].tolist()
        if greedy[r]:
            want = ref_keep(p_row, 0, 1.0, 0.2)
            temp = 1.0
        else:
            want = ref_keep(p_row, int(top_k[r]), float(top_p[r]), float(min_p[r]))
            temp = float(temps[r])
        got_ids = cand.ids[r][cand.keep[r]].tolist()
        got_scores = dict(zip(got_ids, scores[r][cand.keep[r]].tolist()))
        assert_same_candidates(got_scores, want, p_row)
        ref = ref_scores(scaled[r].double().tolist(), got_ids, h_hat[r].double().tolist(),
                         w.double().tolist(), temp, float(betas[r]), rule, bound)
        for v in got_ids:
            assert got_scores[v] == pytest.approx(ref[v], rel=1e-5, abs=1e-4)
        # Non-candidates can never be drawn.
        assert torch.isneginf(scores[r][~cand.keep[r]]).all()
        if greedy[r]:
            assert int(tokens[r]) == max(ref, key=ref.get)
        else:
            assert int(tokens[r]) in ref


def test_full_vocabulary_mask_matches_reference_and_stock_sampler_stays_in_it():
    gen = torch.Generator().manual_seed(3)
    rows, vocab = len(COMBOS), 200
    probs = torch.softmax(torch.randn(rows, vocab, generator=gen) * 3, dim=-1)
    top_k = torch.tensor([c[0] for c in COMBOS])
    top_p = torch.tensor([c[1] for c in COMBOS])
    min_p = torch.tensor([c[2] for c in COMBOS])
    p_sorted, idx, keep = stock_keep_mask(probs, top_k, top_p, min_p)
    sample_gen = torch.Generator().manual_seed(11)
    for _ in range(5):
        tok = stock_sample(probs, top_k, top_p, min_p, sample_gen)
        for r in range(rows):
            assert int(tok[r]) in set(idx[r][keep[r]].tolist())
    for r in range(rows):
        want = ref_keep(probs[r].tolist(), int(top_k[r]), float(top_p[r]), float(min_p[r]))
        got = dict.fromkeys(idx[r][keep[r]].tolist(), 0.0)
        assert_same_candidates(got, want, probs[r].tolist())


def test_candidate_set_equals_full_sort_mask_when_nothing_is_truncated():
    gen = torch.Generator().manual_seed(5)
    rows, vocab = len(COMBOS), 500
    logits = torch.randn(rows, vocab, generator=gen) * 4
    probs = torch.softmax(logits, -1)
    top_k = torch.tensor([c[0] for c in COMBOS])
    top_p = torch.tensor([c[1] for c in COMBOS])
    min_p = torch.tensor([c[2] for c in COMBOS])
    _, idx, keep = stock_keep_mask(probs, top_k, top_p, min_p)
    cand = candidate_set(logits, top_k, top_p, min_p, vocab, probs=probs)
    assert not cand.truncated.any()
    for r in range(rows):
        assert set(cand.ids[r][cand.keep[r]].tolist()) == set(idx[r][keep[r]].tolist())


def test_ties_are_handled_by_value():
    # Integer logits in a tiny range: many exact ties, including at the top-k boundary.
    gen = torch.Generator().manual_seed(9)
    rows, vocab, hidden = 24, 60, 8
    logits = torch.randint(0, 4, (rows, vocab), generator=gen).float()
    top_k = torch.tensor([3, 7, 0, 10] * 6)
    top_p = torch.tensor([1.0, 0.6, 0.8, 1.0, 0.3, 0.95] * 4)
    min_p = torch.tensor([0.0, 0.1, 0.5] * 8)
    betas = torch.full((rows,), 0.7)
    h_hat = torch.randn(rows, hidden, generator=gen)
    w = torch.randn(vocab, hidden, generator=gen)
    greedy = torch.zeros(rows, dtype=torch.bool)
    batch = _batch(logits, torch.ones(rows), top_k, top_p, min_p, greedy, betas, h_hat)
    _, probs, cand, scores = _pipeline(batch, h_hat, w, "contrastive")
    for r in range(rows):
        p_row = probs[r].tolist()
        want = ref_keep(p_row, int(top_k[r]), float(top_p[r]), float(min_p[r]))
        got_ids = cand.ids[r][cand.keep[r]].tolist()
        assert_same_candidates(dict.fromkeys(got_ids, 0.0), want, p_row, tol=1e-7)
        ref = ref_scores(logits[r].double().tolist(), got_ids, h_hat[r].double().tolist(),
                         w.double().tolist(), 1.0, 0.7, "contrastive", 1.0)
        for v, s in zip(got_ids, scores[r][cand.keep[r]].tolist()):
            assert s == pytest.approx(ref[v], rel=1e-5, abs=1e-4)


def test_large_vocabulary_with_few_candidates():
    gen = torch.Generator().manual_seed(13)
    rows, vocab, hidden = 4, 50_000, 16
    logits = torch.randn(rows, vocab, generator=gen)
    peaks = torch.randint(0, vocab, (rows, 6), generator=gen)
    logits.scatter_(1, peaks, torch.tensor([20.0, 19.5, 19.0, 18.0, 17.0, 16.5]).expand(rows, 6))
    top_k = torch.zeros(rows, dtype=torch.int64)
    top_p = torch.tensor([1.0, 0.95, 0.9, 1.0])
    min_p = torch.tensor([0.05, 0.0, 0.1, 0.02])
    h_hat = torch.randn(rows, hidden, generator=gen)
    w = torch.randn(vocab, hidden, generator=gen)
    betas = torch.tensor([0.5, 1.0, 2.0, 0.1])
    batch = _batch(logits, torch.ones(rows), top_k, top_p, min_p,
                   torch.zeros(rows, dtype=torch.bool), betas, h_hat)
    _, probs, cand, scores = _pipeline(batch, h_hat, w, "compensated", trim=True)
    assert cand.ids.shape[1] < 64  # trimmed to the few survivors, not K
    for r in range(rows):
        p_row = probs[r].tolist()
        want = ref_keep(p_row, 0, float(top_p[r]), float(min_p[r]))
        got_ids = cand.ids[r][cand.keep[r]].tolist()
        assert_same_candidates(dict.fromkeys(got_ids, 0.0), want, p_row)
        ref = softmax_dict(ref_scores(logits[r].double().tolist(), got_ids,
                                      h_hat[r].double().tolist(),
                                      [w[v].double().tolist() if v in got_ids else []
                                       for v in range(vocab)],
                                      1.0, float(betas[r]), "compensated", 1.0))
        got = torch.softmax(scores[r], -1)
        for k, v in enumerate(cand.ids[r].tolist()):
            if cand.keep[r, k]:
                assert float(got[k]) == pytest.approx(ref[v], rel=1e-5, abs=1e-7)


def test_cap_k_keeps_most_likely_and_flags_truncation():
    gen = torch.Generator().manual_seed(17)
    logits = torch.randn(3, 1000, generator=gen) * 0.1  # flat: almost everything survives
    z = torch.zeros(3)
    cand = candidate_set(logits, torch.tensor([0, 0, 20]), torch.ones(3), z, 64)
    assert cand.truncated.tolist() == [True, True, False]
    assert cand.keep[:2].all() and int(cand.keep[2].sum()) == 20
    top = torch.topk(logits[0], 64).indices
    assert set(cand.ids[0].tolist()) == set(top.tolist())


@pytest.mark.parametrize("rule", sorted(RULES))
def test_beta_zero_is_the_unmodified_distribution(rule):
    gen = torch.Generator().manual_seed(19)
    rows, vocab, hidden = 6, 400, 8
    logits = torch.randn(rows, vocab, generator=gen) * 3
    t = torch.full((rows,), 0.7)
    scaled = logits / t[:, None]
    h_hat = torch.randn(rows, hidden, generator=gen) * 10  # d is large; β = 0 must ignore it
    w = torch.randn(vocab, hidden, generator=gen)
    tk, tp, mp = torch.full((rows,), 50), torch.full((rows,), 0.9), torch.full((rows,), 0.02)
    batch = _batch(scaled, t, tk, tp, mp, torch.zeros(rows, dtype=torch.bool),
                   torch.zeros(rows), h_hat)
    _, probs, cand, scores = _pipeline(batch, h_hat, w, rule)
    assert torch.equal(scores, cand.logits)  # exactly ℓ on the candidates
    # ... and so the candidate distribution equals the stock filtered, renormalised one.
    p_sorted, idx, keep = stock_keep_mask(probs, tk, tp, mp)
    stock = torch.where(keep, p_sorted, 0.0)
    stock = stock / stock.sum(-1, keepdim=True)
    mine = torch.softmax(scores, -1)
    for r in range(rows):
        want = dict(zip(idx[r].tolist(), stock[r].tolist()))
        for k, v in enumerate(cand.ids[r].tolist()):
            assert float(mine[r, k]) == pytest.approx(want[v], abs=1e-6)


def test_mixed_rules_per_row():
    gen = torch.Generator().manual_seed(23)
    cand_logits = torch.randn(4, 10, generator=gen)
    d = torch.randn(4, 10, generator=gen)
    t, beta = torch.tensor([1.0, 0.5, 2.0, 1.0]), torch.tensor([0.3, 1.0, 2.0, 0.0])
    rules = ["contrastive", "compensated", "temperature_after_truncation", "contrastive"]
    mixed = reweighted_logits(cand_logits, d, t, beta, rules)
    assert not torch.equal(mixed[2], cand_logits[2])
    for r, name in enumerate(rules):
        alone = reweighted_logits(cand_logits[r:r + 1], d[r:r + 1], t[r:r + 1], beta[r:r + 1], name)
        assert torch.equal(mixed[r], alone[0])


def test_control_and_baseline_rules_follow_their_formulas():
    gen = torch.Generator().manual_seed(24)
    z = torch.randn(3, 12, generator=gen) * 2  # raw logits
    t = torch.tensor([1.0, 0.5, 2.0])
    beta = torch.tensor([0.5, 1.0, 3.0])
    d = torch.randn(3, 12, generator=gen) * 5
    counts = torch.randint(0, 4, (3, 12), generator=gen).float()
    prior = torch.randn(3, 12, generator=gen) * 50
    signals = {"distiller": d, "random": prior, "presence": (counts > 0).float(), "frequency": counts}
    scaled = z / t[:, None]
    b = beta[:, None]
    # The bounded random prior: centred, spread exactly the model's (it is drawn 25x wider).
    pc = prior / t[:, None] - (prior / t[:, None]).mean(-1, keepdim=True)
    bounded = pc * (scaled.std(-1, unbiased=False).clamp(min=0.5) / pc.std(-1, unbiased=False))[:, None]
    want = {
        "sharpen": (1 + b) * z / t[:, None],  # = contrastive with d = 0
        "group_presence": (z - b * (counts > 0).float()) / t[:, None],
        "group_frequency": (z - b * counts) / t[:, None],
        "contrastive": ((1 + b) * z - b * d) / t[:, None],
        "temperature_after_truncation": z / (t[:, None] * (1 + b)),
        "random_prior": scaled - b / (1 + b) * bounded,
    }
    for rule, expected in want.items():
        got = reweighted_logits(scaled, signals, t, beta, rule,
                                tilt_bound=None if rule == "contrastive" else 1.0)
        assert torch.allclose(got, expected, atol=1e-4), rule
    assert torch.allclose(reweighted_logits(scaled, signals, t, beta, "sharpen"),
                          reweighted_logits(scaled, torch.zeros_like(d), t, beta, "contrastive"))


def test_distiller_logits_gather_equal_dense_projection_and_chunk():
    import esamp_sgl.core.dlogits as dl

    gen = torch.Generator().manual_seed(29)
    h = torch.randn(5, 24, generator=gen)
    w = torch.randn(700, 24, generator=gen).to(torch.bfloat16)
    ids = torch.randint(0, 700, (5, 33), generator=gen)
    dense = h @ w.float().T
    want = dense.gather(1, ids)
    old = dl._CHUNK_ELEMS
    try:
        dl._CHUNK_ELEMS = 5 * 24 * 4  # force 4-candidate chunks
        got = distiller_logits_gather(h, w, ids)
    finally:
        dl._CHUNK_ELEMS = old
    assert got.dtype == torch.float32
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-5)


def test_sampling_follows_softmax_over_candidates():
    scores = torch.tensor([[2.0, 1.0, 0.0, -1.0, float("-inf"), float("-inf")]])
    n = 40_000
    ids = torch.tensor([[10, 11, 12, 13, 14, 15]]).expand(n, 6)
    tok = draw_tokens(scores.expand(n, 6), ids, torch.zeros(n, dtype=torch.bool),
                      torch.Generator().manual_seed(1))
    want = torch.softmax(scores[0], -1)
    for k in range(6):
        freq = float((tok == 10 + k).float().mean())
        p = float(want[k])
        assert abs(freq - p) <= 5 * math.sqrt(max(p * (1 - p), 1e-12) / n) + 1e-9


def test_same_generator_seed_same_samples():
    gen = torch.Generator().manual_seed(31)
    scores = torch.randn(8, 20, generator=gen)
    ids = torch.arange(20).expand(8, 20)
    greedy = torch.zeros(8, dtype=torch.bool)
    a = draw_tokens(scores, ids, greedy, torch.Generator().manual_seed(5))
    b = draw_tokens(scores, ids, greedy, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_trimmed_first_pass_widens_when_a_row_has_many_survivors():
    gen = torch.Generator().manual_seed(37)
    logits = torch.randn(3, 2000, generator=gen)
    logits[0] *= 0.05  # flat: ~all 2000 tokens survive top-p 0.95 -> capped at K
    logits[1, :150] += 8.0  # ~150 survivors: more than the first pass's 64
    logits[2, 3] += 30.0  # one survivor
    args = (torch.zeros(3, dtype=torch.int64), torch.full((3,), 0.95), torch.zeros(3))
    full = candidate_set(logits, *args, 1024)
    trimmed = candidate_set(logits, *args, 1024, trim=True)
    assert trimmed.truncated.tolist() == full.truncated.tolist() == [True, False, False]
    for r in range(3):
        assert set(trimmed.ids[r][trimmed.keep[r]].tolist()) == set(full.ids[r][full.keep[r]].tolist())
    few = candidate_set(logits[2:], *(a[2:] for a in args), 1024, trim=True)
    assert few.ids.shape == (1, 1) and not few.truncated.any()
