"""Cross-stream ordering bookkeeping, shown on CPU with recording stand-ins for CUDA streams and
events (the ordering itself on a GPU: tests/core/test_cuda_stream_order.py).

* StreamFence: every stream that waits after a write is ordered behind it, once per write, however
  many call sites ask and from however many streams (one global "pending" flag was not: the first
  stream to wait cleared it for all);
* StepMarks: a reset orders behind the newest recorded step, completed or not.
"""

from __future__ import annotations

from esamp_sgl.core.streams import StreamFence
from esamp_sgl.core.telemetry import StepMarks


class _Event:
    """Records where it was last recorded (a stand-in for torch.cuda.Event)."""

    def __init__(self):
        self.recorded_on, self.records, self.done = None, 0, False

    def record(self, stream=None):
        self.recorded_on, self.records, self.done = stream, self.records + 1, False

    def query(self):
        return self.done


class _Stream:
    """Logs the waits issued on it: (event, which record of it) — what a device-side wait captures."""

    def __init__(self, name):
        self.name, self.waits = name, []

    def wait_event(self, event):
        self.waits.append((event, event.records))


def test_nothing_written_orders_nothing():
    fence, forward = StreamFence(_Event), _Stream("forward")
    fence.order(forward)
    assert forward.waits == []


def test_every_stream_that_asks_after_a_write_is_ordered_behind_it():
    fence = StreamFence(_Event)
    train, forward, scheduler = _Stream("train"), _Stream("forward"), _Stream("scheduler")
    fence.record(train)  # training queued on the side stream
    fence.order(scheduler)  # a slot reset asks first, from the scheduler's stream...
    fence.order(forward)  # ...and the next prediction must still wait
    assert len(scheduler.waits) == 1 and len(forward.waits) == 1
    assert forward.waits[0][1] == 1  # on that write's record


def test_a_stream_waits_once_per_write_and_again_after_the_next():
    fence = StreamFence(_Event)
    train, forward, scheduler = _Stream("train"), _Stream("forward"), _Stream("scheduler")
    fence.record(train)
    for _ in range(3):  # several call sites on the same stream: one device-side wait
        fence.order(forward)
    assert [r for _, r in forward.waits] == [1]
    fence.record(train)  # the next step's training
    fence.order(forward)
    fence.order(scheduler)
    fence.order(scheduler)
    assert [r for _, r in forward.waits] == [1, 2] and [r for _, r in scheduler.waits] == [2]
    assert train.waits == []  # the recording stream is behind its own work already


def test_a_write_from_another_stream_is_ordered_after_the_previous_write():
    """A slot reset on the scheduler's stream after training on the side stream: the reset's stream
    first waits for the training, so that waiting on the newest write alone covers both."""
    fence = StreamFence(_Event)
    train, forward, scheduler = _Stream("train"), _Stream("forward"), _Stream("scheduler")
    fence.record(train)
    fence.record(scheduler)  # the reset, without an explicit wait before it
    assert [r for _, r in scheduler.waits] == [1]  # behind the training
    fence.order(forward)
    fence.order(train)
    assert [r for _, r in forward.waits] == [2] and [r for _, r in train.waits] == [2]


def test_step_marks_give_the_newest_recorded_step_for_a_reset_and_order_a_stream_behind_it():
    marks = StepMarks(_Event, capacity=3)
    assert marks.newest() is None
    marks.mark(train_stream="side")  # step 1, completed
    marks.mark(train_stream="side")  # step 2, queued by the overlap scheduler, not completed
    marks._recorded[0][0].done = True
    newest = marks.newest()
    assert newest is not marks.newest_done() and newest[0].done is False
    scheduler = _Stream("scheduler")
    StepMarks.order(scheduler, newest)
    assert [e for e, _ in scheduler.waits] == [newest[0], newest[1]]  # the step and its training
    marks.mark(train_stream=None)  # step 3, training inline: only the step's event to wait on
    inline = _Stream("read")
    StepMarks.order(inline, marks.newest())
    assert [e for e, _ in inline.waits] == [marks.newest()[0]]
