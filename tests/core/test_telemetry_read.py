"""Telemetry is read with one device->host copy per snapshot, and the CUDA reader's choice of
what to wait for (StepMarks) never waits for work queued after the newest completed step."""

from __future__ import annotations

import torch

from esamp_sgl.core.config import ESampConfig
from esamp_sgl.core.explorer import Explorer
from esamp_sgl.core.telemetry import COUNTERS, StepMarks, Telemetry


def test_snapshot_reads_all_counters_and_extras_in_one_copy():
    tel = Telemetry(3, 4)
    gen = torch.Generator().manual_seed(0)
    target = torch.randn(5, 4, generator=gen)
    slots = torch.tensor([1, 1, 0, 1, -1])
    mask = slots >= 0
    tel.record_prediction(slots, mask, target + 0.1, target)
    tel.record_train(torch.tensor([1]), torch.tensor([0.5]), torch.tensor([True]), torch.tensor([1.0]),
                     torch.tensor([False]))
    reads = []

    def read(build):
        row = build()
        reads.append(row.shape)
        return row.tolist()
    snap = tel.snapshot(1, extra={"answer": lambda: torch.tensor(42.0)}, read=read)
    assert reads == [(len(COUNTERS) + 2,)]  # counters, |Σ target|², one extra: one copy
    assert snap["answer"] == 42.0 and snap["predictions"] == 3 and snap["steps_trained"] == 1
    assert snap["mean_loss"] == 0.5 and snap == {**tel.snapshot(1), "answer": 42.0}
    assert float(tel.novelty_count[1]) == 3.0 and float(tel.train_steps[1]) == 1.0  # column views


def test_explorer_telemetry_is_one_read_with_the_gate():
    ex = Explorer(ESampConfig(rank=4, max_groups=2), 8, torch.randn(50, 8), device="cpu")
    ex.join_group("g")
    calls = []
    real = ex._read
    ex._read = lambda build: (calls.append(1), real(build))[1]
    t = ex.report("g")
    assert calls == [1] and t["gate"] == 0.0 and t["gate_r2"] is None and t["predictions"] == 0


class _FakeEvent:
    def __init__(self):
        self.done, self.recorded = False, 0

    def record(self, stream=None):
        self.recorded += 1
        self.done = False

    def query(self):
        return self.done


def test_step_marks_pick_the_newest_completed_step_and_its_training():
    marks = StepMarks(_FakeEvent, capacity=3)
    assert marks.newest_done() is None
    marks.mark(train_stream="side")  # step 1
    marks.mark(train_stream=None)  # step 2 (training inline)
    marks.mark(train_stream="side")  # step 3: still running (the queued next step)
    s1, s2, s3 = (pair for pair in marks._recorded)
    s1[0].done = s2[0].done = True
    step, train = marks.newest_done()
    assert step is s2[0] and train is None  # not step 3, which has not completed
    marks.mark(train_stream="side")  # step 4 reuses step 1's events (ring of 3)
    assert len(marks._recorded) == 3 and marks._recorded[0] is s2
    assert marks.newest_done()[0] is s2[0]
