"""Per-slot telemetry kept as device accumulators; the host reads them only in `snapshot`.

Updates are masked index_adds into `[slots + 1]` tensors (the last entry is the sink that
absorbs rows without a slot), so recording never syncs. Two writers never touch the same tensor:
the trainer (possibly on a side stream or thread) writes the `train_*` fields; the sampling step
writes the others.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

_F64 = torch.float64


def candidate_corr(d: Tensor, z: Tensor, keep: Tensor, min_count: int = 3) -> tuple[Tensor, Tensor]:
    """Pearson correlation of d and z over each row's kept candidates with finite z.
    Returns (corr [R], valid [R]); rows with fewer than `min_count` candidates are not valid."""
    mask = keep & torch.isfinite(z) & torch.isfinite(d)
    w = mask.to(torch.float32)
    n = w.sum(-1)
    zs = torch.where(mask, z, torch.zeros_like(z))
    ds = torch.where(mask, d, torch.zeros_like(d))
    nz = n.clamp(min=1)
    zc = (zs - (zs.sum(-1) / nz).unsqueeze(-1)) * w
    dc = (ds - (ds.sum(-1) / nz).unsqueeze(-1)) * w
    cov = (zc * dc).sum(-1)
    den = torch.sqrt((zc * zc).sum(-1) * (dc * dc).sum(-1))
    valid = (n >= min_count) & (den > 0)
    corr = torch.where(valid, cov / den.clamp(min=1e-30), torch.zeros_like(cov))
    return corr, valid


class Telemetry:
    def __init__(self, slots: int, hidden: int, device: torch.device | str = "cpu") -> None:
        self.slots, self.hidden = slots, hidden
        self.sink = slots
        self.device = torch.device(device)
        n = slots + 1
        with torch.inference_mode(False):
            z = lambda *s: torch.zeros(*s, dtype=_F64, device=self.device)  # noqa: E731
            # trainer-side
            self.train_steps = z(n)
            self.train_loss_sum = z(n)
            self.train_loss_count = z(n)
            self.train_nonfinite = z(n)
            self.warm_steps = z(n)
            self.warm_loss_before = z(n)
            self.warm_loss_after = z(n)
            self.warm_r2 = z(n)
            self.warm_positions = z(n)
            # sampling-side
            self.novelty_sum = z(n)
            self.novelty_count = z(n)
            self.sse = z(n)
            self.target_sum = z(n, hidden)
            self.target_sq_sum = z(n)
            self.reweighted = z(n)
            self.truncated = z(n)
            self.corr_sum = z(n)
            self.corr_count = z(n)
            # Rows whose prediction had a NaN/inf entry: step.py samples them stock (fault isolation).
            self.nonfinite_predictions = z(n)

    def _fields(self) -> list[Tensor]:
        return [v for v in vars(self).values() if isinstance(v, Tensor)]

    def _index(self, slot: Tensor, mask: Tensor) -> Tensor:
        slot = slot.to(device=self.device, dtype=torch.int64)
        return torch.where(mask & (slot >= 0), slot, torch.full_like(slot, self.sink))

    @staticmethod
    def _masked(v: Tensor, mask: Tensor) -> Tensor:
        v = v.to(_F64)
        return torch.where(mask, v, torch.zeros_like(v))

    # -- trainer side ---------------------------------------------------------------------------
    @torch.no_grad()
    def record_train(self, slot: Tensor, loss: Tensor, counted: Tensor, steps: Tensor,
                     nonfinite: Tensor) -> None:
        """Per trained entry: the loss of its first step (counted=valid), optimizer steps taken,
        and whether it was reset for a non-finite loss."""
        idx = self._index(slot, torch.ones_like(counted))
        self.train_loss_sum.index_add_(0, idx, self._masked(loss, counted))
        self.train_loss_count.index_add_(0, idx, counted.to(_F64))
        self.train_steps.index_add_(0, idx, steps.to(_F64))
        self.train_nonfinite.index_add_(0, idx, nonfinite.to(_F64))

    @torch.no_grad()
    def record_warm_start(self, slot: Tensor, before: Tensor, after: Tensor, counted: Tensor,
                          steps: int) -> None:
        idx = self._index(slot, counted)
        self.warm_loss_before.index_copy_(0, idx, self._masked(before, counted))
        self.warm_loss_after.index_copy_(0, idx, self._masked(after, counted))
        self.warm_steps.index_add_(0, idx, counted.to(_F64) * steps)

    @torch.no_grad()
    def record_warm_fit(self, slot: Tensor, r2: Tensor, positions: int) -> None:
        """The warm-started Distiller's R² on the prompt pairs it was trained on (in-sample)."""
        idx = self._index(slot, torch.ones_like(slot, dtype=torch.bool))
        self.warm_r2.index_copy_(0, idx, r2.to(_F64))
        self.warm_positions.index_fill_(0, idx, float(positions))

    # -- sampling side --------------------------------------------------------------------------
    @torch.no_grad()
    def record_prediction(self, slot: Tensor, mask: Tensor, h_hat: Tensor, target: Tensor) -> None:
        """Novelty (per-row MSE of the prediction used for sampling) and R² accumulators."""
        target = target.to(device=h_hat.device, dtype=torch.float32)
        idx = self._index(slot, mask)
        err = (h_hat - target).square()
        ok = mask & torch.isfinite(err).all(-1) & torch.isfinite(target).all(-1)
        self.novelty_sum.index_add_(0, idx, self._masked(err.mean(-1), ok))
        self.novelty_count.index_add_(0, idx, ok.to(_F64))
        self.nonfinite_predictions.index_add_(0, idx, (mask & ~torch.isfinite(h_hat).all(-1)).to(_F64))
        self.sse.index_add_(0, idx, self._masked(err.sum(-1), ok))
        t64 = torch.where(ok.unsqueeze(-1), target, torch.zeros_like(target)).to(_F64)
        self.target_sum.index_add_(0, idx, t64)
        self.target_sq_sum.index_add_(0, idx, t64.square().sum(-1))

    @torch.no_grad()
    def record_candidates(self, slot: Tensor, has_slot: Tensor, reweighted: Tensor,
                          truncated: Tensor, corr: Tensor, corr_valid: Tensor) -> None:
        idx = self._index(slot, has_slot)
        self.reweighted.index_add_(0, idx, (reweighted & has_slot).to(_F64))
        self.truncated.index_add_(0, idx, (truncated & has_slot).to(_F64))
        self.corr_sum.index_add_(0, idx, self._masked(corr, corr_valid & has_slot))
        self.corr_count.index_add_(0, idx, (corr_valid & has_slot).to(_F64))

    # -- lifecycle / host reads -----------------------------------------------------------------
    @torch.no_grad()
    def reset(self, slot_ids: Tensor) -> None:
        idx = slot_ids.to(device=self.device, dtype=torch.int64).reshape(-1)
        with torch.inference_mode(False):
            for t in self._fields():
                t.index_fill_(0, idx, 0.0)

    def snapshot(self, slot: int) -> dict[str, float | int | None]:
        """Host read of one slot's counters (this syncs; call it off the hot path)."""
        row = {name: t[slot] for name, t in vars(self).items() if isinstance(t, Tensor)}
        vals = {k: (v.tolist() if v.dim() else float(v)) for k, v in row.items()
                if k != "target_sum"}
        n = vals["novelty_count"]
        sst = None
        if n > 0:
            mean_sq = float(row["target_sum"].square().sum()) / n
            sst = vals["target_sq_sum"] - mean_sq

        def ratio(a: float, b: float) -> float | None:
            return a / b if b > 0 else None

        r2 = None
        if sst is not None and sst > 0 and n >= 2:
            r2 = 1.0 - vals["sse"] / sst
        out: dict[str, float | int | None] = {
            "steps_trained": int(vals["train_steps"]),
            "mean_loss": ratio(vals["train_loss_sum"], vals["train_loss_count"]),
            "mean_novelty": ratio(vals["novelty_sum"], n),
            "predictions": int(n),
            "tokens_reweighted": int(vals["reweighted"]),
            "candidates_truncated": int(vals["truncated"]),
            "r2": r2,
            "corr_d_z": ratio(vals["corr_sum"], vals["corr_count"]),
            "nonfinite_resets": int(vals["train_nonfinite"]),
            "nonfinite_predictions": int(vals["nonfinite_predictions"]),
            "warm_start_steps": int(vals["warm_steps"]),
            "warm_start_loss_before": vals["warm_loss_before"] if vals["warm_steps"] else None,
            "warm_start_loss_after": vals["warm_loss_after"] if vals["warm_steps"] else None,
            "warm_start_positions": int(vals["warm_positions"]),
            "warm_start_r2": vals["warm_r2"] if vals["warm_positions"] else None,
        }
        for k, v in out.items():
            if isinstance(v, float) and not math.isfinite(v):
                out[k] = None
        return out
