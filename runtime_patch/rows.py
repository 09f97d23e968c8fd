"""Which request each row of a batch is, carried on SGLang's `SamplingBatchInfo`.

The sampler only sees `sampling_info`, so the rows' request ids and ESamp options ride on it as an
extra attribute, kept aligned through SGLang's own filter/merge placeholders:

* `adjusted_from_schedule_batch` (end of `from_schedule_batch`, one call per new extend batch):
  parse each request's `custom_params`, and let the new requests join their groups;
* `adjusted_filter_batch` (requests finished/retracted): keep the surviving rows;
* `adjusted_merge_batch` (called after the tensors are concatenated): append the other batch's rows;
* `copy_for_forward` uses `dataclasses.replace`, which drops non-field attributes: copy it over.

An extend batch's rows also say which prompt positions its forward computes (`spans`), for the
prefill warm start; filter and merge happen after that forward, so they drop the spans.
"""

from __future__ import annotations

import hashlib
from array import array
from dataclasses import dataclass
from typing import Sequence

from esamp_sgl.core.config import ExploreRequest

ROWS_ATTR = "_esamp_rows"


@dataclass(frozen=True)
class ExtendSpan:
    """The prompt positions [start, end) that one row's extend forward computes."""

    prompt_key: str  # a hash of the prompt's token ids: identical prompts share their captured pairs
    prompt_len: int
    start: int
    end: int
    completes_prompt: bool  # the prompt's last chunk: the request samples its first token now


@dataclass(frozen=True)
class BatchRows:
    rids: tuple[str, ...]
    requests: tuple[ExploreRequest | None, ...]  # None = the request did not ask for ESamp
    # Extend batches: per row, the prompt positions to capture (None: not an ESamp request).
    spans: tuple[ExtendSpan | None, ...] | None = None

    @property
    def any_requested(self) -> bool:
        return any(r is not None for r in self.requests)

    def take(self, keep: Sequence[int]) -> "BatchRows":
        return BatchRows(tuple(self.rids[i] for i in keep), tuple(self.requests[i] for i in keep))

    def concat(self, other: "BatchRows") -> "BatchRows":
        return BatchRows(self.rids + other.rids, self.requests + other.requests)

    @staticmethod
    def stock(n: int) -> "BatchRows":
        return BatchRows(("",) * n, (None,) * n)


def prompt_key(token_ids: Sequence[int]) -> str:
    ids = token_ids if isinstance(token_ids, array) else array("q", token_ids)
    return hashlib.blake2b(ids.tobytes(), digest_size=16).hexdigest()


def asks_for_esamp(req) -> bool:
    """The request (the n>1 prefix-warming copy included) has `esamp: true` in its custom_params."""
    params = req.sampling_params.custom_params
    return isinstance(params, dict) and params.get("esamp") is True


def prompt_key_of(req) -> str:
    """The request's prompt key, hashed once per request."""
    key = getattr(req, "_esamp_prompt_key", None)
    if key is None:
        key = prompt_key(req.origin_input_ids)
        req._esamp_prompt_key = key
    return key


def extend_span(req) -> ExtendSpan | None:
    """The span of a request that asked for ESamp (the n>1 prefix-warming copy included: its
    forward computes the prompt its siblings then find in the radix cache)."""
    if not asks_for_esamp(req):
        return None
    end = req.extend_end
    return ExtendSpan(prompt_key_of(req), len(req.origin_input_ids), req.prefix_len, end,
                      completes_prompt=end >= len(req.full_untruncated_fill_ids))


_NOT_PARSED = object()


def explore_request_of(req) -> ExploreRequest | None:
    """The request's ESamp options (already validated with a 400 in the tokenizer process), parsed
    once per request: the hook that joins groups and the one that attaches row metadata both ask."""
    cached = getattr(req, "_esamp_request", _NOT_PARSED)
    if cached is not _NOT_PARSED:
        return cached
    request = None
    if req.sampling_params.max_new_tokens != 0:  # 0: the n>1 prefix-warming request, never sampled
        try:
            request = ExploreRequest.from_custom_params(req.sampling_params.custom_params)
        except ValueError:  # unreachable through HTTP (validated earlier); never crash the scheduler
            request = None
    req._esamp_request = request
    return request


def rows_of(info) -> BatchRows | None:
    return getattr(info, ROWS_ATTR, None)
