"""Resident memory of server processes, for the benchmarks' RSS numbers."""

from __future__ import annotations

from typing import Iterable


def rss_bytes(pids: Iterable[int], *, missing_ok: bool = False) -> int:
    """Sum of the resident set sizes of `pids`. A process that cannot be read raises, unless
    `missing_ok` (then it counts 0): the soak's bound must not pass because a scheduler died."""
    import psutil

    total = 0
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_info().rss
        except psutil.Error:
            if not missing_ok:
                raise
    return total
