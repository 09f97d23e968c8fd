"""Shared by tests/lang, tests/programs and tests/examples conftests."""

from __future__ import annotations

import weakref

import pytest


@pytest.fixture(autouse=True)
def end_leftover_executors(monkeypatch):
    """Every StreamExecutor owns a non-daemon worker thread that exits only on end() (ProgramState
    calls it when collected). A state kept alive by a reference cycle (e.g. a traceback) would keep
    the interpreter from exiting, so end whatever a test left running."""
    from sglang.lang.interpreter import StreamExecutor

    live: "weakref.WeakSet[StreamExecutor]" = weakref.WeakSet()
    original_init = StreamExecutor.__init__

    def tracked_init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        live.add(self)

    monkeypatch.setattr(StreamExecutor, "__init__", tracked_init)
    yield
    for executor in list(live):
        if executor.use_thread and executor.worker.is_alive():
            executor.end()
