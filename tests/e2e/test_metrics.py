"""Prometheus metrics (`--enable-metrics`): the esamp_* series on SGLang's /metrics, from the scheduler.

One short-lived server of its own (the session servers run without metrics). It also runs with
`--incremental-streaming-output`, SGLang's other streaming mode, where the tokenizer slices every
accumulated customized_info key per chunk: the telemetry must still arrive whole, in the final chunk.
"""

from __future__ import annotations

import math
import re

import pytest
import requests

from tests.e2e.test_telemetry_paths import check_streamed_telemetry, stream_generate

pytestmark = pytest.mark.e2e

SAMPLE = re.compile(r"^(esamp_[a-z0-9_]+)(?:\{[^}]*\})? (\S+)$")


@pytest.fixture(scope="module")
def metrics_server(model_path, tmp_path_factory):
    from esamp_sgl.launch.server import SGLangServer

    log = tmp_path_factory.mktemp("metrics-server") / "sglang.log"
    with SGLangServer(model_path, sampling_backend="esamp", log_path=log,
                      extra_args=["--enable-metrics", "--incremental-streaming-output"]) as server:
        yield server


def esamp_metrics(server) -> dict[str, float]:
    response = requests.get(server.url + "/metrics", timeout=60)
    assert response.status_code == 200
    out = {}
    for line in response.text.splitlines():
        match = SAMPLE.match(line)
        if match:
            out[match.group(1)] = float(match.group(2))
    return out


def test_esamp_metrics_on_the_servers_metrics_endpoint(metrics_server, chat_prompt):
    before = esamp_metrics(metrics_server)
    assert before["esamp_slots_capacity"] == 64 and before["esamp_groups_active"] == 0  # published at start-up
    assert before["esamp_groups_finished_total"] == 0
    body = {"text": chat_prompt("Invent a name for a boat."),
            "sampling_params": {"n": 2, "max_new_tokens": 12, "temperature": 1.0, "min_p": 0.05, "ignore_eos": True,
                                "custom_params": {"esamp": True}}}
    # incremental streaming: the telemetry is not token-sliced away
    chunks = stream_generate(metrics_server, body)
    check_streamed_telemetry(chunks, n=2)
    reports = [c["meta_info"]["esamp"][0] for c in chunks if c["meta_info"].get("esamp")]
    after = esamp_metrics(metrics_server)
    expected = {"esamp_groups_active", "esamp_slots_in_use", "esamp_slots_capacity", "esamp_requests_active",
                "esamp_bank_full_refusals_total", "esamp_groups_finished_total", "esamp_steps_trained_total",
                "esamp_tokens_reweighted_total", "esamp_nonfinite_predictions_total", "esamp_fit_r2_mean",
                "esamp_gate_mean"}
    assert expected <= set(after), sorted(expected - set(after))
    assert after["esamp_groups_finished_total"] == 1
    assert after["esamp_steps_trained_total"] > 0
    assert after["esamp_groups_active"] == after["esamp_slots_in_use"] == after["esamp_requests_active"] == 0
    assert after["esamp_bank_full_refusals_total"] == 0 and after["esamp_nonfinite_predictions_total"] == 0
    assert 0.0 <= after["esamp_gate_mean"] <= 1.0
    # the last member's report is the group's final state, which the metrics were taken from
    final = max(reports, key=lambda t: t["predictions"])
    assert after["esamp_steps_trained_total"] == final["steps_trained"]
    assert after["esamp_gate_mean"] == pytest.approx(final["gate"])
    if final["gate_r2"] is None:  # no held-out fit measured yet (NaN until a group has one)
        assert math.isnan(after["esamp_fit_r2_mean"])
    else:
        assert after["esamp_fit_r2_mean"] == pytest.approx(final["gate_r2"])
    assert any(name.startswith("sglang:") for name in requests.get(metrics_server.url + "/metrics").text.split())
