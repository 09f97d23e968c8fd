"""Ordering CUDA streams behind a write to shared state, device-side (no host sync).

SGLang runs ESamp's work from more than one stream: the forward stream (a decode step, its
prediction), ESamp's training side stream, and the scheduler's own stream (freeing a finished
request's slot). A wait from one stream orders only that stream, so "is anything pending?" cannot
be one flag: a wait from the scheduler's stream would clear it and the forward stream's next
prediction would read parameters mid-training. `StreamFence` remembers, per write, which streams
are already ordered behind it.
"""

from __future__ import annotations

from typing import Any, Callable

Event = Any  # torch.cuda.Event: record(stream)
Stream = Any  # torch.cuda.Stream: wait_event(event); hashable, equal by handle


class StreamFence:
    """One event at the end of the newest write (training, a slot reset), and the set of streams
    already ordered behind that write. `record(stream)` marks a new write queued on `stream`;
    `order(stream)` makes `stream` wait for it (stream.wait_event: device-side) once per write,
    whichever streams ask and in whatever order. `make_event` is torch.cuda.Event in production
    (injectable for tests); streams are keyed by equality (torch.cuda.Stream compares by handle)."""

    def __init__(self, make_event: Callable[[], Event]) -> None:
        self._event = make_event()
        self._recorded = False
        self._ordered: set[Stream] = set()

    def record(self, stream: Stream) -> None:
        """A write was queued on `stream`: every other stream must wait again. `stream` is ordered
        behind the previous write first, so that the one event stands for every write so far."""
        self.order(stream)
        self._event.record(stream)
        self._recorded = True
        self._ordered = {stream}  # a stream is ordered behind its own work

    def order(self, stream: Stream) -> None:
        """Make `stream` wait for the newest write, unless it already does (or nothing was written)."""
        if self._recorded and stream not in self._ordered:
            stream.wait_event(self._event)
            self._ordered.add(stream)
