"""`--sampling-backend esamp --tp-size 2` on a real SGLang server.

Runs on CPU (two gloo ranks sharing the cores; `esamp_sgl.launch.parallel.parallel_env` supplies what SGLang
0.5.23 needs there) and on a machine with at least 2 GPUs; skipped with 1 GPU.
"""

from __future__ import annotations

import pytest
import requests

from parallel_server import parallel_server

pytestmark = pytest.mark.e2e

TP_SIZE = 2
N = 4
MAX_TOKENS = 8


@pytest.fixture(scope="module")
def tp_server(model_path, tmp_path_factory):
    yield from parallel_server(model_path, tmp_path_factory, tp_size=TP_SIZE)


def test_every_tp_rank_binds_the_full_lm_head(tp_server, model_path):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_path)
    full = f"full ({config.vocab_size}, {config.hidden_size})"
    log = tp_server.log_path.read_text(errors="replace")
    for rank in range(TP_SIZE):
        assert f"TP{rank}] esamp: LM head assembled from {TP_SIZE} TP shards" in log
        assert f"TP{rank}] esamp: ready" in log
    assert log.count(full) == TP_SIZE, "each rank's Explorer must see the whole vocabulary"


def test_explore_under_tensor_parallelism(tp_server, chat_prompt):
    body = {"text": chat_prompt("Name three animals."),
            "sampling_params": {"n": N, "max_new_tokens": MAX_TOKENS, "ignore_eos": True, "temperature": 1.0,
                                "min_p": 0.05, "custom_params": {"esamp": True, "esamp_beta": 1.0}}}
    response = requests.post(tp_server.url + "/generate", json=body, timeout=600)
    assert response.status_code == 200, response.text
    outs = response.json()
    telemetry = [o["meta_info"]["esamp"][0] for o in outs]
    assert len({t["group"] for t in telemetry}) == 1 and all(t["status"] == "ok" for t in telemetry)
    last = max(telemetry, key=lambda t: t["predictions"])
    generated = sum(o["meta_info"]["completion_tokens"] for o in outs)
    assert generated <= last["predictions"] <= generated + N
    # Every predicted row was reweighted: with a shard-sized LM head, candidate ids past the shard
    # would fail the step and fall back to stock sampling (logged as "exploration step failed").
    assert last["tokens_reweighted"] == last["predictions"]
    assert "exploration step failed" not in tp_server.log_path.read_text(errors="replace")


def _explore(tp_server, texts: list[str], n: int) -> list[dict]:
    body = {"text": texts, "sampling_params": {"n": n, "max_new_tokens": MAX_TOKENS, "ignore_eos": True,
                                               "temperature": 1.0, "min_p": 0.05, "custom_params": {"esamp": True}}}
    response = requests.post(tp_server.url + "/generate", json=body, timeout=600)
    assert response.status_code == 200, response.text
    return [o["meta_info"]["esamp"][0] for o in response.json()]


def test_each_tp_rank_explores_its_own_groups(tp_server, chat_prompt):
    """Two groups in one batch, in slots 0 and 1: rank 0 computes one, rank 1 the other, and rank 0 (the
    one that streams to the client) planned ESamp work for its own group's rows only."""
    before = max(t["server"]["rows_planned"] for t in _explore(tp_server, [chat_prompt("Name a fruit.")], 2))
    telemetry = _explore(tp_server, [chat_prompt("Name three animals."), chat_prompt("Name three rivers.")], 2)
    groups = {}
    for t in telemetry:  # each member's report at its leave; the group's last has every prediction
        if t["predictions"] >= groups.get(t["group"], {}).get("predictions", -1):
            groups[t["group"]] = t
    assert len(groups) == 2 and all(t["status"] == "ok" for t in telemetry)
    assert sorted(t["tp_rank"] for t in groups.values()) == [0, 1]
    for t in groups.values():
        assert t["tp_rank"] == t["slot"] % TP_SIZE
        assert t["predictions"] > 0 and t["tokens_reweighted"] == t["predictions"]
    planned_on_rank0 = max(t["server"]["rows_planned"] for t in telemetry) - before
    owned_by_rank0 = next(t for t in groups.values() if t["tp_rank"] == 0)["predictions"]
    assert planned_on_rank0 == owned_by_rank0  # not the other group's rows: rank 1 computed those


def test_a_weight_update_reassembles_the_full_lm_head_on_every_rank(tp_server, chat_prompt, model_path, tmp_path):
    """Under TP the Explorer holds an assembled copy of the head, not the model's parameter: without the
    re-assembly after an update, `d` would keep using the old weights."""
    from pathlib import Path

    from test_rl_rollouts import scaled_model

    def server_report() -> dict:
        body = {"text": chat_prompt("Name a colour."), "sampling_params": {
            "n": 2, "max_new_tokens": 4, "temperature": 1.0, "custom_params": {"esamp": True}}}
        response = requests.post(tp_server.url + "/generate", json=body, timeout=600)
        assert response.status_code == 200, response.text
        return response.json()[0]["meta_info"]["esamp"][0]["server"]

    def update(path) -> None:
        response = requests.post(tp_server.url + "/update_weights_from_disk", json={"model_path": str(path)}, timeout=600)
        assert response.status_code == 200 and response.json()["success"], response.text

    before = server_report()
    update(scaled_model(Path(model_path), tmp_path / "scaled", 2.0))
    after = server_report()
    assert after["weight_updates"] == before["weight_updates"] + 1
    assert after["lm_head_norm"] == pytest.approx(2 * before["lm_head_norm"], rel=1e-4)
    log = tp_server.log_path.read_text(errors="replace")
    for rank in range(TP_SIZE):
        assert log.count(f"TP{rank}] esamp: LM head assembled from {TP_SIZE} TP shards") == 2  # start-up + update
        assert f"TP{rank}] esamp: weights updated" in log
    update(Path(model_path))
    assert server_report()["lm_head_norm"] == pytest.approx(before["lm_head_norm"], rel=1e-4)
