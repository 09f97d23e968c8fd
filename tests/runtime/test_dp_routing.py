"""Group-affine DP routing, in process, through SGLang's real (hooked) TokenizerManager method.

The end-to-end proof on a real `--dp-size 2` server is tests/e2e/test_data_parallel.py; this checks
the routing function and the hook chain (stamp_group, then route_group_to_dp_rank) on SGLang's own
`_create_tokenized_object`, with every request shape that matters.
"""

from __future__ import annotations

import collections
from types import SimpleNamespace

import pytest

from runtime_patch.dp_routing import dp_rank_for_group


def test_the_rank_is_a_stable_hash_of_the_group_id():
    # Fixed values: a restarted server or an external router must agree with this process.
    assert [dp_rank_for_group(f"g{i}", 4) for i in range(8)] == [dp_rank_for_group(f"g{i}", 4) for i in range(8)]
    assert dp_rank_for_group("group-a", 1) == 0
    expected = int.from_bytes(__import__("hashlib").blake2b(b"group-a", digest_size=8).digest(), "big") % 7
    assert dp_rank_for_group("group-a", 7) == expected
    with pytest.raises(ValueError):
        dp_rank_for_group("group-a", 0)


def test_groups_spread_over_the_ranks():
    counts = collections.Counter(dp_rank_for_group(f"req-{i:04d}", 2) for i in range(2000))
    assert set(counts) == {0, 1} and abs(counts[0] - counts[1]) < 200  # ~binomial(2000, .5): sd 22


@pytest.fixture()
def tokenizer_manager(sglang_with_plugin):
    """A TokenizerManager with only the state `_create_tokenized_object` reads (building a real one
    needs a model, ZMQ sockets and an event loop); the method itself is SGLang's, hooks applied."""
    from sglang.srt.managers.tokenizer_manager import TokenizerManager
    from sglang.srt.sampling.sampling_params import SamplingParams

    manager = object.__new__(TokenizerManager)
    manager.preferred_sampling_params = None
    manager.sampling_params_class = SamplingParams
    manager.tokenizer = None
    manager.model_config = SimpleNamespace(vocab_size=49152)
    manager.rid_to_state = collections.defaultdict(
        lambda: SimpleNamespace(time_stats=SimpleNamespace(set_tokenize_finish_time=lambda: None)))
    manager.elastic_worker_count = 2
    return manager


def tokenize(manager, rid: str, custom_params=None, **fields):
    from sglang.srt.managers.io_struct import GenerateReqInput

    params = {"max_new_tokens": 4, **({"custom_params": custom_params} if custom_params else {})}
    obj = GenerateReqInput(text="hi", sampling_params=params, rid=rid, **fields)
    return manager._create_tokenized_object(obj, "hi", [1, 2, 3])


def test_an_exploring_request_is_routed_by_its_stamped_group(tokenizer_manager):
    out = tokenize(tokenizer_manager, "rid-1", {"esamp": True})
    assert out.sampling_params.custom_params["esamp_group"] == "req-rid-1"  # stamp_group ran first
    assert out.routed_dp_rank == dp_rank_for_group("req-rid-1", 2)


def test_requests_sharing_an_esamp_group_share_a_rank(tokenizer_manager):
    ranks = {tokenize(tokenizer_manager, f"rid-{i}", {"esamp": True, "esamp_group": "shared"}).routed_dp_rank
             for i in range(6)}
    assert ranks == {dp_rank_for_group("shared", 2)}
    both = {tokenize(tokenizer_manager, f"x-{i}", {"esamp": True, "esamp_group": f"g{i}"}).routed_dp_rank
            for i in range(16)}
    assert both == {0, 1}  # distinct groups do use both ranks


def test_stock_requests_and_explicit_routing_are_left_alone(tokenizer_manager):
    assert tokenize(tokenizer_manager, "plain").routed_dp_rank is None  # keeps --load-balance-method
    assert tokenize(tokenizer_manager, "off", {"esamp": False}).routed_dp_rank is None
    other = 1 - dp_rank_for_group("pinned", 2)
    pinned = tokenize(tokenizer_manager, "p", {"esamp": True, "esamp_group": "pinned"}, routed_dp_rank=other)
    assert pinned.routed_dp_rank == other  # SGLang's explicit per-request routing wins


def test_one_dp_rank_routes_nothing(tokenizer_manager):
    tokenizer_manager.elastic_worker_count = 1
    assert tokenize(tokenizer_manager, "solo", {"esamp": True}).routed_dp_rank is None


def test_a_stock_server_refuses_exploring_requests_and_routes_nothing(tokenizer_manager):
    from sglang.srt.runtime_context import get_exec

    with get_exec().kernel.override(sampling_backend="pytorch"):  # what a --sampling-backend pytorch server resolves
        with pytest.raises(ValueError, match="--sampling-backend esamp"):  # HTTP 400, before any routing
            tokenize(tokenizer_manager, "stock-server", {"esamp": True})
        assert tokenize(tokenizer_manager, "stock-plain").routed_dp_rank is None
