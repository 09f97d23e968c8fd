"""The micro-benchmark runs and reports what it promises (tiny sizes; not a timed test)."""

from esamp_sgl.bench.core import compare_train_modes, run_core_bench


def test_core_bench_reports_stock_and_esamp_costs():
    out = run_core_bench([2, 8], [16], [300], repeats=2)
    assert len(out["cases"]) == 2
    for case in out["cases"]:
        assert case["stock_ms"] > 0 and case["esamp_step_ms"] > 0
        assert set(case["components_ms"]) == {"predict", "candidates", "reweight", "sample", "train"}
        assert case["mean_candidates"] >= 1
    modes = compare_train_modes(4, 16, 300, steps=2, forward_layers=1, rounds=2)
    assert modes["faster"] in ("sync", "thread")
