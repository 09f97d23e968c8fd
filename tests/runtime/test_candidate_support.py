"""ESamp's candidate set has the support of SGLang's own torch sampler, for every filter combination.

The reference is SGLang 0.5.23's `top_k_top_p_min_p_sampling_from_probs_torch`, run here on CPU: with
`return_filtered_probs=True` it returns the sorted probabilities it zeroed and their token ids, so its
support is read off directly (the ids whose filtered probability is > 0). Its default path (a top-k of
`max_top_k` columns, no returned probabilities) is the one the stock draw takes; draws from it must
land in ESamp's set.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import Tensor

from esamp_sgl.core.candidates import candidate_set

sglang_sampler = pytest.importorskip("sglang.srt.layers.sampler")
from sglang.srt.sampling.sampling_params import TOP_K_ALL  # noqa: E402  (after the importorskip)

VOCAB = 300
TOP_KS = [TOP_K_ALL, 1, 3, 25]  # TOP_K_ALL: SGLang's "top-k off"
TOP_PS = [1.0, 0.9, 0.5]
MIN_PS = [0.0, 0.05, 0.3]
TEMPERATURES = [0.6, 1.4]
COMBOS = list(itertools.product(TOP_KS, TOP_PS, MIN_PS, TEMPERATURES))


def filter_tensors(combos: list[tuple]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(top_k int64, top_p, min_p, temperature) per row, as SGLang's SamplingBatchInfo holds them."""
    top_k, top_p, min_p, temp = zip(*combos)
    return (torch.tensor(top_k, dtype=torch.int64), torch.tensor(top_p), torch.tensor(min_p),
            torch.tensor(temp))


def sglang_support(probs: Tensor, top_k: Tensor, top_p: Tensor, min_p: Tensor) -> list[set[int]]:
    """Per row, the token ids SGLang's torch sampler can draw (non-zero after its filters)."""
    need_min_p = bool((min_p > 0).any())  # batch-wide, as SamplingBatchInfo sets it
    positions = torch.zeros(probs.shape[0], dtype=torch.int64)
    _, filtered, filtered_ids, _ = sglang_sampler.top_k_top_p_min_p_sampling_from_probs_torch(
        probs.clone(), top_k, top_p, min_p, need_min_p, None, positions, return_filtered_probs=True)
    return [set(filtered_ids[r][filtered[r] > 0].tolist()) for r in range(probs.shape[0])]


def sglang_stock_draws(probs: Tensor, top_k: Tensor, top_p: Tensor, min_p: Tensor,
                       draws: int, seed: int) -> Tensor:
    """[draws, R] tokens from the stock draw's own path (max_top_k as SamplingBatchInfo computes it)."""
    need_min_p = bool((min_p > 0).any())
    all_top_k_on = bool(((top_k >= 1) & (top_k < TOP_K_ALL)).all())
    max_top_k = int(top_k.max()) if all_top_k_on else None
    positions = torch.zeros(probs.shape[0], dtype=torch.int64)
    torch.manual_seed(seed)  # SGLang's draw uses the global generator
    return torch.stack([
        sglang_sampler.top_k_top_p_min_p_sampling_from_probs_torch(
            probs.clone(), top_k, top_p, min_p, need_min_p, None, positions, max_top_k=max_top_k).long()
        for _ in range(draws)])


def esamp_support(scaled_logits: Tensor, probs: Tensor, top_k: Tensor, top_p: Tensor, min_p: Tensor,
                  trim: bool) -> list[set[int]]:
    """Per row, ESamp's candidates: the ids it keeps (finite score), with the cap above the vocabulary."""
    cand = candidate_set(scaled_logits, top_k, top_p, min_p, VOCAB, probs=probs, trim=trim)
    assert not cand.truncated.any()
    assert torch.equal(cand.keep, torch.isfinite(cand.logits))
    return [set(cand.ids[r][cand.keep[r]].tolist()) for r in range(probs.shape[0])]


def engine_inputs(logits: Tensor, temperature: Tensor) -> tuple[Tensor, Tensor]:
    """(temperature-scaled logits, probabilities) as SGLang's sampler computes them."""
    scaled = logits / temperature.unsqueeze(-1)
    return scaled, torch.softmax(scaled, dim=-1)


@pytest.mark.parametrize("trim", [False, True])
@pytest.mark.parametrize("with_min_p", [True, False], ids=["batch-with-min-p", "batch-without-min-p"])
def test_candidate_set_is_sglang_support_for_every_filter_combination(trim, with_min_p):
    # One batch holds every combination (rows with different filters side by side); a batch without
    # any min-p row takes SGLang's need_min_p_sampling=False branch.
    combos = [c for c in COMBOS if with_min_p or c[2] == 0.0]
    top_k, top_p, min_p, temp = filter_tensors(combos)
    gen = torch.Generator().manual_seed(21)
    logits = torch.randn(len(combos), VOCAB, generator=gen) * 2.5  # no underflow to p == 0
    scaled, probs = engine_inputs(logits, temp)
    want = sglang_support(probs, top_k, top_p, min_p)
    got = esamp_support(scaled, probs, top_k, top_p, min_p, trim)
    for r, combo in enumerate(combos):
        assert got[r] == want[r], f"row {r} (top_k, top_p, min_p, T) = {combo}"
    # The combinations must matter: top-k and top-p together cut below top-k alone somewhere.
    assert len({len(s) for s in want}) > 5
    # The stock draw's own code path never leaves ESamp's set.
    draws = sglang_stock_draws(probs, top_k, top_p, min_p, draws=50, seed=3)
    for r in range(len(combos)):
        assert set(draws[:, r].tolist()) <= got[r], f"row {r}: stock drew outside ESamp's candidates"


def boundary_ties(probs: Tensor, kept: set[int]) -> set[int]:
    """Tokens with exactly the smallest kept probability: the ones a sort may order either way."""
    boundary = min(float(probs[v]) for v in kept)
    return {int(v) for v in (probs == boundary).nonzero().view(-1)}


@pytest.mark.parametrize("trim", [False, True])
def test_candidate_set_is_sglang_support_with_ties_at_the_top_k_and_top_p_boundary(trim):
    # Integer logits in a tiny range: many exactly equal probabilities, at the top-k and top-p cut too.
    # Which of several equal tokens sits on the cut is up to the sort kernel (SGLang's own stock draw
    # uses topk or sort depending on the batch), so the sets must agree in size and in probability
    # values, and may differ only among the tokens tied at the boundary.
    combos = COMBOS
    top_k, top_p, min_p, temp = filter_tensors(combos)
    gen = torch.Generator().manual_seed(9)
    logits = torch.randint(0, 4, (len(combos), VOCAB), generator=gen).float()
    scaled, probs = engine_inputs(logits, temp)
    want = sglang_support(probs, top_k, top_p, min_p)
    got = esamp_support(scaled, probs, top_k, top_p, min_p, trim)
    ties_cut = 0
    for r, combo in enumerate(combos):
        row = probs[r]
        assert len(got[r]) == len(want[r]), f"row {r} {combo}"
        assert sorted(float(row[v]) for v in got[r]) == sorted(float(row[v]) for v in want[r]), f"row {r}"
        tied = boundary_ties(row, want[r])
        assert got[r] ^ want[r] <= tied, f"row {r} {combo}: differs beyond the boundary ties"
        ties_cut += not tied <= want[r]
    assert ties_cut >= 10  # the data does put ties on the cut (top-k and top-p rows alike)
