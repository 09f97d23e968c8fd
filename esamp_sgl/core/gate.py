"""Steer only as far as the Distiller knows: a per-group gate g ∈ [0, 1] from the Distiller's fit.

A Distiller rule's strength is β_eff = β·g, with

    g = clamp(R̄² / r2_full, 0, 1),   R̄² = 1 − EMA(SSE) / EMA(SST)

over the group's recent decode steps: SSE = ‖ĥ − y‖² of the prediction actually used for sampling
(made before training on that step: an honest, held-out measure), SST = ‖y − μ‖² around the
group's running mean target μ (prompt positions included). So R̄² > 0 means the Distiller predicts
the group's deep state better than its mean does. The EMA has a time constant of `window` steps,
and g stays 0 until at least `window` positions have been measured (two lucky rows do not open it).

At init nothing has been measured: g = 0, β_eff = 0, and every token is exactly stock's. A prefill
warm start seeds the gate with its in-sample fit on the prompt (`seed`), so a group that warm-started
well steers from its first token; decode steps then replace that estimate with held-out ones.

Everything is a masked device op on [slots + 1] tensors (the last entry is the sink): no host sync.
"""

from __future__ import annotations

import torch
from torch import Tensor

from esamp_sgl.core.fit import RowFit, row_fit


class FitGate:
    def __init__(self, slots: int, hidden: int, device: torch.device | str, *, window: int = 16,
                 r2_full: float = 0.5, enabled: bool = True) -> None:
        self.slots, self.sink = slots, slots
        self.device = torch.device(device)
        self.decay = 1.0 - 1.0 / window
        self.r2_full = r2_full
        self.enabled = enabled
        n = slots + 1
        self.mean_target = torch.zeros(n, hidden, device=self.device)
        # The scalar state, one row per slot, so that a step updates it in a few launches; each
        # field is a column view: EMA(SSE), EMA(SST), targets in μ, positions behind the estimate.
        self.stats = torch.zeros(n, 4, device=self.device)
        self.ema_sse, self.ema_sst, self.count, self.measured = self.stats.unbind(-1)
        self.window = window

    def _index(self, slots: Tensor) -> Tensor:
        slots = slots.to(device=self.device, dtype=torch.int64)
        return torch.where(slots < 0, torch.full_like(slots, self.sink), slots)

    def r2(self) -> Tensor:
        """[slots + 1] the running held-out R̄² (NaN where nothing has been measured)."""
        measured = self.ema_sst > 0
        return torch.where(measured, 1.0 - self.ema_sse / self.ema_sst.clamp(min=1e-30),
                           torch.full_like(self.ema_sst, float("nan")))

    def values(self) -> Tensor:
        """[slots + 1] g per slot (0 where nothing has been measured)."""
        r2 = self.r2()
        g = (torch.nan_to_num(r2, nan=0.0) / self.r2_full).clamp(0.0, 1.0)
        g = torch.where(self.measured >= self.window, g, torch.zeros_like(g))
        return g if self.enabled else torch.ones_like(g)

    def factor(self, slots: Tensor) -> Tensor:
        """[R] g of each row's group (0 for rows without a slot)."""
        g = self.values().index_select(0, self._index(slots))
        return torch.where(slots.to(self.device) >= 0, g, torch.zeros_like(g))

    @torch.no_grad()
    def update(self, slots: Tensor, mask: Tensor, h_hat: Tensor, target: Tensor) -> None:
        """Fold one step's predictions into the slots' running fit; then their targets into μ."""
        self.update_fit(row_fit(slots, mask, h_hat, target, self.sink))

    @torch.no_grad()
    def update_fit(self, fit: RowFit) -> None:
        """update() on a step's fit computed once (core/fit.py), shared with the telemetry."""
        idx = fit.idx.to(self.device)
        # SST needs a mean from earlier positions: rows of a slot seen for the first time only feed μ.
        scored = fit.ok & (self.count.index_select(0, idx) > 0)
        sst = (fit.y - self.mean_target.index_select(0, idx)).square().sum(-1)
        per_row = torch.stack([torch.where(scored, fit.sq, 0.0), torch.where(scored, sst, 0.0),
                               scored.float(), fit.ok.float()], -1)
        # Per slot: Σ SSE, Σ SST, scored rows n, rows k that feed μ.
        sums = torch.zeros_like(self.stats).index_add_(0, idx, per_row)
        n, k = sums[:, 2], sums[:, 3]
        step = sums[:, :2] / n.clamp(min=1.0).unsqueeze(-1)  # this step's mean SSE, SST
        a = torch.where(self.ema_sst <= 0, 1.0, 1.0 - self.decay).unsqueeze(-1)  # first: take the step's
        ema = self.stats[:, :2]
        # In place: a reader of these tensors on another stream (telemetry) keeps reading the same storage.
        ema.copy_(torch.where((n > 0).unsqueeze(-1), ema + a * (step - ema), ema))
        self.measured += n
        # μ ← running mean of every target seen (the sink's value is never read).
        y_sum = torch.zeros_like(self.mean_target).index_add_(0, idx, fit.y_ok)
        total = self.count + k
        self.mean_target.copy_(torch.where(
            (k > 0).unsqueeze(-1),
            (self.mean_target * self.count.unsqueeze(-1) + y_sum) / total.clamp(min=1.0).unsqueeze(-1),
            self.mean_target))
        self.count.copy_(total)

    @torch.no_grad()
    def seed(self, slot: Tensor, h_hat: Tensor, target: Tensor) -> Tensor:
        """Start a slot's estimate from a fit on P positions (the warm start's prompt pairs):
        EMA(SSE), EMA(SST) = their means, μ = the mean target. slot: 0-d int64. Returns R² [1]."""
        y = target.to(device=self.device, dtype=torch.float32)
        mu = y.mean(0)
        sse = (h_hat - y).square().sum(-1).mean().reshape(1)
        sst = (y - mu).square().sum(-1).mean().reshape(1)
        idx = slot.reshape(1).to(self.device)
        self.ema_sse.index_copy_(0, idx, sse)
        self.ema_sst.index_copy_(0, idx, sst)
        self.mean_target.index_copy_(0, idx, mu.unsqueeze(0))
        self.count.index_copy_(0, idx, torch.full((1,), float(y.shape[0]), device=self.device))
        self.measured.index_copy_(0, idx, torch.full((1,), float(y.shape[0]), device=self.device))
        return 1.0 - sse / sst.clamp(min=1e-30)

    @torch.no_grad()
    def reset(self, slot_ids: Tensor) -> None:
        idx = slot_ids.to(device=self.device, dtype=torch.int64).reshape(-1)
        for t in (self.mean_target, self.stats):
            t.index_fill_(0, idx, 0.0)
