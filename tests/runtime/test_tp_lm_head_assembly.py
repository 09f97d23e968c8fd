"""The esamp backend's TP pieces: the LM-head assembly over a real 2-rank gloo group, laid out by
SGLang's own `VocabParallelEmbedding._get_indices`, and the start-up check."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from esamp_sgl.launch.server import free_port

VOCAB, HIDDEN, TP = 1000, 8, 2  # 1000 is not a multiple of 64 x 2: the last shard has padding rows


def full_table() -> torch.Tensor:
    return torch.arange(VOCAB * HIDDEN, dtype=torch.float32).view(VOCAB, HIDDEN).to(torch.bfloat16)


def shards() -> list[tuple[torch.Tensor, object]]:
    """What each TP rank's LM head holds after SGLang's weight loader (its rows, then zero padding),
    with SGLang's own shard layout."""
    from sglang.srt.layers.vocab_parallel_embedding import VocabParallelEmbedding, pad_vocab_size

    padded = pad_vocab_size(VOCAB, 64 * TP)
    out = []
    for rank in range(TP):
        shard = VocabParallelEmbedding._get_indices(padded, padded, VOCAB, VOCAB, rank, TP)
        weight = torch.zeros(padded // TP, HIDDEN, dtype=torch.bfloat16)
        weight[: shard.num_org_elements] = full_table()[shard.org_vocab_start_index:shard.org_vocab_end_index]
        # Plain fields, so the spawned ranks need not import sglang to unpickle them.
        fields = SimpleNamespace(**{name: getattr(shard, name) for name in (
            "org_vocab_start_index", "org_vocab_end_index", "num_org_elements", "num_added_elements",
            "num_added_elements_padded")})
        out.append((weight, fields))
    return out


def _assemble_on_rank(rank: int, port: int, rank_shards, results) -> None:
    from runtime_patch.tensor_parallel import full_lm_head_weight

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=TP)
    try:
        weight, shard = rank_shards[rank]  # shard: the fields of SGLang's VocabParallelEmbeddingShardIndices
        lm_head = SimpleNamespace(weight=weight, enable_tp=True, tp_size=TP, shard_indices=shard,
                                  org_vocab_size=VOCAB, tp_group=SimpleNamespace(device_group=dist.group.WORLD))
        results[rank] = full_lm_head_weight(lm_head)
    finally:
        dist.destroy_process_group()


def test_every_rank_assembles_the_exact_full_lm_head():
    rank_shards = shards()
    assert rank_shards[-1][1].num_org_elements < rank_shards[-1][0].shape[0]  # padding rows exist
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_assemble_on_rank, args=(free_port(), rank_shards, results), nprocs=TP, join=True)
        tables = [results[r] for r in range(TP)]
    for table in tables:
        assert table.dtype == torch.bfloat16 and torch.equal(table, full_table())


def test_an_unsharded_lm_head_is_used_as_is():
    from runtime_patch.tensor_parallel import full_lm_head_weight

    weight = torch.ones(4, 2)
    assert full_lm_head_weight(SimpleNamespace(weight=weight, enable_tp=True, tp_size=1)) is weight


def test_tensor_parallel_requires_sglang_token_sync(monkeypatch):
    from sglang.srt.layers import sampler

    from runtime_patch.tensor_parallel import UnsupportedParallelism, check_tensor_parallel

    monkeypatch.setattr(sampler, "SYNC_TOKEN_IDS_ACROSS_TP", False)
    check_tensor_parallel(1)
    with pytest.raises(UnsupportedParallelism, match="SYNC_TOKEN_IDS_ACROSS_TP=1"):
        check_tensor_parallel(2)
    monkeypatch.setattr(sampler, "SYNC_TOKEN_IDS_ACROSS_TP", True)
    check_tensor_parallel(2)
