"""Which request each row of a batch is, carried on SGLang's `SamplingBatchInfo`.

The sampler only sees `sampling_info`, so the rows' request ids and ESamp options ride on it as an
extra attribute, kept aligned through SGLang's own filter/merge placeholders:

* `adjusted_from_schedule_batch` (end of `from_schedule_batch`, one call per new extend batch):
  parse each request's `custom_params`, and let the new requests join their groups;
* `adjusted_filter_batch` (requests finished/retracted): keep the surviving rows;
* `adjusted_merge_batch` (called after the tensors are concatenated): append the other batch's rows;
* `copy_for_forward` uses `dataclasses.replace`, which drops non-field attributes: copy it over.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from esamp_sgl.config import ExploreRequest

ROWS_ATTR = "_esamp_rows"


@dataclass(frozen=True)
class BatchRows:
    rids: tuple[str, ...]
    requests: tuple[ExploreRequest | None, ...]  # None = the request did not ask for ESamp

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


def explore_request_of(req) -> ExploreRequest | None:
    """The request's ESamp options (already validated with a 400 in the tokenizer process)."""
    if req.sampling_params.max_new_tokens == 0:  # n>1 prefix-warming request: never sampled for real
        return None
    try:
        return ExploreRequest.from_custom_params(req.sampling_params.custom_params)
    except ValueError:  # unreachable through HTTP (validated earlier); never crash the scheduler
        return None


def rows_of(info) -> BatchRows | None:
    return getattr(info, ROWS_ATTR, None)
