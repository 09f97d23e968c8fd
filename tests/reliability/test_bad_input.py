"""Bad input to the esamp backend: per-request `custom_params` (fuzzed, and over HTTP on the real
server) and server-wide settings (rejected at start-up with the field name).

The tokenizer-side validator is what turns bad input into HTTP 400: `runtime_patch.hooks.
validate_custom_params` = `_check_custom_params_shape` then `ExploreRequest.from_custom_params`.
Its contract: return normally (a valid request, or None for stock) or raise ValueError whose message
names the esamp key or `custom_params` — never another exception type, which SGLang would turn into
a 500 or, in the scheduler, a crash.
"""

from __future__ import annotations

import math

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from esamp_sgl.core.config import BETA_MAX, GROUP_KEY_MAX_CHARS, ExploreRequest
from esamp_sgl.core.rules import rule_names
from runtime_patch.hooks import _check_custom_params_shape
from runtime_patch.settings import load_server_config

# -- the validator, fuzzed --------------------------------------------------------------------------
json_scalars = (st.none() | st.booleans() | st.integers() | st.integers(min_value=-(1 << 70), max_value=1 << 70)
                | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=200))
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=12), inner, max_size=4), max_leaves=12)
esamp_keys = st.sampled_from(ExploreRequest.KEYS + ("esamp_rank", "esamp_x", "esampbeta", "Esamp", "other"))
# Values near the validator's edges, mixed with arbitrary JSON.
edge_values = (st.sampled_from([True, False, "true", 0, 1, -1, 0.0, BETA_MAX, BETA_MAX + 1e-9, 1e308, -0.0, 10 ** 400,
                                "", "x" * GROUP_KEY_MAX_CHARS, "x" * (GROUP_KEY_MAX_CHARS + 1), "a\x00b",
                                "\u200b", "../../etc/passwd", *rule_names()])
               | json_values)
custom_params = (st.dictionaries(esamp_keys | st.text(max_size=12), edge_values, max_size=5)
                 | json_values)


def validate(params) -> ExploreRequest | None:
    """What the tokenizer runs for every request (runtime_patch.hooks.validate_custom_params)."""
    _check_custom_params_shape(params)
    return ExploreRequest.from_custom_params(params)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(custom_params)
def test_fuzzed_custom_params_give_a_valid_request_or_a_value_error_naming_the_key(params):
    try:
        request = validate(params)
    except ValueError as exc:
        message = str(exc)
        assert "esamp" in message or "custom_params" in message, message
        return
    # Accepted: then every value the backend will use is in range.
    if request is None:
        return
    assert isinstance(params, dict) and params.get("esamp") is True
    assert request.beta is None or (math.isfinite(request.beta) and 0 <= request.beta <= BETA_MAX)
    assert request.group is None or (0 < len(request.group) <= GROUP_KEY_MAX_CHARS and request.group.isprintable())
    assert request.rule is None or request.rule in rule_names()


@pytest.mark.parametrize("params, message", [
    ({"esamp": True, "esamp_beta": 10 ** 400}, r"esamp_beta must be a finite number in \[0, 10\]"),
    ({"esamp": True, "esamp_beta": -(10 ** 400)}, r"esamp_beta must be a finite number in \[0, 10\]"),
    ({"esamp": True, "esamp_beta": float("nan")}, r"esamp_beta .* got nan"),
    ({"esamp": True, "esamp_beta": "inf"}, r"esamp_beta .* got 'inf' \(str\)"),
    ({"esamp": True, "esamp_group": ""}, r"esamp_group must be a non-empty printable string of at most 128"),
    ({"esamp": True, "esamp_group": "tab\there"}, r"esamp_group must be a non-empty printable string"),
    ({"esamp": True, "esamp_group": 7}, r"esamp_group .* got 7 \(int\)"),
    ({"esamp": True, "esamp_rank": 0}, r"unknown custom_params key 'esamp_rank'; allowed esamp keys"),
    ({"esamp": True, "x": [[1]]}, r"custom_params\.x must be a JSON scalar"),
    ([("esamp", True)], r"custom_params must be a JSON object"),
])
def test_specific_bad_values_name_the_field_and_range(params, message):
    with pytest.raises(ValueError, match=message):
        validate(params)


# -- server-wide settings (env), beyond tests/runtime/test_settings.py --------------------------------
@pytest.mark.parametrize("env, message", [
    ({"ESAMP_SGL_RANK": "-3"}, r"esamp_rank must be an integer in \[1, 8192\], got -3"),
    ({"ESAMP_SGL_SOURCE_LAYER": "-1"}, r"esamp_source_layer must be an integer in \[0, 1023\]"),
    ({"ESAMP_SGL_SOURCE_SITE": "attention"}, r"esamp_source_site must be one of 'residual', 'first_input_norm'"),
    ({"ESAMP_SGL_TARGET_SITE": "logits"}, r"esamp_target_site must be one of 'final_norm', 'last_input_norm'"),
    ({"ESAMP_SGL_MAX_GROUPS": "0"}, r"esamp_max_groups must be an integer in \[1, 65536\]"),
    ({"ESAMP_SGL_BETA": "inf"}, r"esamp_beta must be a finite number in \[0, 10\], got inf"),
])
def test_bad_server_settings_name_the_field_and_range(env, message):
    with pytest.raises(ValueError, match=message):
        load_server_config(env)


@pytest.mark.e2e
def test_a_server_with_an_unknown_source_layer_refuses_to_start_naming_the_field(model_path, tmp_path):
    """The layer index can only be checked against the model: at start-up, before serving anything."""
    from esamp_sgl.launch.server import SGLangServer, ServerError, server_env

    env = {**server_env(), "ESAMP_SGL_SOURCE_LAYER": "99"}
    server = SGLangServer(model_path, sampling_backend="esamp", env=env, log_path=tmp_path / "server.log",
                          startup_timeout=240)
    with pytest.raises(ServerError) as failed:
        server.start()
    server.stop()
    assert "esamp_source_layer must be an integer in [0, 29] (the model has 30 layers), got 99" in str(failed.value)


# -- over HTTP on the real server (cases not already in tests/e2e/test_esamp_backend.py) ---------------
def _post_raw(server, payload: str) -> requests.Response:
    return requests.post(server.url + "/generate", data=payload, headers={"Content-Type": "application/json"},
                         timeout=120)


def _still_serving(server, chat_prompt) -> None:
    body = {"text": chat_prompt("Hi"), "sampling_params": {"max_new_tokens": 2, "custom_params": {"esamp": True}}}
    response = requests.post(server.url + "/generate", json=body, timeout=120)
    assert response.status_code == 200, response.text
    assert response.json()["meta_info"]["esamp"][0]["status"] == "ok"


@pytest.mark.e2e
@pytest.mark.parametrize("custom_params, message", [
    ({"esamp": True, "esamp_beta": "nan"}, "esamp_beta must be a finite number in [0, 10], got 'nan'"),
    ({"esamp": True, "esamp_beta": -0.5}, "esamp_beta must be a finite number in [0, 10], got -0.5"),
    ({"esamp": True, "esamp_beta": 10.5}, "esamp_beta must be a finite number in [0, 10], got 10.5"),
    ({"esamp": True, "esamp_beta": {"value": 1}}, "esamp_beta must be a finite number in [0, 10]"),
    ({"esamp": True, "esamp_beta": [1, 2]}, "esamp_beta must be a finite number in [0, 10]"),
    ({"esamp": True, "esamp_group": "bad\u0000id"}, "esamp_group must be a non-empty printable string of at most 128"),
    ({"esamp": True, "esamp_group": ""}, "esamp_group must be a non-empty printable string"),
    ({"esamp": True, "esamp_group": 12}, "esamp_group must be a non-empty printable string"),
    ({"esamp": True, "esamp_rule": 5}, "esamp_rule must be one of"),
    ({"esamp": "true"}, "esamp must be a boolean (true or false)"),
    ({"esamp": True, "esamp_source_layer": 3}, "unknown custom_params key 'esamp_source_layer'"),
    ({"esamp": True, "other": [{"a": 1}]}, "custom_params.other must be a JSON scalar"),
    ([1, 2], "custom_params must be a JSON object"),
    ("esamp", "custom_params must be a JSON object"),
])
def test_bad_custom_params_get_400_naming_the_field(esamp_server, chat_prompt, custom_params, message):
    body = {"text": chat_prompt("Hi"), "sampling_params": {"max_new_tokens": 4, "custom_params": custom_params}}
    response = requests.post(esamp_server.url + "/generate", json=body, timeout=120)
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]["message"]
    _still_serving(esamp_server, chat_prompt)


@pytest.mark.e2e
@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_json_numbers_are_refused_by_the_json_parser(esamp_server, chat_prompt, literal):
    """Not valid JSON: SGLang's parser answers 400 before any esamp code runs."""
    payload = ('{"text": "Hi", "sampling_params": {"max_new_tokens": 2, '
               '"custom_params": {"esamp": true, "esamp_beta": %s}}}' % literal)
    assert _post_raw(esamp_server, payload).status_code == 400
    _still_serving(esamp_server, chat_prompt)


@pytest.mark.e2e
def test_bad_custom_params_in_a_batch_reject_the_whole_call(esamp_server, chat_prompt):
    """One bad entry in a batch /generate: 400 for the call, nothing of it runs, server keeps serving."""
    body = {"text": [chat_prompt("Hi"), chat_prompt("Hello")],
            "sampling_params": [{"max_new_tokens": 2, "custom_params": {"esamp": True}},
                                {"max_new_tokens": 2, "custom_params": {"esamp": True, "esamp_beta": 99}}]}
    response = requests.post(esamp_server.url + "/generate", json=body, timeout=120)
    assert response.status_code == 400 and "esamp_beta" in response.text
    _still_serving(esamp_server, chat_prompt)
