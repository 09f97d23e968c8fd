"""End any frontend executor a test left running (see tests/lang/conftest.py for why)."""

from __future__ import annotations

import weakref

import pytest


@pytest.fixture(autouse=True)
def end_leftover_executors(monkeypatch):
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
