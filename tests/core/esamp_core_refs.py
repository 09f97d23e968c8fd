"""Slow, loop-based references for the core tests (float64, one row / candidate at a time)."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def ref_keep(probs_row: list[float], top_k: int, top_p: float, min_p: float) -> list[tuple[int, float]]:
    """SGLang's filter rules, one token at a time: [(token, p)] kept, most likely first.
    Ties are ordered by token id (any order is valid; tests compare tie-aware)."""
    vocab = len(probs_row)
    k = vocab if top_k <= 0 or top_k > vocab else top_k
    order = sorted(range(vocab), key=lambda v: (-probs_row[v], v))
    p_max = probs_row[order[0]]
    kept, cum = [], 0.0
    for rank, v in enumerate(order):
        p = probs_row[v]
        exclusive = cum
        cum += p
        if rank >= k or exclusive > top_p or p < min_p * p_max:
            continue
        kept.append((v, p))
    return kept


def ref_scores(logits_row: list[float], kept: list[int], h_hat: list[float],
               w: list[list[float]], temperature: float, beta: float, rule: str,
               bound: float | None = None) -> dict[int, float]:
    """ℓ' for each kept token, with d_v = Σ_h ĥ_h · W[v, h] computed by a loop; with `bound`,
    δ = d/T is centred over the kept tokens and its population std capped at bound × max(ℓ's, 0.5)."""
    delta = {v: math.fsum(h_hat[j] * w[v][j] for j in range(len(h_hat))) / temperature for v in kept}
    if bound is not None:
        def mean(xs):
            return math.fsum(xs) / len(xs)

        def std(xs):
            m = mean(xs)
            return math.sqrt(math.fsum((x - m) ** 2 for x in xs) / len(xs))
        sd_d, sd_l = std(list(delta.values())), std([logits_row[v] for v in kept])
        scale = min(1.0, bound * max(sd_l, 0.5) / sd_d) if sd_d > 1e-12 else 0.0
        m = mean(list(delta.values()))
        delta = {v: (x - m) * scale for v, x in delta.items()}
    out = {}
    for v in kept:
        z = logits_row[v]
        if rule == "contrastive":
            out[v] = (1 + beta) * z - beta * delta[v]
        elif rule == "compensated":
            out[v] = z - beta / (1 + beta) * delta[v]
        else:
            raise KeyError(rule)
    return out


def softmax_dict(scores: dict[int, float]) -> dict[int, float]:
    m = max(scores.values())
    ex = {v: math.exp(s - m) for v, s in scores.items()}
    tot = math.fsum(ex.values())
    return {v: e / tot for v, e in ex.items()}


def ref_distill(x: Tensor, ag: Tensor, b: Tensor, c: Tensor, ln_w: Tensor, ln_b: Tensor) -> Tensor:
    """One row, one slot, written out without batching (float64)."""
    x, ag, b, c, ln_w, ln_b = (t.double() for t in (x, ag, b, c, ln_w, ln_b))
    r = c.shape[0]
    a, g = ag[:, :r], ag[:, r:]
    h = (x @ a) * torch.nn.functional.silu(x @ g + c)
    u = x + h @ b
    mu = u.mean()
    var = ((u - mu) ** 2).mean()
    return (u - mu) / torch.sqrt(var + 1e-5) * ln_w + ln_b


def assert_same_candidates(got: dict[int, float], want: list[tuple[int, float]],
                           probs_row: list[float], tol: float = 0.0) -> None:
    """Tie-aware: the kept probability multisets agree, and any difference in ids is among
    tokens tied (within tol) at the boundary probability."""
    got_p = sorted((probs_row[v] for v in got), reverse=True)
    want_p = sorted((p for _, p in want), reverse=True)
    assert len(got_p) == len(want_p), (len(got_p), len(want_p))
    for a, b in zip(got_p, want_p):
        assert abs(a - b) <= tol, (a, b)
    want_ids = {v for v, _ in want}
    if want_p:
        boundary = want_p[-1]
        for v in set(got) ^ want_ids:
            assert abs(probs_row[v] - boundary) <= tol, (v, probs_row[v], boundary)
