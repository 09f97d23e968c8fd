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
        self.count = torch.zeros(n, device=self.device)
        self.ema_sse = torch.zeros(n, device=self.device)
        self.ema_sst = torch.zeros(n, device=self.device)
        self.window = window
        self.measured = torch.zeros(n, device=self.device)  # positions behind the estimate

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
        y = target.to(device=self.device, dtype=torch.float32)
        idx = self._index(slots)
        ok = mask.to(self.device) & (slots.to(self.device) >= 0)
        ok &= torch.isfinite(h_hat).all(-1) & torch.isfinite(y).all(-1)
        w = ok.to(torch.float32)
        # SST needs a mean from earlier positions: rows of a slot seen for the first time only feed μ.
        scored = w * (self.count.index_select(0, idx) > 0).to(torch.float32)
        mu = self.mean_target.index_select(0, idx)
        zero = torch.zeros_like(w)
        sse = torch.where(ok, (h_hat - y).square().sum(-1), zero) * scored
        sst = torch.where(ok, (y - mu).square().sum(-1), zero) * scored
        n = torch.zeros_like(self.count).index_add_(0, idx, scored)
        step_sse = torch.zeros_like(self.count).index_add_(0, idx, sse) / n.clamp(min=1.0)
        step_sst = torch.zeros_like(self.count).index_add_(0, idx, sst) / n.clamp(min=1.0)
        first = self.ema_sst <= 0
        a = torch.where(first, torch.ones_like(n), torch.full_like(n, 1.0 - self.decay))
        seen = n > 0
        self.measured += n
        # In place: a reader of these tensors on another stream (telemetry) keeps reading the same storage.
        self.ema_sse.copy_(torch.where(seen, self.ema_sse + a * (step_sse - self.ema_sse), self.ema_sse))
        self.ema_sst.copy_(torch.where(seen, self.ema_sst + a * (step_sst - self.ema_sst), self.ema_sst))
        # μ ← running mean of every target seen (the sink's value is never read).
        y_sum = torch.zeros_like(self.mean_target).index_add_(0, idx, torch.where(ok.unsqueeze(-1), y, 0.0))
        k = torch.zeros_like(self.count).index_add_(0, idx, w)
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
        for t in (self.mean_target, self.count, self.ema_sse, self.ema_sst, self.measured):
            t.index_fill_(0, idx, 0.0)
