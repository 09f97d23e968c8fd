"""What a client sees on every response path: streaming `/generate` (the final chunk), `/v1/completions`,
and an exploring request sent to a server without the esamp backend (HTTP 400 naming the flag)."""

from __future__ import annotations

import json

import pytest
import requests

pytestmark = pytest.mark.e2e


def stream_generate(server, body: dict) -> list[dict]:
    """The JSON chunks of a streaming /generate (server-sent events, `data: ...` up to `[DONE]`)."""
    chunks = []
    with requests.post(server.url + "/generate", json={**body, "stream": True}, stream=True, timeout=300) as response:
        assert response.status_code == 200, response.text
        for line in response.iter_lines(decode_unicode=True):
            if not line or not line.startswith("data:"):
                continue
            data = line[len("data:"):].strip()
            if data == "[DONE]":
                break
            chunks.append(json.loads(data))
    return chunks


def final_chunks_by_sample(chunks: list[dict]) -> dict[int, tuple[dict, list[dict]]]:
    """index -> (its final chunk, its earlier chunks)."""
    by_index: dict[int, list[dict]] = {}
    for chunk in chunks:
        by_index.setdefault(chunk.get("index", 0), []).append(chunk)
    out = {}
    for index, own in by_index.items():
        assert own[-1]["meta_info"]["finish_reason"] is not None
        out[index] = (own[-1], own[:-1])
    return out


def check_streamed_telemetry(chunks: list[dict], n: int) -> None:
    finals = final_chunks_by_sample(chunks)
    assert sorted(finals) == list(range(n))
    groups = set()
    for final, earlier in finals.values():
        assert len(earlier) >= 2  # really streamed
        assert not any(c["meta_info"].get("esamp") for c in earlier)  # only the final chunk has it
        (telemetry,) = final["meta_info"]["esamp"]
        assert telemetry["status"] == "ok" and telemetry["predictions"] > 0
        groups.add(telemetry["group"])
    assert len(groups) == 1  # the n samples shared one group
    assert max(f["meta_info"]["esamp"][0]["steps_trained"] for f, _ in finals.values()) > 0


def test_streaming_generate_reports_telemetry_in_the_final_chunk(esamp_server, chat_prompt):
    body = {"text": chat_prompt("Invent a name for a boat."),
            "sampling_params": {"n": 2, "max_new_tokens": 12, "temperature": 1.0, "min_p": 0.05, "ignore_eos": True,
                                "custom_params": {"esamp": True}}}
    check_streamed_telemetry(stream_generate(esamp_server, body), n=2)


def test_streaming_generate_without_esamp_has_no_telemetry(esamp_server, chat_prompt):
    body = {"text": chat_prompt("Hi"), "sampling_params": {"max_new_tokens": 6, "temperature": 0, "ignore_eos": True}}
    chunks = stream_generate(esamp_server, body)
    assert len(chunks) >= 2 and not any(c["meta_info"].get("esamp") for c in chunks)


def test_completions_report_telemetry_per_choice(esamp_server, chat_prompt):
    body = {"model": "default", "prompt": chat_prompt("Invent a name for a boat."), "max_tokens": 12, "n": 3,
            "temperature": 1.0, "min_p": 0.05, "custom_params": {"esamp": True, "esamp_beta": 1.0}}
    response = requests.post(esamp_server.url + "/v1/completions", json=body, timeout=300)
    assert response.status_code == 200, response.text
    data = response.json()
    assert len(data["choices"]) == 3
    telemetry = data["metadata"]["esamp"]
    assert len(telemetry) == 3 and len({t["group"] for t in telemetry}) == 1
    assert max(t["steps_trained"] for t in telemetry) > 0
    stock = requests.post(esamp_server.url + "/v1/completions",
                          json={**body, "n": 1, "custom_params": None}, timeout=300).json()
    assert "esamp" not in (stock.get("metadata") or {})


def test_exploring_request_to_a_stock_server_gets_400_naming_the_flag(stock_server, chat_prompt):
    params = {"max_new_tokens": 4, "custom_params": {"esamp": True}}
    response = requests.post(stock_server.url + "/generate", json={"text": chat_prompt("Hi"), "sampling_params": params},
                             timeout=300)
    assert response.status_code == 400
    message = response.json()["error"]["message"]
    assert "--sampling-backend esamp" in message and "pytorch" in message
    chat = requests.post(stock_server.url + "/v1/chat/completions", timeout=300, json={
        "model": "default", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4,
        "custom_params": {"esamp": True}})
    assert chat.status_code == 400 and "--sampling-backend esamp" in chat.text
    # esamp false (or no custom_params) is plain stock sampling, as before
    for custom in ({"esamp": False}, None):
        ok = requests.post(stock_server.url + "/generate", timeout=300, json={
            "text": chat_prompt("Hi"), "sampling_params": {"max_new_tokens": 4, "custom_params": custom}})
        assert ok.status_code == 200, ok.text
