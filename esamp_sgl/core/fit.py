"""The held-out fit of one step's predictions, per row, computed once for its two readers.

The telemetry (R², novelty, non-finite counts) and the fit gate (EMA of SSE/SST, the running mean
target) both need each row's slot index, whether the row counts, the target in fp32 and ‖ĥ − y‖².
`row_fit` computes them once per step; each reader then folds them into its own per-slot state
with one masked index_add of a stacked block (no host sync).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def finite(x: Tensor) -> Tensor:
    """isfinite(x) in 2 kernels (torch.isfinite decomposes into 4): x·0 is 0 exactly when x is
    finite, NaN otherwise."""
    return (x * 0) == 0


def rows_finite(x: Tensor) -> Tensor:
    """[R] isfinite(x).all(-1) for x [R, H] in 3 kernels: Σ x·0 is 0 exactly when every entry is
    finite (no overflow: every term is ±0), NaN otherwise."""
    return (x * 0).sum(-1) == 0


@dataclass(frozen=True)
class RowFit:
    idx: Tensor  # [R] int64: the row's slot, or the sink (no slot, or not in the mask)
    ok: Tensor  # [R] bool: in the mask, with a slot, ‖ĥ − y‖² and the target finite
    nonfinite: Tensor  # [R] bool: in the mask, with a slot, a NaN/inf entry in ĥ (sampled stock)
    y: Tensor  # [R, H] fp32 target
    y_ok: Tensor  # [R, H] the target where ok, else 0
    sq: Tensor  # [R] ‖ĥ − y‖² where ok, else 0


@torch.no_grad()
def row_fit(slots: Tensor, mask: Tensor, h_hat: Tensor, target: Tensor, sink: int) -> RowFit:
    """Each row's fit of its prediction h_hat [R, H] to target [R, H]; rows outside `mask` or
    without a slot (slot < 0) index the sink and count for nothing."""
    y = target.to(device=h_hat.device, dtype=torch.float32)
    slots = slots.to(device=h_hat.device, dtype=torch.int64)
    masked = mask.to(h_hat.device) & (slots >= 0)
    idx = torch.where(masked, slots, torch.full_like(slots, sink))
    sq = (h_hat - y).square().sum(-1)  # not finite iff an entry of h_hat or y is not (or it overflowed)
    ok = masked & finite(sq) & rows_finite(y)
    return RowFit(idx=idx, ok=ok, nonfinite=masked & ~rows_finite(h_hat), y=y,
                  y_ok=torch.where(ok.unsqueeze(-1), y, 0.0), sq=torch.where(ok, sq, 0.0))
