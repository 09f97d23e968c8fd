"""CUDA-only: the explore step and the side-stream trainer on a GPU. Skipped without a GPU."""

from __future__ import annotations

import pytest
import torch

from esamp_sgl.core.candidates import stock_sample
from esamp_sgl.core.config import ESampConfig
from esamp_sgl.core.device import HostReads
from esamp_sgl.core.distiller import DistillerBank
from esamp_sgl.core.explorer import Explorer
from esamp_sgl.core.plan import StepPlan
from esamp_sgl.core.step import StepBatch, explore_batch
from esamp_sgl.core.telemetry import Telemetry
from esamp_sgl.core.trainer import TestTimeTrainer

HAS_CUDA = torch.cuda.is_available()

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device (side-stream training only "
                                            "exists on CUDA)"),
]


def _probs(rows, vocab, seed):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    logits = torch.randn(rows, vocab, device="cuda", generator=gen) * 3
    return logits, torch.softmax(logits, -1)


def _batch(rows, vocab, hidden, slots, seed):
    logits, probs = _probs(rows, vocab, seed)
    gen = torch.Generator(device="cuda").manual_seed(seed + 1)
    return StepBatch(
        logits=logits, temperatures=torch.ones(rows, device="cuda"),
        top_k=torch.full((rows,), 50, device="cuda"), top_p=torch.full((rows,), 0.95, device="cuda"),
        min_p=torch.full((rows,), 0.02, device="cuda"),
        is_greedy=torch.zeros(rows, dtype=torch.bool, device="cuda"),
        plan=StepPlan(slots=slots, betas=torch.tensor([0.5, 0.0] * (rows // 2), device="cuda"), any_active=True),
        source=torch.randn(rows, hidden, device="cuda", generator=gen, dtype=torch.bfloat16),
        target=torch.randn(rows, hidden, device="cuda", generator=gen, dtype=torch.bfloat16),
        probs=probs)


def test_explore_step_on_cuda_keeps_stock_rows_and_trains_on_a_side_stream():
    rows, vocab, hidden = 8, 5000, 64
    w = torch.randn(vocab, hidden, device="cuda", dtype=torch.bfloat16)
    ex = Explorer(ESampConfig(rank=16, max_groups=4), hidden, w)
    assert ex.train_mode == "cuda_stream" and ex.backend == "torch"  # auto: torch on CUDA too
    s = ex.join_group("g")
    slots = torch.tensor([s, s, -1, s, s, -1, s, s], device="cuda")
    g1 = torch.Generator(device="cuda").manual_seed(3)
    g2 = torch.Generator(device="cuda").manual_seed(3)
    for step in range(4):
        b = _batch(rows, vocab, hidden, slots, 10 + step)
        tok = explore_batch(ex, b, lambda: stock_sample(b.probs, b.top_k, b.top_p, b.min_p, g1))
        ref = stock_sample(b.probs, b.top_k, b.top_p, b.min_p, g2)
        stock_rows = (slots < 0) | (b.betas == 0)
        assert torch.equal(tok[stock_rows], ref[stock_rows])
    assert ex.report("g")["steps_trained"] == 4
    ex.close()


def test_cuda_stream_trainer_equals_sync_trainer():
    hidden = 32
    gen = torch.Generator(device="cuda").manual_seed(5)
    a = TestTimeTrainer(DistillerBank(3, hidden, 8, "cuda"), Telemetry(3, hidden, "cuda"),
                        mode="cuda_stream")
    b = TestTimeTrainer(DistillerBank(3, hidden, 8, "cuda"), Telemetry(3, hidden, "cuda"),
                        mode="sync", host_reads=HostReads(free=False))
    slots = torch.tensor([0, 2, 0, -1, 2, 2], device="cuda")
    valid = torch.ones(6, dtype=torch.bool, device="cuda")
    for _ in range(5):
        x = torch.randn(6, hidden, device="cuda", generator=gen)
        y = torch.randn(6, hidden, device="cuda", generator=gen)
        a.schedule(x, y, slots, valid)
        b.schedule(x, y, slots, valid)
        x.fill_(float("nan"))  # the staged copy protects the side stream from buffer reuse
        a.wait()
    torch.cuda.synchronize()
    for k in a.bank.params:
        assert torch.allclose(a.bank.params[k], b.bank.params[k], atol=1e-6)
