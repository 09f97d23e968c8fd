"""The paper's profile end to end: a real SGLang server on CPU started with ESAMP_SGL_PROFILE=paper."""

from __future__ import annotations

import pytest
import requests

from esamp_sgl.core.profiles import PROFILES

pytestmark = pytest.mark.e2e


def post(server, body: dict):
    return requests.post(server.url + "/generate", json=body, timeout=300)


def test_the_paper_servers_resolved_settings_are_the_papers_column_and_it_explores_and_trains(paper_server, chat_prompt):
    body = {"text": chat_prompt("Invent a board game."),
            "sampling_params": {"n": 4, "max_new_tokens": 16, "temperature": 1.0, "ignore_eos": True,
                                "custom_params": {"esamp": True, "esamp_profile": "paper"}}}
    response = post(paper_server, body)
    assert response.status_code == 200, response.text
    out = response.json()
    tel = out[0]["meta_info"]["esamp"][0]
    assert tel["profile"] == "paper" and tel["profile_overrides"] == {}
    assert tel["settings"] == PROFILES["paper"]  # row by row, as the server resolved them
    # T 1 without a filter: every token of the group drawn by latent mixing, the Distiller trained each step.
    assert tel["tokens_reweighted"] == 4 * 16 and tel["steps_trained"] >= 15
    # every decode step mixed before the LM head (the first token, from the prefill, after it), with
    # the ĥ computed on the training worker beside the layers after the source tap
    assert tel["server"]["head_mix_steps"] >= 15 and tel["server"]["train_mode"] == "cpu_thread"
    assert tel["server"]["predictions_beside"] == tel["server"]["head_mix_steps"]
    assert len({tuple(o["output_ids"]) for o in out}) > 1


def test_a_request_for_another_profile_is_refused_by_name_and_the_server_keeps_serving(paper_server, chat_prompt):
    bad = post(paper_server, {"text": "Hi", "sampling_params": {
        "max_new_tokens": 2, "custom_params": {"esamp": True, "esamp_profile": "bounded"}}})
    assert bad.status_code == 400
    assert "esamp_profile must be the server's profile 'paper', got 'bounded'" in bad.text
    ok = post(paper_server, {"text": "Hi", "sampling_params": {"max_new_tokens": 2, "custom_params": {
        "esamp": True, "esamp_rule": "noise"}}})
    assert ok.status_code == 200, ok.text


def test_rows_without_esamp_on_the_paper_server_are_bit_identical_to_stock(paper_server, stock_server):
    assert paper_server.identity_probe == stock_server.identity_probe
