"""The candidate set: tokens that survive top-k, top-p and min-p on the unmodified distribution.

Semantics are those of SGLang's `top_k_top_p_min_p_sampling_from_probs_torch`: sort the
probabilities descending; drop rank >= top_k; drop tokens whose *exclusive* cumulative sum
exceeds top_p; drop tokens with p < min_p · p_max. SGLang takes that cumsum before it zeroes the
top-k tail and p_max is rank 0, so top-p and min-p read the original probabilities, never a
renormalised top-k (tests/runtime/test_candidate_support.py checks this against SGLang's code). Each rule keeps a prefix of the sorted order,
so the candidate set is a prefix too and the top-K probabilities are enough to compute it
exactly (the exclusive cumsum at rank i only needs ranks < i). The only approximation is the
static cap K: when more than K tokens survive, the K most likely are kept and the row is flagged
`truncated`.

Ties: which of several tokens with exactly equal probability sits at a rank boundary is up to the
sort/topk kernel in SGLang and here alike; the kept probability values are the same.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class CandidateSet:
    ids: Tensor  # [R, K] int64 token ids, most likely first
    logits: Tensor  # [R, K] fp32 scaled logits of the candidates, -inf where not kept
    keep: Tensor  # [R, K] bool, a prefix of each row
    truncated: Tensor  # [R] bool: more than K tokens survived the filters
    # [R] bool: truncated by a width below the cap (width.py): not all survivors known, so the row keeps
    # its stock token. None: K is the cap, whose truncation keeps the K most likely (as configured).
    partial: Tensor | None = None


def effective_top_k(top_k: Tensor, vocab: int) -> Tensor:
    """top_k <= 0 or >= vocab means 'all' (SGLang encodes 'all' as 1 << 30)."""
    top_k = top_k.to(torch.int64)
    return torch.where((top_k <= 0) | (top_k > vocab), torch.full_like(top_k, vocab), top_k)


def keep_mask_sorted(p_sorted: Tensor, top_k: Tensor, top_p: Tensor, min_p: Tensor) -> Tensor:
    """Keep mask for probabilities sorted descending along the last axis ([R, N], N <= V);
    exact for every rank < N because each rule only looks at higher-ranked entries and p_max."""
    rank = torch.arange(p_sorted.shape[-1], device=p_sorted.device).unsqueeze(0)
    exclusive = torch.cumsum(p_sorted, dim=-1) - p_sorted
    keep = rank < top_k.to(p_sorted.device).unsqueeze(-1)
    keep &= ~(exclusive > top_p.to(p_sorted).unsqueeze(-1))
    keep &= ~(p_sorted < (p_sorted[:, :1] * min_p.to(p_sorted).unsqueeze(-1)))
    return keep


# With trim (CPU), first try this many candidates; widen to K only if a row has more survivors.
FIRST_PASS_K = 64


def candidate_logits(logits: Tensor | None, probs: Tensor, ids: Tensor) -> Tensor:
    """Scaled logits of the candidates: gathered from `logits`, or, when an engine only has
    probabilities, log(p) of the candidates alone (equal up to a per-row constant, and it spares a
    full-vocabulary log)."""
    if logits is None:
        return probs.gather(1, ids).float().log()
    return logits.gather(1, ids).float()


def candidate_set(logits: Tensor | None, top_k: Tensor, top_p: Tensor, min_p: Tensor,
                  max_candidates: int, probs: Tensor | None = None,
                  trim: bool = False) -> CandidateSet:
    """Candidates of each row. `logits` are temperature-scaled logits or log-probs ([R, V]; a
    per-row constant does not matter); `probs`, if given, are the engine's own probabilities and
    are used for the filters so that they match the stock sampler bit for bit.
    `trim=True` reads the batch's largest kept count on the host (use it on CPU, where that is
    free): a cheap top-64 pass is tried first, and K is cut to the largest kept count."""
    if probs is None:
        if logits is None:
            raise ValueError("candidate_set needs logits or probs")
        probs = torch.softmax(logits.float(), dim=-1)
    vocab = probs.shape[1]
    k = min(max_candidates, vocab)
    top_k = effective_top_k(top_k, vocab)
    ids, keep, truncated = None, None, None
    if trim and k > FIRST_PASS_K:
        ids, keep, truncated = _top_candidates(probs, top_k, top_p, min_p, FIRST_PASS_K)
        if bool(truncated.any()):
            ids = None  # some row keeps more than the first pass saw
        else:
            truncated.zero_()
    if ids is None:
        ids, keep, truncated = _top_candidates(probs, top_k, top_p, min_p, k)
    if trim:
        n = max(int(keep.sum(-1).max()), 1)
        keep, ids = keep[:, :n].contiguous(), ids[:, :n].contiguous()
    z = candidate_logits(logits, probs, ids)
    z = torch.where(keep, z, torch.full_like(z, float("-inf")))
    return CandidateSet(ids=ids, logits=z, keep=keep, truncated=truncated)


def _top_candidates(probs: Tensor, top_k: Tensor, top_p: Tensor, min_p: Tensor,
                    k: int) -> tuple[Tensor, Tensor, Tensor]:
    """(ids [R, k], keep [R, k], truncated [R]) from the k + 1 most likely tokens."""
    rows, vocab = probs.shape
    q = min(k + 1, vocab)  # one extra rank tells whether the cap cut off a survivor
    p_top, ids = torch.topk(probs, q, dim=-1, sorted=True)
    keep = keep_mask_sorted(p_top.float(), top_k, top_p, min_p)
    if q > k:
        truncated = keep[:, k].clone()
    else:
        truncated = torch.zeros(rows, dtype=torch.bool, device=probs.device)
    return ids[:, :k], keep[:, :k], truncated


def stock_keep_mask(probs: Tensor, top_k: Tensor, top_p: Tensor,
                    min_p: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Full-vocabulary version (sorted probs, sort ids, keep mask) as SGLang's torch sampler
    computes it. O(V log V) per row; the reference for tests and the stock sampler below."""
    p_sorted, idx = probs.sort(dim=-1, descending=True)
    keep = keep_mask_sorted(p_sorted, effective_top_k(top_k, probs.shape[-1]), top_p, min_p)
    return p_sorted, idx, keep


def stock_sample(probs: Tensor, top_k: Tensor, top_p: Tensor, min_p: Tensor,
                 generator: torch.Generator | None = None) -> Tensor:
    """Equivalent of SGLang's `top_k_top_p_min_p_sampling_from_probs_torch` with an explicit
    generator: zero the filtered-out sorted probabilities, multinomial, map back. Returns [R] int64."""
    p_sorted, idx, keep = stock_keep_mask(probs, top_k, top_p, min_p)
    p_sorted = torch.where(keep, p_sorted, torch.zeros_like(p_sorted))
    pick = torch.multinomial(p_sorted, num_samples=1, generator=generator)
    return torch.gather(idx, 1, pick).view(-1)

