"""Group-by-prompt and explore_all, in process: the bounded prompt-group table, and the tokenizer
hook chain (stamp_group, then DP routing) on SGLang's real `_create_tokenized_object`.

The end-to-end proof on a real server is tests/e2e/test_rl_rollouts.py.
"""

from __future__ import annotations

import pytest

from esamp_sgl.core.config import ESampConfig
from runtime_patch.dp_routing import dp_rank_for_group
from runtime_patch.grouping import (PromptGroups, TokenizerGrouping, affinity_key, request_prompt_key,
                                    set_tokenizer_grouping)
from runtime_patch.rows import prompt_key
from test_dp_routing import tokenizer_manager  # noqa: F401  (fixture)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_prompt_group_is_bounded_in_time_and_members():
    clock = Clock()
    groups = PromptGroups(window_s=30, max_members=4, clock=clock)
    first = groups.assign("a" * 32)
    assert first.startswith("prompt-" + "a" * 32 + "-")
    assert [groups.assign("a" * 32) for _ in range(3)] == [first] * 3  # 4 members
    second = groups.assign("a" * 32)  # full: a new group for the same prompt
    assert second != first and affinity_key(second) == affinity_key(first) == "prompt-" + "a" * 32
    assert groups.assign("b" * 32) not in (first, second)  # another prompt, another group
    clock.now += 29.9
    assert groups.assign("a" * 32) == second
    clock.now += 0.2  # past the window of `second` (opened 30.1 s ago)
    third = groups.assign("a" * 32)
    assert third not in (first, second)
    assert len(groups) == 1  # expired groups are dropped: only the new "a" group is left ("b" expired too)


def test_n_counts_as_n_members_and_one_request_is_never_split():
    groups = PromptGroups(window_s=30, max_members=8)
    big = groups.assign("c" * 32, samples=16)  # larger than the cap: still one group, full at once
    assert groups.assign("c" * 32, samples=1) != big
    g = groups.assign("d" * 32, samples=6)
    assert groups.assign("d" * 32, samples=2) == g and groups.assign("d" * 32, samples=1) != g


def test_the_table_is_bounded_in_memory():
    groups = PromptGroups(window_s=1e6, max_members=64, max_open=3)
    ids = [groups.assign(f"{i:032x}") for i in range(10)]
    assert len(groups) == 3 and len(set(ids)) == 10
    assert groups.assign(f"{9:032x}") == ids[9] and groups.assign(f"{0:032x}") != ids[0]  # oldest dropped


def test_affinity_key_leaves_other_ids_alone():
    assert affinity_key("req-abc") == "req-abc" and affinity_key("prompt-xyz-1") == "prompt-xyz-1"
    assert affinity_key("my-group") == "my-group"


@pytest.fixture()
def policy():
    """Installs a tokenizer policy for one test; the server config is read again afterwards."""
    def install(**fields) -> TokenizerGrouping:
        grouping = TokenizerGrouping(ESampConfig(**fields))
        set_tokenizer_grouping(grouping)
        return grouping

    yield install
    set_tokenizer_grouping(None)


def tokenize(manager, rid: str, ids, custom_params=None, n: int = 1, **fields):
    from sglang.srt.managers.io_struct import GenerateReqInput

    params = {"max_new_tokens": 4, "n": n, **({"custom_params": custom_params} if custom_params is not None else {})}
    obj = GenerateReqInput(input_ids=list(ids), sampling_params=params, rid=rid, **fields)
    return manager._create_tokenized_object(obj, "", list(ids))


def group_of(tokenized):
    params = tokenized.sampling_params.custom_params
    return None if not params else params.get("esamp_group")


def test_group_by_prompt_through_the_real_tokenizer_hook(tokenizer_manager, policy):  # noqa: F811
    policy(group_by="prompt", group_max_members=8)
    same = [tokenize(tokenizer_manager, f"r{i}", [5, 6, 7], {"esamp": True}) for i in range(8)]
    groups = {group_of(t) for t in same}
    assert len(groups) == 1 and groups.pop() == f"prompt-{prompt_key([5, 6, 7])}-1"
    other = tokenize(tokenizer_manager, "o", [5, 6, 8], {"esamp": True})
    assert group_of(other) != group_of(same[0])
    ninth = tokenize(tokenizer_manager, "r9", [5, 6, 7], {"esamp": True})  # the first group is full
    assert group_of(ninth) != group_of(same[0])
    # DP affinity: every group of one prompt goes to one rank (2 ranks in this fixture)
    assert {t.routed_dp_rank for t in same + [ninth]} == {dp_rank_for_group(f"prompt-{prompt_key([5, 6, 7])}", 2)}
    # an explicit esamp_group wins; stock requests are not touched
    assert group_of(tokenize(tokenizer_manager, "e", [5, 6, 7], {"esamp": True, "esamp_group": "mine"})) == "mine"
    assert group_of(tokenize(tokenizer_manager, "s", [5, 6, 7])) is None
    assert group_of(tokenize(tokenizer_manager, "f", [5, 6, 7], {"esamp": False})) is None


def test_group_by_request_is_the_default(tokenizer_manager, policy):  # noqa: F811
    policy()
    a = tokenize(tokenizer_manager, "rid-a", [1, 2], {"esamp": True})
    b = tokenize(tokenizer_manager, "rid-b", [1, 2], {"esamp": True})
    assert (group_of(a), group_of(b)) == ("req-rid-a", "req-rid-b")


def test_a_lora_adapter_is_part_of_the_prompt_key():
    from types import SimpleNamespace

    plain = SimpleNamespace(input_ids=[1, 2, 3], mm_inputs=None, input_embeds=None, lora_id=None)
    lora = SimpleNamespace(input_ids=[1, 2, 3], mm_inputs=None, input_embeds=None, lora_id="adapter-1")
    assert request_prompt_key(plain) == prompt_key([1, 2, 3]) != request_prompt_key(lora)
    assert request_prompt_key(SimpleNamespace(input_ids=[1], mm_inputs=object(), input_embeds=None)) is None


def test_explore_all_explores_unless_the_request_opts_out(tokenizer_manager, policy):  # noqa: F811
    policy(explore_all=True)
    plain = tokenize(tokenizer_manager, "p", [3, 4])
    assert plain.sampling_params.custom_params == {"esamp": True, "esamp_group": "req-p"}
    tuned = tokenize(tokenizer_manager, "t", [3, 4], {"esamp_beta": 2.0, "other_plugin": 1})
    assert tuned.sampling_params.custom_params == {"esamp_beta": 2.0, "other_plugin": 1, "esamp": True,
                                                   "esamp_group": "req-t"}
    off = tokenize(tokenizer_manager, "off", [3, 4], {"esamp": False})
    assert off.sampling_params.custom_params == {"esamp": False} and off.routed_dp_rank is None


def test_a_routing_key_names_the_group_unless_esamp_group_does(tokenizer_manager, policy):  # noqa: F811
    policy(group_by="prompt")
    keyed = [tokenize(tokenizer_manager, f"k{i}", [i, 9], {"esamp": True}, routing_key="user-42") for i in range(3)]
    assert {group_of(t) for t in keyed} == {"user-42"}  # different prompts, one key: one group
    assert {t.routed_dp_rank for t in keyed} == {dp_rank_for_group("user-42", 2)}
    assert group_of(tokenize(tokenizer_manager, "x", [1], {"esamp": True, "esamp_group": "g"}, routing_key="k")) == "g"
    long_key = group_of(tokenize(tokenizer_manager, "l", [1], {"esamp": True}, routing_key="k" * 300))
    assert long_key.startswith("key-") and len(long_key) == 36


def test_generate_takes_the_routing_key_from_the_header():
    from types import SimpleNamespace

    from runtime_patch.grouping import routing_key_from_header

    obj = SimpleNamespace(routing_key=None)
    routing_key_from_header(None, obj, SimpleNamespace(headers={"x-smg-routing-key": "abc"}))
    assert obj.routing_key == "abc"
    body = SimpleNamespace(routing_key="from-body")
    routing_key_from_header(None, body, SimpleNamespace(headers={"x-smg-routing-key": "abc"}))
    assert body.routing_key == "from-body"
    routing_key_from_header(None, SimpleNamespace(routing_key=None), None)  # the Engine: no HTTP request


def test_explore_all_leaves_a_stock_server_alone(tokenizer_manager, policy):  # noqa: F811
    from sglang.srt.runtime_context import get_exec

    policy(explore_all=True)
    with get_exec().kernel.override(sampling_backend="pytorch"):
        assert tokenize(tokenizer_manager, "stock", [3, 4]).sampling_params.custom_params is None


def test_the_grouping_settings_come_from_the_environment_and_are_validated():
    from runtime_patch.settings import load_server_config

    config = load_server_config({"ESAMP_SGL_GROUP_BY": "prompt", "ESAMP_SGL_GROUP_WINDOW_S": "5",
                                 "ESAMP_SGL_GROUP_MAX_MEMBERS": "16", "ESAMP_SGL_EXPLORE_ALL": "true"})
    assert (config.group_by, config.group_window_s, config.group_max_members, config.explore_all) == ("prompt", 5.0, 16, True)
    assert load_server_config({}).group_by == "request" and not load_server_config({}).explore_all
    for key, value, field in (("ESAMP_SGL_GROUP_BY", "sequence", "esamp_group_by"),
                              ("ESAMP_SGL_GROUP_WINDOW_S", "0", "esamp_group_window_s"),
                              ("ESAMP_SGL_GROUP_MAX_MEMBERS", "0", "esamp_group_max_members"),
                              ("ESAMP_SGL_EXPLORE_ALL", "sometimes", "esamp_explore_all")):
        with pytest.raises(ValueError, match=field):
            load_server_config({key: value})
