"""The per-row fit shared by the telemetry and the gate (core/fit.py)."""

from __future__ import annotations

import torch

from esamp_sgl.core.fit import row_fit
from esamp_sgl.core.gate import FitGate
from esamp_sgl.core.telemetry import Telemetry

H = 8


def _rows(gen):
    y = torch.randn(6, H, generator=gen)
    h = y + 0.3 * torch.randn(6, H, generator=gen)
    h[2, 1] = float("nan")  # a non-finite prediction
    y[3, 0] = float("inf")  # a non-finite target
    slots = torch.tensor([0, 1, 1, 0, -1, 2])  # row 4 has no slot
    mask = torch.tensor([True, True, True, True, True, False])  # row 5 is outside the mask
    return slots, mask, h, y


def test_rows_that_count_and_rows_that_go_to_the_sink():
    slots, mask, h, y = _rows(torch.Generator().manual_seed(0))
    fit = row_fit(slots, mask, h, y, sink=3)
    assert fit.idx.tolist() == [0, 1, 1, 0, 3, 3]
    assert fit.ok.tolist() == [True, True, False, False, False, False]
    assert fit.nonfinite.tolist() == [False, False, True, False, False, False]
    want = (h[:2] - y[:2]).square().sum(-1)
    torch.testing.assert_close(fit.sq, torch.cat([want, torch.zeros(4)]))
    assert bool(torch.isfinite(fit.y_ok).all()) and torch.equal(fit.y_ok[:2], y[:2])
    assert torch.count_nonzero(fit.y_ok[2:]) == 0


def test_telemetry_and_gate_count_only_the_finite_rows_of_their_slot():
    gen = torch.Generator().manual_seed(1)
    slots, mask, h, y = _rows(gen)
    tel, gate = Telemetry(3, H), FitGate(3, H, "cpu", window=1)
    tel.record_prediction(slots, mask, h, y)
    gate.update(slots, mask, h, y)
    snap0, snap1 = tel.snapshot(0), tel.snapshot(1)
    assert (snap0["predictions"], snap1["predictions"]) == (1, 1)  # rows 3 and 2 did not count
    assert snap1["nonfinite_predictions"] == 1 and snap0["nonfinite_predictions"] == 0
    assert tel.snapshot(2)["predictions"] == 0  # row 5 was outside the mask
    # The gate's μ took the finite rows only; nothing was scored yet (no earlier mean).
    assert gate.count[:3].tolist() == [1.0, 1.0, 0.0]
    torch.testing.assert_close(gate.mean_target[0], y[0])
    torch.testing.assert_close(gate.mean_target[1], y[1])
    assert gate.measured[:3].tolist() == [0.0, 0.0, 0.0]
    # A second step scores against that mean: SSE and SST of row 0's slot are the direct formulas.
    y2 = torch.randn(6, H, generator=gen)
    h2 = y2 + 0.3 * torch.randn(6, H, generator=gen)
    gate.update(slots, mask, h2, y2)
    torch.testing.assert_close(gate.ema_sse[0], (h2[[0, 3]] - y2[[0, 3]]).square().sum(-1).mean())
    torch.testing.assert_close(gate.ema_sst[0], (y2[[0, 3]] - y[0]).square().sum(-1).mean())
    assert gate.measured[0] == 2.0 and gate.count[0] == 3.0
