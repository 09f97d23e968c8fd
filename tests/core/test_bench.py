"""The micro-benchmark runs and reports what it promises (tiny sizes; not a timed test)."""

from esamp_sgl.bench.core import run_core_bench


def test_core_bench_reports_stock_and_esamp_costs():
    out = run_core_bench([2, 8], [16], [300], repeats=2)
    assert len(out["cases"]) == 2
    for case in out["cases"]:
        assert case["stock_ms"] > 0 and case["esamp_step_ms"] > 0
        assert set(case["components_ms"]) == {"predict", "candidates", "reweight", "sample", "train"}
        assert case["mean_candidates"] >= 1


def test_core_bench_counts_ops_and_bytes_and_the_static_path_reads_nothing_on_the_host():
    import torch

    from esamp_sgl.bench.core import compare_counts, run_counts

    counts = run_counts(torch.device("cpu"), [16], [32], 300)
    assert [c["path"] for c in counts] == ["cpu", "static"]
    for c in counts:
        assert c["groups"] == 2 and c["step"]["ops"] > c["train"]["ops"] > 0
        assert c["step"]["bytes_written"] > c["train"]["bytes_written"] > 0
    assert counts[1]["step"]["host_reads"] == 0 and counts[1]["train"]["host_reads"] == 0
    table = compare_counts(counts, counts)
    assert table[0]["train_bytes_reduction"] == 1.0


def _fake_sglang(rate_by_port: dict):
    """A stand-in for SGLang's /generate (streamed and not): n samples of max_new_tokens tokens."""
    import json as _json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_POST(self):
            body = _json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            sp = body["sampling_params"]
            n, tokens = sp.get("n", 1), sp["max_new_tokens"]
            rate_by_port.setdefault("seen", []).append(sp.get("custom_params"))
            if body.get("stream"):
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                for t in range(1, tokens + 1):
                    for i in range(n):
                        chunk = {"index": i, "meta_info": {"completion_tokens": t}}
                        self.wfile.write(b"data: " + _json.dumps(chunk).encode() + b"\n\n")
                self.wfile.write(b"data: [DONE]\n\n")
                return
            items = [{"meta_info": {"completion_tokens": tokens}} for _ in range(n)]
            data = _json.dumps(items if n > 1 else items[0]).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def test_overhead_bench_with_a_separate_stock_server_and_both_clients():
    from esamp_sgl.bench.overhead import run, summary_line

    seen: dict = {}
    esamp, esamp_url = _fake_sglang(seen)
    stock, stock_url = _fake_sglang(seen)
    try:
        for client in ("stream", "batch"):
            out = run(esamp_url, prompts=2, n=2, max_tokens=5, rounds=2, temperature=1.0, min_p=0.05,
                      stock_url=stock_url, client=client,
                      arms=["stock_server", "stock", "esamp", "esamp_frozen"])
            assert list(out["tokens_per_s"]) == ["stock_server", "stock", "esamp", "esamp_frozen"]
            for key in ("esamp_over_stock_server", "esamp_frozen_over_stock_server",
                        "stock_over_stock_server", "esamp_over_stock"):
                assert len(out[key]["per_round"]) == 2 and out[key]["median"] > 0
            assert set(out["noise_cv_over_rounds"]) == set(out["tokens_per_s"])
            assert all(0 <= f for f in out["client_cpu_fraction"].values())
            assert (out["inter_token_latency"]["esamp"]["p50_ms"] is None) == (client == "batch")
            assert "esamp_over_stock_server" in summary_line(out)
    finally:
        esamp.shutdown()
        stock.shutdown()
    assert {"esamp": True, "esamp_train": False} in seen["seen"]


def test_soak_memory_over_passes_judges_steady_growth_after_the_second_pass():
    from esamp_sgl.bench.soak import memory_over_passes

    def reports(before, afters):
        return [{"rss_before_mib": before, "rss_after_mib": a} for a in afters]

    # High-water mark raised by the first two passes, then flat: no violation.
    flat = memory_over_passes(reports(1000.0, [1150.0, 1199.0, 1203.0, 1205.0]), 16)
    assert flat["growth_per_pass_mib"] == [150.0, 49.0, 4.0, 2.0]
    assert flat["steady_growth_mib_per_pass"] == 3.0 and flat["violations"] == []
    # A steady leak of 20 MiB per pass after the second: a violation naming the bound.
    leak = memory_over_passes(reports(1000.0, [1150.0, 1200.0, 1220.0, 1240.0]), 16)
    assert leak["steady_growth_mib_per_pass"] == 20.0 and "bound 16" in leak["violations"][0]
    # Two passes cannot tell steady growth from the high-water mark; no RSS (no pid): nothing judged.
    assert memory_over_passes(reports(1000.0, [1150.0, 1300.0]), 16)["steady_growth_mib_per_pass"] is None
    assert memory_over_passes(reports(None, [None, None, None]), 16)["growth_per_pass_mib"] is None


def test_the_counter_reads_whole_operands_gathered_rows_and_not_a_pure_writes_destination():
    import torch

    from esamp_sgl.bench.opcount import count

    x, w = torch.ones(4, 8), torch.ones(8, 16)
    assert count(lambda: x @ w)["bytes_read"] == (4 * 8 + 8 * 16) * 4  # a weight streamed once
    table, rows = torch.ones(10, 5), torch.tensor([1, 3])
    assert count(lambda: table.index_select(0, rows))["bytes_read"] == 2 * 5 * 4 + 2 * 8
    dest = torch.zeros(10, 5)
    assert count(lambda: dest.copy_(table))["bytes_read"] == 10 * 5 * 4  # the source only


def test_a_training_cadence_amortizes_the_training_bytes_over_its_steps():
    from esamp_sgl.bench.opcount import step_counts

    every, fourth = (step_counts(64, 8, 64, 512, "static", profile="bounded", train_every=k) for k in (1, 4))
    assert every["step"]["bytes_written"] > fourth["step"]["bytes_written"]
    assert fourth["train_every"] == 4 and fourth["step"]["host_reads"] == 0
    # one optimiser step in four (on four steps' rows): its writes amortize exactly
    adam = "_fused_adam_"
    assert fourth["step"]["top_bytes"][adam] == every["step"]["top_bytes"][adam] / 4
