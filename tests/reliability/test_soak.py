"""A bounded soak (40 samples in 10 fork groups, client aborts) on the session's real esamp server.

The full-size run is `esamp-sgl bench soak` (200 samples in 50 groups); this is the same code with
a smaller plan so that it fits in CI.
"""

from __future__ import annotations

import pytest

from esamp_sgl.bench.soak import soak, summary_line
from esamp_sgl.bench.soak_plan import make_plan

pytestmark = pytest.mark.e2e


def test_plan_mixes_every_dimension_and_is_bounded():
    plan = make_plan(groups=50, samples=200, max_tokens=12, abort_fraction=0.2, explore_fraction=0.7, seed=0)
    assert sum(c.n for c in plan) == 200 and len({c.group for c in plan}) == 50
    assert {c.n for c in plan} == {1, 2, 4} and {c.explore for c in plan} == {True, False}
    assert {c.sampling.get("temperature") == 0.0 for c in plan} == {True, False}
    assert {c.abort for c in plan} == {None, "stream_close", "abort_request"}
    aborted = sum(c.n for c in plan if c.abort) / 200
    assert 0.1 <= aborted <= 0.35, aborted
    # Calls of one multi-call exploring group share one explicit group id; others have none.
    for g in {c.group for c in plan}:
        calls = [c for c in plan if c.group == g]
        ids = {c.group_id for c in calls}
        assert len(ids) == 1 and ((ids.pop() is not None) == (calls[0].explore and len(calls) > 1))


def test_soak_leaves_no_group_state_and_bounded_memory(esamp_server):
    report = soak(esamp_server.url, requests_total=40, groups=10, concurrency=8, max_tokens=8, abort_fraction=0.25,
                  seed=7, time_limit_s=240, server_pid=esamp_server.process.pid,
                  server_log=esamp_server.log_path, max_rss_growth_mib=256)
    print(summary_line(report))
    assert report["violations"] == []
    counts = report["counts"]
    assert counts["aborted_calls"] > 0 and counts["completed"] > 0 and counts["telemetry_checked"] > 0
    assert counts["telemetry_statuses"] == {"ok": counts["telemetry_checked"]}  # 10 groups, 64 slots, no faults
    assert report["slots_leaked"] == 0 and report["server_after"]["members"] == 0
    assert report["rss_delta_mib"] is not None and report["scheduler_pids"]
    assert report["failed_steps_logged"] == 0
