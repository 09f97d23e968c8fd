"""runtime_patch/serving.py and runtime_patch/metrics.py against SGLang's real classes, in this process."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from esamp_sgl.core.config import TELEMETRY_KEY


def test_the_hooks_are_registered_on_existing_symbols(sglang_with_plugin):
    from runtime_patch.compat import TOUCH_POINTS, self_check
    from runtime_patch.touch_points import plugin_hooks

    self_check()
    serving = [target for target, hook in plugin_hooks() if hook.handler.startswith("runtime_patch.serving:")]
    assert len(serving) == 5 and all(target in TOUCH_POINTS for target in serving)


def test_exploring_requests_need_the_esamp_backend(sglang_with_plugin):
    from sglang.srt.runtime_context import get_exec
    from sglang.srt.sampling.sampling_params import SamplingParams

    explore = SamplingParams(max_new_tokens=4, custom_params={"esamp": True})
    explore.verify(1000)  # the published config says --sampling-backend esamp
    with get_exec().kernel.override(sampling_backend="pytorch"):  # what a stock server resolves
        with pytest.raises(ValueError, match="--sampling-backend esamp.*--sampling-backend pytorch"):
            explore.verify(1000)
        SamplingParams(max_new_tokens=4, custom_params={"esamp": False}).verify(1000)
        SamplingParams(max_new_tokens=4).verify(1000)


def test_incremental_streaming_does_not_slice_the_telemetry():
    from sglang.srt.managers import tokenizer_manager

    from runtime_patch.serving import telemetry_not_token_sliced

    report = {"group": "g", "steps_trained": 3}
    meta_info = {TELEMETRY_KEY: [report], "per_token": [1, 2, 3, 4]}
    original = tokenizer_manager._slice_streaming_output_meta_info
    original = getattr(original, "__wrapped__", original)  # SGLang's own, whether or not hooks were applied
    telemetry_not_token_sliced(original, meta_info, 3, {TELEMETRY_KEY: None, "per_token": None}.keys())
    assert meta_info == {TELEMETRY_KEY: [report], "per_token": [4]}


class FakeCollector:
    """Stands in for prometheus_client children: records the last set() and the sum of inc()."""

    def __init__(self) -> None:
        self.value = 0.0

    def set(self, value: float) -> None:
        self.value = value

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def labels(self, **labels):
        return self


def test_metrics_follow_the_runtime_on_the_host(monkeypatch):
    import prometheus_client

    from runtime_patch.metrics import ESampMetrics

    monkeypatch.setattr(prometheus_client, "Gauge", lambda *a, **k: FakeCollector())
    monkeypatch.setattr(prometheus_client, "Counter", lambda *a, **k: FakeCollector())
    metrics = ESampMetrics({"model_name": "m", "dp_rank": "0"})
    table = type("Groups", (), {"slots_in_use": 2, "stock_groups": 1, "__len__": lambda self: 2})()
    explorer = SimpleNamespace(groups=table, bank_full_count=1)
    runtime = SimpleNamespace(explorer=explorer, members={"a": 0, "b": 0, "c": 0},
                              config=SimpleNamespace(max_groups=4), warm_start_failures=2, head_mix_failures=0)
    metrics.update(runtime)
    metrics.update(runtime)  # idempotent: the counters take deltas
    assert (metrics.groups_active.value, metrics.slots_in_use.value, metrics.slots_capacity.value,
            metrics.requests_active.value, metrics.bank_full_refusals.value) == (3, 2, 4, 3, 1)
    assert (metrics.warm_start_failures.value, metrics.head_mix_failures.value) == (2, 0)
    runtime.head_mix_failures = 3
    metrics.update(runtime)
    assert (metrics.warm_start_failures.value, metrics.head_mix_failures.value) == (2, 3)
    metrics.group_finished({"steps_trained": 5, "tokens_reweighted": 7, "nonfinite_predictions": 0,
                            "gate": 0.5, "gate_r2": 0.2})
    metrics.group_finished({"steps_trained": 1, "tokens_reweighted": 0, "gate": 1.0, "gate_r2": None})
    assert (metrics.groups_finished.value, metrics.steps_trained.value, metrics.tokens_reweighted.value) == (2, 6, 7)
    assert metrics.fit_r2_mean.value == pytest.approx(0.2) and metrics.gate_mean.value == pytest.approx(0.75)
