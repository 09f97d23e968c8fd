"""The esamp backend under tensor parallelism (`--tp-size N`).

What TP changes for ESamp, and how each is handled:

* The LM head is vocabulary-sharded: on TP rank `i`, `lm_head.weight` holds rows
  `[org_vocab_start_index, org_vocab_end_index)` of the vocabulary (plus padding rows). The
  candidate logits `d = ĥ·W_U[candidates]` index global token ids, so the Explorer needs the whole
  table. `full_lm_head_weight` assembles it once at bind time (each rank writes its own rows into a
  zero table, one all-reduce SUM over the TP group: exact, since every entry has one non-zero
  contributor). Cost: one V×H copy per rank (SmolLM2: 57 MB bf16; a 7B model with a 128k vocabulary:
  1 GB), in exchange for no collective in the per-step hot path.
* The ESamp work is split over the ranks by group (`RowOwnership`): the group in bank slot `s` is
  computed by TP rank `s % tp_size` only — its prediction, candidates, tilt, draw, fit, training and
  prefill warm start. The other ranks sample its rows stock and put a sentinel in their place; one
  all-reduce MIN of the step's token ids over the TP group (`combine`, a [rows] int tensor, issued
  on every rank whenever any row of the batch explores) gives every rank the owner's tokens, before
  SGLang computes logprobs and its own token sync. So the prediction and training cost per rank
  shrinks with TP (balanced when the live groups spread over the slots), at one small collective per
  exploring step. Every rank must reach the exchange of every such step: it follows from the rows and
  memberships alone, which are the same on every rank, and the exchange runs whatever the step did
  (a failed check or step samples stock and still exchanges). A step whose taps or plan cannot even
  be built skips it, on every rank alike, since those inputs are identical. Every rank still samples
  the whole batch stock (SGLang's draw, same seed), so the engine's generator advances identically on
  every rank and stock rows stay identical.
* A group's telemetry lives on its owner; when a member leaves, the owner's report is broadcast over
  the TP group's CPU group (`report_from_owner`), as SGLang broadcasts requests: every rank handles
  the same finished and aborted requests in the same order. Only rank 0 streams it to the client.
* Latent mixing before the LM head (head_mix.py) is off under TP: the sharded head would need ĥ on
  every rank. The owner mixes after the head (`mix_latent`, one more projection of its own rows).
* SGLang's token sync across TP (`SYNC_TOKEN_IDS_ACROSS_TP=1`, an all-reduce MIN of the sampled ids
  inside `Sampler.forward`) stays required: it keeps stock rows identical across ranks whatever the
  last bits of their logits.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from esamp_sgl.core.layout import to_device

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
            "environment: SGLang's token sync keeps the ranks on the same stock tokens even if their logits "
            "differ in the last bit"
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


# Written by a rank for the rows another rank explores; the MIN over the TP group keeps the owner's id.
FOREIGN_ROW = torch.iinfo(torch.int32).max


@dataclass(frozen=True)
class RowOwnership:
    """Which TP rank computes which fork group's ESamp work: the group in bank slot `s` is rank
    `s % size`'s. `device_group` carries the per-step token exchange (NCCL on GPUs, gloo on CPU),
    `cpu_group` the telemetry of a leaving member; `ranks` are the group's global ranks."""

    rank: int
    size: int
    ranks: tuple[int, ...]
    device_group: object
    cpu_group: object

    def owner(self, slot: int) -> int:
        return slot % self.size

    def owns(self, slot: int) -> bool:
        return self.owner(slot) == self.rank

    def foreign_rows(self, slots: Sequence[int], device: torch.device) -> torch.Tensor | None:
        """[rows] bool: the rows another rank explores, or None when no row has a slot (then no rank
        exchanges tokens: every rank decides this from the same rows)."""
        if all(s < 0 for s in slots):
            return None
        foreign = np.asarray([s >= 0 and not self.owns(s) for s in slots], dtype=bool)
        return to_device([foreign], device)[0]  # pinned, non-blocking: no host sync on CUDA

    def combine(self, ids: torch.Tensor, foreign: torch.Tensor) -> torch.Tensor:
        """Every rank's ids [rows] -> the owners' ids on every rank, as int64: a foreign row's own
        id is replaced by FOREIGN_ROW and one all-reduce MIN picks the owner's (stock rows are equal
        on every rank). Called by every rank for every step whose foreign_rows is not None. One
        dtype for every rank: a rank that drew nothing itself holds the engine's int32 ids, an
        exploring rank ESamp's int64 ones, and a collective needs the same size everywhere."""
        ids = ids.to(torch.int64)
        out = torch.where(foreign, torch.full_like(ids, FOREIGN_ROW), ids)
        torch.distributed.all_reduce(out, op=torch.distributed.ReduceOp.MIN, group=self.device_group)
        return out

    def report_from_owner(self, slot: int, report: Callable[[], dict]) -> dict:
        """The owner's `report()` of the group in `slot`, on every rank (one broadcast over the CPU
        group; every rank calls this for the same leaving member). If the owner's report raises,
        every rank raises (no rank is left waiting in the broadcast)."""
        box: list = [None]
        if self.owns(slot):
            try:
                box[0] = report()
            except Exception as exc:
                box[0] = ReportFailed(f"{type(exc).__name__}: {exc}")
        torch.distributed.broadcast_object_list(box, src=self.ranks[self.owner(slot)], group=self.cpu_group)
        if isinstance(box[0], ReportFailed):
            raise RuntimeError(f"esamp: the report of the group in slot {slot} failed on TP rank "
                               f"{self.owner(slot)}: {box[0].reason}")
        return box[0]


@dataclass(frozen=True)
class ReportFailed:
    reason: str


def row_ownership(tp_group) -> RowOwnership | None:
    """The split of the ESamp work over SGLang's TP group (its GroupCoordinator); None without TP."""
    if tp_group.world_size <= 1:
        return None
    return RowOwnership(tp_group.rank_in_group, tp_group.world_size, tuple(tp_group.ranks),
                        tp_group.device_group, tp_group.cpu_group)
