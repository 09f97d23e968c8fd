"""Per-slot telemetry kept as device accumulators; the host reads them only in `snapshot`.

All scalar counters of a slot live in one row of `counters` ([slots + 1, F] float64; the last row
is the sink that absorbs rows without a slot; each field is also a column view by its name), plus
`target_sum` [slots + 1, H]. Each record call is one masked index_add of a [rows, fields] block,
so recording never syncs, and a snapshot is ONE device→host copy of the slot's row. Two writers
never touch the same columns: the trainer (possibly on a side stream) writes the
`train_*` fields; the sampling step writes the others.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable

import torch
from torch import Tensor

from esamp_sgl.core.fit import RowFit, finite, row_fit

_F64 = torch.float64
# The counters' columns, in record order: each record call writes one contiguous block.
COUNTERS = ("train_steps", "train_loss_sum", "train_loss_count", "train_nonfinite",  # trainer
          "warm_steps", "warm_loss_before", "warm_loss_after", "warm_r2", "warm_positions",
          "novelty_sum", "novelty_count", "nonfinite_predictions", "sse", "target_sq_sum",
          "reweighted", "truncated", "corr_sum", "corr_count")
_COL = {name: i for i, name in enumerate(COUNTERS)}


def group_report(reports: Iterable[dict[str, Any] | None]) -> dict[str, Any] | None:
    """The group's report among its members' (None: a member that did not explore): the one with the
    most predictions, i.e. the member that left last and saw the most steps; None if none explored."""
    present = [r for r in reports if r]
    return max(present, key=lambda r: r.get("predictions") or 0) if present else None


def candidate_corr(d: Tensor, z: Tensor, keep: Tensor, min_count: int = 3) -> tuple[Tensor, Tensor]:
    """Pearson correlation of d and z over each row's kept candidates with finite z.
    Returns (corr [R], valid [R]); rows with fewer than `min_count` candidates are not valid."""
    mask = keep & finite(z + d)  # z + d is finite iff both are (NaN/inf propagate)
    w = mask.to(torch.float32)
    n = w.sum(-1)
    zs = torch.where(mask, z, 0.0)
    ds = torch.where(mask, d, 0.0)
    nz = n.clamp(min=1).unsqueeze(-1)
    zc = (zs - zs.sum(-1, keepdim=True) / nz) * w
    dc = (ds - ds.sum(-1, keepdim=True) / nz) * w
    cov = (zc * dc).sum(-1)
    den = torch.sqrt(zc.square().sum(-1) * dc.square().sum(-1))
    valid = (n >= min_count) & (den > 0)
    corr = torch.where(valid, cov / den.clamp(min=1e-30), 0.0)
    return corr, valid


class Telemetry:
    def __init__(self, slots: int, hidden: int, device: torch.device | str = "cpu") -> None:
        self.slots, self.hidden = slots, hidden
        self.sink = slots
        self.device = torch.device(device)
        n = slots + 1
        with torch.inference_mode(False):
            self.counters = torch.zeros(n, len(COUNTERS), dtype=_F64, device=self.device)
            self.target_sum = torch.zeros(n, hidden, dtype=_F64, device=self.device)
        # One column view per field (e.g. self.train_steps, self.novelty_sum): [slots + 1].
        # Rows whose prediction had a NaN/inf entry (nonfinite_predictions) are sampled stock.
        for name, i in _COL.items():
            setattr(self, name, self.counters[:, i])

    def _fields(self) -> list[Tensor]:
        return [self.counters, self.target_sum]

    def _block(self, first: str, last: str) -> Tensor:
        """The columns first..last (a [slots + 1, k] view)."""
        return self.counters[:, _COL[first]:_COL[last] + 1]

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
        vals = torch.stack([steps.float(), torch.where(counted, loss.float(), 0.0), counted.float(),
                            nonfinite.float()], -1)
        self._block("train_steps", "train_nonfinite").index_add_(0, idx, vals.to(_F64))

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
        self.record_fit(row_fit(slot, mask, h_hat, target, self.sink))

    @torch.no_grad()
    def record_fit(self, fit: RowFit) -> None:
        """record_prediction on a step's fit computed once (core/fit.py), shared with the gate."""
        vals = torch.stack([fit.sq / fit.y.shape[-1], fit.ok.float(), fit.nonfinite.float(), fit.sq], -1)
        y64 = fit.y_ok.to(_F64)
        vals = torch.cat([vals.to(_F64), y64.square().sum(-1, keepdim=True)], -1)
        idx = fit.idx.to(self.device)
        self._block("novelty_sum", "target_sq_sum").index_add_(0, idx, vals)
        self.target_sum.index_add_(0, idx, y64)

    @torch.no_grad()
    def record_candidates(self, slot: Tensor, has_slot: Tensor, reweighted: Tensor,
                          truncated: Tensor, corr: Tensor, corr_valid: Tensor) -> None:
        idx = self._index(slot, has_slot)
        cv = corr_valid & has_slot
        vals = torch.stack([(reweighted & has_slot).float(), (truncated & has_slot).float(),
                            torch.where(cv, corr.float(), 0.0), cv.float()], -1)
        self._block("reweighted", "corr_count").index_add_(0, idx, vals.to(_F64))

    # -- lifecycle / host reads -----------------------------------------------------------------
    @torch.no_grad()
    def reset(self, slot_ids: Tensor) -> None:
        idx = slot_ids.to(device=self.device, dtype=torch.int64).reshape(-1)
        with torch.inference_mode(False):
            for t in self._fields():
                t.index_fill_(0, idx, 0.0)

    def row(self, slot: int) -> Tensor:
        """The slot's counters and |Σ target|² as one float64 vector (device; no read)."""
        return torch.cat([self.counters[slot], self.target_sum[slot].square().sum().reshape(1)])

    def snapshot(self, slot: int, extra: dict[str, Callable[[], Tensor]] | None = None,
                 read: Callable[[Callable[[], Tensor]], list[float]] | None = None
                 ) -> dict[str, float | int | None]:
        """One slot's counters, read with ONE device→host copy. `read(build)` builds the row and
        reads it (default: build().tolist(), a sync on CUDA; call it off the hot path; the Explorer
        passes a reader that does not wait for queued work). `extra`: {name: a function giving a
        1-element device value} read in the same copy, returned raw under its name."""
        extra = extra or {}

        def build() -> Tensor:
            parts = [self.row(slot), *(fn().reshape(1).to(_F64) for fn in extra.values())]
            return torch.cat(parts)
        values = (read or (lambda b: b().tolist()))(build)
        vals = dict(zip(COUNTERS, values))
        n = vals["novelty_count"]
        sst = None
        if n > 0:
            mean_sq = values[len(COUNTERS)] / n
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
        out.update(zip(extra, values[len(COUNTERS) + 1:]))
        return out


class StepMarks:
    """A small ring of (step event, training event) pairs recorded at the end of each decode step
    (CUDA). A telemetry read waits on the newest pair whose step has completed — at or after the
    exiting request's last step, since its token already reached the host — and on that step's
    training, but never on work queued after it (the next forward), so an exiting request does not
    stall the schedule. A slot reset waits on the newest pair recorded, completed or not: under
    SGLang's overlap scheduler the next step, already queued on the forward stream, may still
    write the slot. `make_event` is torch.cuda.Event in production (injectable for tests)."""

    def __init__(self, make_event: Callable[[], object], capacity: int = 4) -> None:
        self._events = [(make_event(), make_event()) for _ in range(capacity)]
        self._recorded: list[tuple[object, object | None]] = []  # oldest first, <= capacity
        self._count = 0

    def mark(self, train_stream=None) -> None:
        """Record a pair now: the step event on the current stream, the training event on
        `train_stream` (None: training runs on the current stream, or not at all)."""
        step, train = self._events[self._count % len(self._events)]
        self._count += 1
        step.record()
        if train_stream is not None:
            train.record(train_stream)
        self._recorded.append((step, train if train_stream is not None else None))
        del self._recorded[:-len(self._events)]  # each event object is in the list at most once

    def newest_done(self) -> tuple[object, object | None] | None:
        """The newest recorded pair whose step event has completed (non-blocking query), or None."""
        for pair in reversed(self._recorded):
            if pair[0].query():
                return pair
        return None

    def newest(self) -> tuple[object, object | None] | None:
        """The newest recorded pair, whether or not it has completed, or None."""
        return self._recorded[-1] if self._recorded else None

    @staticmethod
    def order(stream, pair: tuple[object, object | None]) -> None:
        """Make `stream` wait (device-side) for the pair's step and its training."""
        stream.wait_event(pair[0])
        if pair[1] is not None:
            stream.wait_event(pair[1])
