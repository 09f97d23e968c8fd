"""The esamp backend under tensor parallelism (`--tp-size N`).

What TP changes for ESamp, and how each is handled:

* The LM head is vocabulary-sharded: on TP rank `i`, `lm_head.weight` holds rows
  `[org_vocab_start_index, org_vocab_end_index)` of the vocabulary (plus padding rows). The
  candidate logits `d = ĥ·W_U[candidates]` index global token ids, so the Explorer needs the whole
  table. `full_lm_head_weight` assembles it once at bind time (each rank writes its own rows into a
  zero table, one all-reduce SUM over the TP group: exact, since every entry has one non-zero
  contributor). Cost: one V×H copy per rank (SmolLM2: 57 MB bf16; a 7B model with a 128k vocabulary:
  1 GB), in exchange for no collective in the per-step hot path.
* Every TP rank runs the whole sampler on the all-gathered logits with the same inputs: the taps
  are the replicated residual stream, the Distiller init and ESamp's generator are seeded from the
  same `seed`, and the rows are the same. Identical bits are still not guaranteed across processes
  (reduction order in matmuls), and unlike a stock draw a Distiller accumulates state over steps, so
  a last-bit difference can grow. The backend therefore requires SGLang's token sync across TP
  (`SYNC_TOKEN_IDS_ACROSS_TP=1`: an all-reduce MIN of the sampled ids, inside `Sampler.forward`),
  which makes every rank continue with the same tokens whatever the Distillers' last bits.
"""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger("esamp_sgl.tensor_parallel")

SYNC_ENV = "SYNC_TOKEN_IDS_ACROSS_TP"


class UnsupportedParallelism(RuntimeError):
    pass


def lm_head_tp_size(lm_head) -> int:
    """How many ranks the LM head's vocabulary is split over (1: the whole table is local)."""
    return int(getattr(lm_head, "tp_size", 1)) if getattr(lm_head, "enable_tp", False) else 1


def check_tensor_parallel(tp_size: int) -> None:
    """Start-up check: TP needs SGLang's token sync (read from SGLang's own flag, not the env, so
    the check sees exactly what the sampler will do)."""
    if tp_size <= 1:
        return
    from sglang.srt.layers import sampler

    if not sampler.SYNC_TOKEN_IDS_ACROSS_TP:
        raise UnsupportedParallelism(
            f"--sampling-backend esamp with --tp-size {tp_size} needs {SYNC_ENV}=1 in the server's "
            "environment: every TP rank trains its own copy of the Distillers, and SGLang's token sync keeps "
            "the ranks on the same tokens even if those copies differ in the last bit"
        )


def full_lm_head_weight(lm_head) -> torch.Tensor:
    """The unsharded [org_vocab_size, H] LM head (the local weight itself when not sharded)."""
    weight = lm_head.weight
    if lm_head_tp_size(lm_head) == 1:
        return weight
    shard = lm_head.shard_indices
    if shard.num_added_elements or shard.num_added_elements_padded:
        raise UnsupportedParallelism("esamp under tensor parallelism does not support an LM head with added "
                                     "(LoRA) vocabulary")
    vocab, hidden = lm_head.org_vocab_size, weight.shape[1]
    # Gloo (CPU) all-reduce is done in fp32; NCCL takes the model dtype. Either way x + 0 is exact.
    dtype = torch.float32 if weight.device.type == "cpu" else weight.dtype
    full = torch.zeros(vocab, hidden, dtype=dtype, device=weight.device)
    full[shard.org_vocab_start_index:shard.org_vocab_end_index] = weight[: shard.num_org_elements].to(dtype)
    torch.distributed.all_reduce(full, group=lm_head.tp_group.device_group)
    logger.info("esamp: LM head assembled from %d TP shards: local %s -> full %s",
                lm_head_tp_size(lm_head), tuple(weight.shape), tuple(full.shape))
    return full.to(weight.dtype)
