"""Server-wide ESamp defaults from the environment: parsed, validated, and errors name the field."""

from __future__ import annotations

import json

import pytest

from runtime_patch.settings import load_server_config


def test_defaults_file_and_env_override(tmp_path):
    path = tmp_path / "esamp.json"
    path.write_text(json.dumps({"beta": 0.8, "rule": "compensated", "max_groups": 16}))
    config = load_server_config({"ESAMP_SGL_CONFIG": str(path), "ESAMP_SGL_BETA": "2.5",
                                 "ESAMP_SGL_APPLY_TO_GREEDY": "true"})
    assert (config.beta, config.rule, config.max_groups, config.apply_to_greedy) == (2.5, "compensated", 16, True)
    assert load_server_config({}).beta == 1.0


@pytest.mark.parametrize("env, field", [
    ({"ESAMP_SGL_BETA": "nan"}, "esamp_beta"),
    ({"ESAMP_SGL_RANK": "0"}, "esamp_rank"),
    ({"ESAMP_SGL_OPTIMIZER": "lion"}, "esamp_optimizer"),
    ({"ESAMP_SGL_TRAINING": "maybe"}, "esamp_training"),
])
def test_bad_values_name_the_field(env, field):
    with pytest.raises(ValueError, match=field):
        load_server_config(env)


def test_unreadable_or_non_object_config_file_is_named(tmp_path):
    with pytest.raises(ValueError, match="ESAMP_SGL_CONFIG"):
        load_server_config({"ESAMP_SGL_CONFIG": str(tmp_path / "missing.json")})
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="JSON object"):
        load_server_config({"ESAMP_SGL_CONFIG": str(tmp_path / "list.json")})
