"""ESampConfig / ExploreRequest validation and the GroupTable."""

from __future__ import annotations

import math

import pytest

from esamp_sgl.core.config import ESampConfig, ExploreRequest
from esamp_sgl.core.explorer import resolve_backend
from esamp_sgl.core.groups import GroupTable


def test_defaults_are_valid_and_documented_values():
    c = ESampConfig()
    assert (c.beta, c.rule, c.rank, c.lr, c.optimizer) == (1.0, "compensated", 64, 1e-3, "adam")
    assert (c.source_layer, c.source_site, c.target_site) == (2, "residual", "final_norm")
    assert (c.max_groups, c.apply_to_greedy) == (64, False)
    assert c.prefill_warm_start and not c.svd_warm_start and c.training
    assert (c.fit_gate, c.tilt_bound) == (True, 1.0)


@pytest.mark.parametrize("field,value,message", [
    ("beta", math.nan, r"esamp_beta must be a finite number in \[0, 10\], got nan"),
    ("beta", math.inf, r"esamp_beta must be a finite number in \[0, 10\], got inf"),
    ("beta", -0.1, r"esamp_beta must be a finite number in \[0, 10\], got -0.1"),
    ("beta", True, r"esamp_beta must be a finite number .* got True \(bool\)"),
    ("rank", 0, r"esamp_rank must be an integer in \[1, 8192\], got 0"),
    ("rank", 2.5, r"esamp_rank must be an integer"),
    ("lr", 0.0, r"esamp_lr must be a finite number in \(0, 1\]"),
    ("optimizer", "rmsprop", r"esamp_optimizer must be one of 'adam', 'adamw', 'sgd', got 'rmsprop'"),
    ("rule", "paper", r"esamp_rule must be one of 'contrastive', 'compensated'"),
    ("source_site", "embed", r"esamp_source_site must be one of 'residual', 'first_input_norm'"),
    ("target_site", "logits", r"esamp_target_site must be one of 'final_norm', 'last_input_norm'"),
    ("backend", "triton", r"esamp_backend must be one of 'auto', 'torch', got 'triton'"),
    # The FlashInfer candidate path was removed (config.py BACKENDS): naming it is a config error.
    ("backend", "flashinfer", r"esamp_backend must be one of 'auto', 'torch', got 'flashinfer'"),
    ("train_mode", "async", r"esamp_train_mode must be one of 'auto', 'sync', 'cuda_stream'"),
    ("train_mode", "thread", r"esamp_train_mode must be one of 'auto', 'sync', 'cuda_stream'"),
    ("train_steps_per_decode", 0, r"esamp_train_steps_per_decode must be an integer in \[1, 64\]"),
    ("max_groups", 0, r"esamp_max_groups must be an integer in \[1, 65536\]"),
    ("max_candidates", 0, r"esamp_max_candidates must be an integer"),
    ("greedy_min_p", 0.0, r"esamp_greedy_min_p must be a finite number in \(0, 1\]"),
    ("training", 1, r"esamp_training must be a boolean \(true or false\), got 1 \(int\)"),
    ("seed", -1, r"esamp_seed must be an integer"),
])
def test_every_field_is_validated_with_a_message_naming_it(field, value, message):
    with pytest.raises(ValueError, match=message):
        ESampConfig(**{field: value})


def test_auto_backend_is_the_torch_candidate_path_on_every_device():
    # resolve_backend takes no device and looks up no package: the choice is the same everywhere.
    config = ESampConfig()
    assert config.backend == "auto"
    assert resolve_backend(config.backend) == "torch"
    assert resolve_backend("torch") == "torch"


def test_unknown_fields_and_assignment_are_checked():
    with pytest.raises(ValueError, match="Extra inputs are not permitted"):
        ESampConfig(betta=0.1)
    c = ESampConfig()
    with pytest.raises(ValueError, match="esamp_beta"):
        c.beta = float("nan")


def test_strings_from_cli_or_env_are_accepted_for_the_config():
    c = ESampConfig(beta="0.3", rank="32", training="false")
    assert (c.beta, c.rank, c.training) == (0.3, 32, False)


def test_validate_for_model():
    ESampConfig(rank=64).validate_for_model(576, num_layers=30)
    with pytest.raises(ValueError, match=r"esamp_rank must be an integer in \[1, 32\]"):
        ESampConfig(rank=64).validate_for_model(32)
    with pytest.raises(ValueError, match=r"esamp_source_layer must be an integer in \[0, 29\]"):
        ESampConfig(source_layer=30).validate_for_model(576, num_layers=30)
    ESampConfig(source_layer=30, source_site="first_input_norm").validate_for_model(576, 30)


def test_explore_request_parsing():
    assert ExploreRequest.from_custom_params(None) is None
    assert ExploreRequest.from_custom_params({}) is None
    assert ExploreRequest.from_custom_params({"esamp": False, "esamp_beta": 0.2}) is None
    assert ExploreRequest.from_custom_params({"thinking_budget": 3, "__req__": object()}) is None
    r = ExploreRequest.from_custom_params(
        {"esamp": True, "esamp_beta": 2, "esamp_group": "fork-7", "esamp_rule": "compensated",
         "other_plugin": [1, 2]})
    assert (r.beta, r.group, r.rule) == (2.0, "fork-7", "compensated")
    r = ExploreRequest.from_custom_params({"esamp": True})
    assert (r.beta, r.group, r.rule) == (None, None, None)


@pytest.mark.parametrize("params,message", [
    ({"esamp": True, "esamp_beta": True}, r"esamp_beta must be a finite number in \[0, 10\], got True"),
    ({"esamp": True, "esamp_beta": math.nan}, r"esamp_beta must be a finite number in \[0, 10\], got nan"),
    ({"esamp": True, "esamp_beta": 11}, r"esamp_beta .* got 11"),
    ({"esamp": True, "esamp_beta": "0.5"}, r"esamp_beta .* got '0.5' \(str\)"),
    ({"esamp": 1}, r"esamp must be a boolean \(true or false\), got 1 \(int\)"),
    ({"esamp": "yes"}, r"esamp must be a boolean"),
    ({"esamp": True, "esamp_betas": 0.1}, r"unknown custom_params key 'esamp_betas'; allowed"),
    ({"esamp": False, "esamp_beta": -1}, r"esamp_beta must be"),  # validated even when off
    ({"esamp": True, "esamp_group": 5}, r"esamp_group must be a non-empty printable string"),
    ({"esamp": True, "esamp_group": ""}, r"esamp_group must be"),
    ({"esamp": True, "esamp_group": "x" * 129}, r"at most 128 characters"),
    ({"esamp": True, "esamp_group": "a\x00b"}, r"esamp_group must be"),
    ({"esamp": True, "esamp_rule": "paper"}, r"esamp_rule must be one of 'contrastive', 'compensated'"),
])
def test_explore_request_errors_name_the_field(params, message):
    with pytest.raises(ValueError, match=message):
        ExploreRequest.from_custom_params(params)


def test_group_table_lifecycle():
    t = GroupTable(2)
    assert t.join("a") == 0 and t.join("a") == 0 and t.members("a") == 2
    assert t.join("b") == 1
    assert t.join("c") is None and t.refusals == 1  # full: "c" is a stock group, holding no slot
    assert len(t) == t.slots_in_use == 2 and t.stock_members("c") == 1
    assert t.leave("c") is None and t.stock_groups == 0  # a stock member frees nothing
    assert t.leave("a") is None and "a" in t
    assert t.leave("a") == 0 and "a" not in t
    assert t.leave("a") is None  # already gone
    assert t.join("c") == 0  # the freed slot is reused
    assert t.leave("b") == 1 and t.leave("c") == 0
    assert len(t) == 0


def test_group_table_memory_stays_bounded_under_churn():
    t = GroupTable(4)
    for i in range(10_000):
        key = f"g{i}"
        assert t.join(key) is not None
        if i % 3:
            t.join(key)
            t.leave(key)
        assert t.leave(key) is not None
    assert len(t) == 0 and len(t._free) == 4 and not t._slot and not t._members
    with pytest.raises(ValueError, match="esamp_max_groups"):
        GroupTable(0)


def test_group_table_join_leave_keeps_a_refused_group_stock_for_its_life():
    table = GroupTable(1)
    assert table.join("a") == 0
    assert table.join("b") is None and table.refusals == 1 and table.stock_groups == 1
    assert table.leave("a") == 0  # the slot is free again ...
    assert table.join("b") is None and table.stock_members("b") == 2  # ... but b stays stock
    assert table.refusals == 1  # a stock group's later members are not new refusals
    assert table.leave("b") is None and table.leave("b") is None
    assert table.stock_groups == 0 and table.join("b") == 0  # gone, then a fresh group


def test_the_settings_table_in_the_docs_is_the_field_table():
    from pathlib import Path

    from esamp_sgl.core.config import FIELDS, ESampConfig, fields_markdown

    assert set(FIELDS) == set(ESampConfig.model_fields)  # every field validated through the one table
    doc = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()
    assert fields_markdown() in doc, "regenerate docs/operations.md's table with config.fields_markdown()"
