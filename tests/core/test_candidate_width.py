"""The candidate width of the device path (core/width.py): it follows the data without a host read, a row
that a narrow width cannot hold keeps its stock token, and the width grows to hold it."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from esamp_sgl.core.candidates import stock_keep_mask
from esamp_sgl.core.config import ESampConfig
from esamp_sgl.core.explorer import Explorer
from esamp_sgl.core.layout import slot_layout
from esamp_sgl.core.plan import StepPlan
from esamp_sgl.core.step import StepBatch, explore_batch, row_filters, filtered_candidates
from esamp_sgl.core.width import FLOOR

H, V = 16, 600
SYNCING = {"_local_scalar_dense", "nonzero", "_unique2", "unique_dim", "unique_consecutive", "masked_select",
           "bincount", "equal", "is_nonzero", "repeat_interleave"}


class _NoHostRead(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ in SYNCING:
            raise AssertionError(f"host read on the device path: aten.{func.overloadpacket.__name__}")
        return func(*args, **(kwargs or {}))


def _device_path_explorer() -> Explorer:
    cfg = ESampConfig(rank=8, max_groups=2, fit_gate=False, max_candidates=512, train_mode="sync")
    ex = Explorer(cfg, H, torch.randn(V, H, generator=torch.Generator().manual_seed(1)), device="cpu")
    ex.host_reads.free = False  # the CUDA code path, run on the CPU
    ex.join_group("a")
    return ex


def _batch(gen: torch.Generator, flat_rows: tuple[int, ...] = ()) -> StepBatch:
    """4 rows of group a at top-p 0.9: peaked rows keep a handful of tokens; a `flat_rows` row keeps ~90."""
    logits = torch.randn(4, V, generator=gen)
    logits[:, :3] += 12.0
    for r in flat_rows:  # 100 tokens of equal weight, far above the rest
        logits[r] = torch.randn(V, generator=gen) * 0.01
        logits[r, 100:200] += 20.0
    slots = [0, 0, 0, 0]
    return StepBatch(
        logits=logits, temperatures=torch.ones(4), top_k=torch.full((4,), 1 << 30),
        top_p=torch.full((4,), 0.9), min_p=torch.zeros(4), is_greedy=torch.zeros(4, dtype=torch.bool),
        plan=StepPlan(slots=torch.tensor(slots), betas=torch.full((4,), 1.0), any_active=True,
                      rules="contrastive", layout=slot_layout(slots, None, "cpu")),
        source=torch.randn(4, H, generator=gen), target=torch.randn(4, H, generator=gen),
        probs=torch.softmax(logits, -1))


def _survivors(batch: StepBatch) -> torch.Tensor:
    return stock_keep_mask(batch.probs, batch.top_k, batch.top_p, batch.min_p)[2].sum(-1)


def test_the_width_follows_the_largest_kept_count_without_a_host_read():
    ex, gen = _device_path_explorer(), torch.Generator().manual_seed(2)
    widths = []
    with _NoHostRead():
        for _ in range(3):
            batch = _batch(gen)
            cand = filtered_candidates(ex, batch, row_filters(batch, ex.config.greedy_min_p))
            widths.append(cand.ids.shape[1])
    assert int(_survivors(batch).max()) <= FLOOR // 2
    assert widths == [512, FLOOR, FLOOR]  # the cap until the first count is back (at once on CPU)
    assert cand.partial is not None and not cand.partial.any()


def test_a_row_the_width_cannot_hold_keeps_its_stock_token_and_the_width_grows():
    ex, gen = _device_path_explorer(), torch.Generator().manual_seed(3)
    for _ in range(2):  # the width comes down to FLOOR
        batch = _batch(gen)
        explore_batch(ex, batch, lambda: batch.probs.argmax(-1))
    batch = _batch(gen, flat_rows=(2,))
    survivors = int(_survivors(batch)[2])
    assert survivors > FLOOR
    stock = torch.tensor([V - 1] * 4)  # a token no ESamp draw picks here (it is never a candidate)
    tokens = explore_batch(ex, batch, lambda: stock)
    assert tokens[2] == V - 1 and (tokens[[0, 1, 3]] != V - 1).all()  # only the cut row kept stock's
    assert ex.report("a")["candidates_truncated"] == 1
    widths = []
    for _ in range(3):  # K grows (x4 a cut step: twice the width, then the power of two above twice that)
        batch = _batch(gen, flat_rows=(2,))
        cand = filtered_candidates(ex, batch, row_filters(batch, ex.config.greedy_min_p))
        widths.append(cand.ids.shape[1])
    assert widths == [64, 256, 256] and int(_survivors(batch)[2]) <= 256
    assert not cand.truncated.any() and not cand.partial.any()
    tokens = explore_batch(ex, batch, lambda: stock)
    assert (tokens != V - 1).all()  # held again: the row explores


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_the_width_comes_back_without_a_sync():
    cfg = ESampConfig(rank=8, max_groups=2, fit_gate=False, max_candidates=512)
    ex = Explorer(cfg, H, torch.randn(V, H, generator=torch.Generator().manual_seed(1)).cuda(), device="cuda")
    assert not ex.host_reads.free
    ex.join_group("a")
    gen, widths = torch.Generator().manual_seed(2), []
    for _ in range(6):
        batch = _batch(gen)
        batch = StepBatch(**{k: (v.cuda() if isinstance(v, torch.Tensor) else v) for k, v in vars(batch).items()
                             if k != "plan"}, plan=StepPlan(slots=batch.slots.cuda(), betas=batch.betas.cuda(),
                                                            any_active=True, rules="contrastive",
                                                            layout=slot_layout([0] * 4, None, "cuda")))
        torch.cuda.set_sync_debug_mode("error")
        try:
            cand = filtered_candidates(ex, batch, row_filters(batch, ex.config.greedy_min_p))
        finally:
            torch.cuda.set_sync_debug_mode("default")
        widths.append(cand.ids.shape[1])
        torch.cuda.synchronize()  # the step's copy is back before the next (a real pipeline is later)
    assert widths[0] == 512 and widths[-1] == FLOOR
