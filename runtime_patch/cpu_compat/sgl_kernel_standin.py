"""Pure-torch stand-in for the CPU build of `sgl_kernel` (module name `sgl_kernel` once loaded).

SGLang 0.5.23 on a CPU without AMX runs every layer through its `forward_native` torch path; the only
`sgl_kernel` op it calls for plain decoding is `assign_req_to_token_pool_cpu`. The other `*_cpu` names
it imports at module level (speculative decoding, KV moves, mamba) exist here so those imports succeed,
and raise a clear error if ever called. `torch.ops.sgl_kernel` stays empty, so SGLang's
`cpu_has_amx_support()` stays False and no fused AMX kernel is ever selected.
"""

from __future__ import annotations

import torch

__version__ = "0.0.0+esamp-sgl-standin"
IS_ESAMP_STANDIN = True

IMPLEMENTED_OPS = ("assign_req_to_token_pool_cpu",)


def assign_req_to_token_pool_cpu(
    req_pool_indices: torch.Tensor,
    req_to_token: torch.Tensor,
    start_offset: torch.Tensor,
    end_offset: torch.Tensor,
    out_cache_loc: torch.Tensor,
    pool_len: int | None = None,
) -> None:
    """Write each request's new KV slots into its row of the request→token table.

    For request i: `req_to_token[req_pool_indices[i], start_offset[i]:end_offset[i]]` receives the next
    `end_offset[i] - start_offset[i]` entries of `out_cache_loc` (requests are packed back to back).
    Vectorised: one scatter for the whole batch instead of a Python loop per request.
    """
    del pool_len  # the CUDA/CPU kernels take the row stride; a 2-D tensor already knows it
    lengths = (end_offset - start_offset).to(torch.int64)
    if lengths.numel() == 0:
        return
    total = int(lengths.sum())
    if total == 0:
        return
    owner = torch.repeat_interleave(torch.arange(lengths.numel(), device=lengths.device), lengths, output_size=total)
    first_of_owner = torch.cumsum(lengths, 0) - lengths  # where each request starts in out_cache_loc
    within = torch.arange(total, device=lengths.device) - first_of_owner[owner]
    rows = req_pool_indices.to(torch.int64)[owner]
    cols = start_offset.to(torch.int64)[owner] + within
    req_to_token[rows, cols] = out_cache_loc[:total].to(req_to_token.dtype)


def __getattr__(name: str):
    # SGLang imports further `*_cpu` helpers at module level (speculative decoding, KV-cache moves).
    # Hand out a callable that fails loudly, naming the op, only if it is ever called.
    if name.endswith("_cpu") and not name.startswith("__"):

        def _not_provided(*args, **kwargs):
            raise NotImplementedError(
                f"sgl_kernel.{name} is not provided by esamp-sgl's pure-torch CPU stand-in "
                f"(implemented: {', '.join(IMPLEMENTED_OPS)}). This SGLang feature needs the CPU build of "
                "sgl-kernel (not on PyPI) or a GPU machine."
            )

        _not_provided.__name__ = name
        globals()[name] = _not_provided
        return _not_provided
    raise AttributeError(f"module 'sgl_kernel' (esamp-sgl CPU stand-in) has no attribute {name!r}")
