"""Group-affine data parallelism: every member of a fork group goes to one DP rank.

ESamp's group state (the Distiller, its optimiser, its telemetry) lives in one scheduler process.
Under `--dp-size N` SGLang's DataParallelController dispatches every request on its own, the `n`
expanded samples of one request included (`TokenizerManager` sends `n` copies of the tokenized
object, each dispatched separately; round robin by default), so a group would be split into N
weaker private Distillers.

SGLang already has a per-request routing field: `TokenizedGenerateReqInput.routed_dp_rank`. Every
load-balance method of the DP controller first calls `maybe_external_dp_rank_routing`, which
sends a request with the field set to that rank. This module sets the field for exploring
requests, in the tokenizer process, from a stable hash of the group id. The `n` samples (and the
prefix-warming request) are `copy.copy` of that object, so they inherit it. Requests without
ESamp are untouched and keep the configured `--load-balance-method`.

A client that sets `routed_dp_rank` itself keeps it (SGLang's explicit routing wins); keeping the
members of one group together is then the client's job.
"""

from __future__ import annotations

import hashlib

from runtime_patch.backend import server_explores


def dp_rank_for_group(group: str, num_dp_ranks: int) -> int:
    """The DP rank that owns `group`: blake2b of the id, modulo the rank count.

    Not Python's `hash()`, which is salted per process: the tokenizer, a restarted server and an
    external router must all compute the same rank for the same id.
    """
    if num_dp_ranks < 1:
        raise ValueError(f"num_dp_ranks must be >= 1, got {num_dp_ranks}")
    digest = hashlib.blake2b(group.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % num_dp_ranks


def exploring_group_of(tokenized) -> str | None:
    """The `esamp_group` of an exploring request, else None (stock requests are not routed)."""
    params = getattr(getattr(tokenized, "sampling_params", None), "custom_params", None)
    if not params or not params.get("esamp"):
        return None
    group = params.get("esamp_group")
    return None if group is None else str(group)


def route_group_to_dp_rank(result, tokenizer_manager, obj, *args, **kwargs):
    """AFTER TokenizerManager._create_tokenized_object, registered after `hooks.stamp_group` (the
    wrapper chain runs AFTER hooks in registration order), so the group id is already stamped."""
    num_dp_ranks = getattr(tokenizer_manager, "elastic_worker_count", 1) or 1
    if num_dp_ranks <= 1 or getattr(result, "routed_dp_rank", None) is not None:
        return result
    if not server_explores():
        return result  # a stock server ignores `esamp`: keep its load balancing
    group = exploring_group_of(result)
    if group is not None:
        from runtime_patch.grouping import affinity_key

        # A prompt group (group_by = prompt) is routed by its prompt: every window's group of one
        # prompt goes to the same rank, the one whose prefix cache holds it.
        result.routed_dp_rank = dp_rank_for_group(affinity_key(group), num_dp_ranks)
    return result
