"""Applying the rules (rules.py) on the candidates with the bounded tilt, and drawing a token from
the reweighted scores. (The Distiller's logits d on the candidates: dlogits.py.)

The bounded tilt. A per-token signal (the Distiller's d or the random prior) enters a rule as

    δ̃ = (δ − mean_C δ) · min(1, b · max(σ_C(ℓ), σ₀) / σ_C(δ)),   δ = s/T,  ℓ = z/T,

mean and standard deviation σ_C over the row's candidates C, b = `tilt_bound` (default 1),
σ₀ = TILT_FLOOR = 0.5 nat (so that among near-ties, where the model is indifferent and the choice is
exploration's to make, the tilt is not forced to zero). The
centring changes nothing after softmax (a per-row constant); the bound is what matters: min-p
caps the spread of ℓ over the candidates at ln(1/min_p), nothing capped d's, and an untrained
Distiller's d (a per-token prior) spread ~4x wider than ℓ at SmolLM2 scale and outweighed the
model (shared/reference/esamp-signal-analysis.md). With the bound the tilt can at most match the
model's own spread; how much of it is applied is β times the group's fit gate (gate.py).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from esamp_sgl.core.rules import BOUNDED_SIGNALS, RULE_SIGNAL, RULES

TILT_FLOOR = 0.5  # σ₀ above: the least spread (nats) a bounded tilt may have, whatever the model's


def bounded_tilt(scaled_signal: Tensor, scaled_logits: Tensor, bound: float) -> Tensor:
    """δ̃ = (δ − mean_C δ) · min(1, b·max(σ_C(ℓ), σ₀)/σ_C(δ)) over each row's candidates C (finite
    ℓ); zero off the candidates and on rows with one candidate. See the module docstring."""
    keep = torch.isfinite(scaled_logits)
    w = keep.to(torch.float32)
    n = w.sum(-1, keepdim=True).clamp(min=1.0)

    def centred(x: Tensor) -> Tensor:
        x = torch.where(keep, x, torch.zeros_like(x))
        return (x - x.sum(-1, keepdim=True) / n) * w

    delta, ell = centred(scaled_signal), centred(scaled_logits)
    sd_delta = delta.square().sum(-1, keepdim=True).div(n).sqrt()
    sd_ell = ell.square().sum(-1, keepdim=True).div(n).sqrt()
    scale = (bound * sd_ell.clamp(min=TILT_FLOOR) / sd_delta.clamp(min=1e-12)).clamp(max=1.0)
    return delta * scale


def random_prior_logits(vocab: int, std: float, seed: int, device: torch.device) -> Tensor:
    """The random-prior control's fixed per-token vector [V] (seeded; bounded like d when used)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    return (torch.randn(vocab, generator=gen) * std).to(device)


def reweighted_logits(cand_logits: Tensor, signals: Tensor | dict[str, Tensor], temperature: Tensor,
                      beta: Tensor, rules: str | Sequence[str], tilt_bound: float | None = 1.0) -> Tensor:
    """Apply the rule(s) on the candidates. cand_logits [R, K] (-inf = not a candidate);
    signals: the raw distiller logits d [R, K], or {signal name: [R, K]} holding every signal the
    rules read ('none' needs nothing); temperature/beta [R]; `rules` is one name or one per row.
    The distiller, noise and random signals are bounded by `tilt_bound` (None or 0: raw, the paper's)."""
    signals = signals if isinstance(signals, dict) else {"distiller": signals}
    inv_t = 1.0 / temperature.to(cand_logits.device, torch.float32).unsqueeze(-1)
    b = beta.to(cand_logits.device, torch.float32).unsqueeze(-1)
    scaled_signals: dict[str, Tensor] = {}

    def scaled(signal: str) -> Tensor:
        if signal not in scaled_signals:
            s = signals[signal] * inv_t
            if signal in BOUNDED_SIGNALS and tilt_bound:
                s = bounded_tilt(s, cand_logits, tilt_bound)
            scaled_signals[signal] = s
        return scaled_signals[signal]

    def apply(name: str) -> Tensor:
        signal = RULE_SIGNAL[name]
        return RULES[name](cand_logits, cand_logits if signal == "none" else scaled(signal), b)

    if isinstance(rules, str):
        out = apply(rules)
    else:
        if len(rules) != cand_logits.shape[0]:
            raise ValueError(f"rules has {len(rules)} entries for {cand_logits.shape[0]} rows")
        names = sorted(set(rules))
        out = apply(names[0])
        for name in names[1:]:
            rows = host_mask([r == name for r in rules], cand_logits.device)
            out = torch.where(rows.unsqueeze(-1), apply(name), out)
    # A non-candidate stays out whatever d is (and -inf·(1+β) − β·d must not become NaN).
    return torch.where(cand_logits == float("-inf"), cand_logits, out)


def host_mask(values: list[bool], device: torch.device) -> Tensor:
    """A host list as a device bool tensor; on CUDA via pinned memory, so the copy is async."""
    mask = torch.tensor(values, dtype=torch.bool)
    if device.type == "cuda":
        return mask.pin_memory().to(device, non_blocking=True)
    return mask.to(device)


def draw_tokens(scores: Tensor, cand_ids: Tensor, greedy: Tensor,
                generator: torch.Generator | None, backend: str = "torch") -> Tensor:
    """Draw one token per row from softmax(scores) over the row's ids `cand_ids` (the candidates, or
    the whole vocabulary; argmax for greedy rows). Returns [R] int64 token ids. The torch backend uses
    the Gumbel-max trick with `generator` (ESamp's own, never the engine's)."""
    if backend != "torch":  # the resolved backend (explorer.resolve_backend): torch is the only one
        raise ValueError(f"draw_tokens needs the resolved backend 'torch', got {backend!r}")
    u = torch.rand(scores.shape, generator=generator, device=scores.device, dtype=torch.float32)
    gumbel = -torch.log(-torch.log(u))  # u in [0, 1): finite or -inf, never +inf
    pick = torch.argmax(scores + gumbel, dim=-1)
    pick = torch.where(greedy.to(pick.device), torch.argmax(scores, dim=-1), pick)
    return cand_ids.gather(1, pick.unsqueeze(-1)).squeeze(-1).to(torch.int64)
