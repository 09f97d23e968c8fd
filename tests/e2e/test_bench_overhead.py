"""The serving-overhead benchmark measures what it promises (tiny workload; not a timed test)."""

from __future__ import annotations

import os

from esamp_sgl.bench.overhead import run


def test_overhead_bench_arms_tokens_latency_and_memory(esamp_server):
    out = run(esamp_server.url, prompts=2, n=2, max_tokens=6, rounds=2, temperature=1.0, min_p=0.05,
              server_pid=esamp_server.process.pid)
    arms = {"single", "parallel8", "stock", "esamp", "esamp_frozen"}
    assert set(out["tokens_per_s"]) == arms
    assert all(len(v) == 2 and min(v) > 0 for v in out["tokens_per_s"].values())
    for key in ("esamp_over_stock", "esamp_frozen_over_stock"):
        assert out[key]["min"] <= out[key]["median"] <= out[key]["max"] and len(out[key]["per_round"]) == 2
    for arm in arms:  # 6 streamed tokens per sample -> 5 gaps each: percentiles exist and are ordered
        itl = out["inter_token_latency"][arm]
        assert 0 < itl["p50_ms"] <= itl["p90_ms"] <= itl["p99_ms"]
    mem = out["server_rss_mib"]
    assert mem["before"] > 100  # a loaded model server, in MiB
    assert all(mem["peak_per_arm"][a] >= 0.5 * mem["before"] for a in arms)
    assert os.path.exists(f"/proc/{esamp_server.process.pid}")  # the server is still up
