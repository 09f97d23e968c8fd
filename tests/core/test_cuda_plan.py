"""CUDA-only: the host-planned, per-group step on a GPU. Skipped without one.

* a decode step with the engine's plan makes no host sync (torch's sync debug mode raises on any);
* the GPU's results (side-stream training, fused Adam, GEMM d) match the same static path on CPU;
* telemetry is read on a side stream with one copy, and counts the last step's training.
"""

from __future__ import annotations

import pytest
import torch

from esamp_sgl.core.candidates import stock_sample
from esamp_sgl.core.config import ESampConfig
from esamp_sgl.core.explorer import Explorer
from esamp_sgl.core.layout import slot_layout
from esamp_sgl.core.plan import StepPlan
from esamp_sgl.core.step import StepBatch, explore_batch

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

H, V, ROWS = 64, 5000, 16


def _explorer(device, **kw):
    cfg = ESampConfig(**{"rank": 16, "max_groups": 4, "fit_gate": False, "backend": "torch", **kw})
    w = torch.randn(V, H, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    ex = Explorer(cfg, H, w.to(device), device=device)
    if device == "cpu":  # the CUDA code path, on CPU
        ex.host_reads.free = False
    return ex


def _batch(seed, slots, train, device):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(ROWS, V, generator=gen) * 3
    b = dict(logits=logits, temperatures=torch.ones(ROWS), top_k=torch.full((ROWS,), 50),
             top_p=torch.full((ROWS,), 0.95), min_p=torch.full((ROWS,), 0.02),
             is_greedy=torch.zeros(ROWS, dtype=torch.bool), slots=torch.tensor(slots),
             betas=torch.full((ROWS,), 1.0), source=torch.randn(ROWS, H, generator=gen).bfloat16(),
             target=torch.randn(ROWS, H, generator=gen).bfloat16(), train=torch.tensor(train))
    b = {k: v.to(device) for k, v in b.items()}
    plan = StepPlan(slots=b.pop("slots"), betas=b.pop("betas"), train=b.pop("train"), any_active=True,
                    rules="compensated", layout=slot_layout(slots, train, device))
    return StepBatch(**b, plan=plan, probs=torch.softmax(b["logits"], -1))


SLOTS = [0, -1, 1, 0, 1, -1, 0, 1, 2, 2, -1, 0, 1, 2, 0, -1]
TRAIN = [True, False, True, True, False, False, True, True, True, True, False, True, True, False, True, False]


def test_a_planned_step_makes_no_host_sync_and_matches_the_static_path_on_cpu():
    gpu, cpu = _explorer("cuda"), _explorer("cpu")
    assert gpu.train_mode == "cuda_stream" and not gpu.host_reads.free
    for ex in (gpu, cpu):
        for g in ("a", "b", "c"):
            ex.join_group(g)
    g_gpu = torch.Generator(device="cuda").manual_seed(1)
    for step in range(4):
        bg, bc = _batch(10 + step, SLOTS, TRAIN, "cuda"), _batch(10 + step, SLOTS, TRAIN, "cpu")
        stock_gpu = stock_sample(bg.probs, bg.top_k, bg.top_p, bg.min_p, g_gpu)  # before: it syncs
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            tok = explore_batch(gpu, bg, lambda: stock_gpu)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        explore_batch(cpu, bc, lambda: bc.probs.argmax(-1))
        stock_rows = torch.tensor(SLOTS, device="cuda") < 0
        assert torch.equal(tok[stock_rows], stock_gpu[stock_rows])
    gpu.trainer.wait()
    torch.cuda.synchronize()
    assert torch.allclose(gpu.bank.flat.cpu(), cpu.bank.flat, atol=1e-4, rtol=1e-3)
    for key in ("a", "b", "c"):
        a, b = gpu.report(key), cpu.report(key)
        assert a["steps_trained"] == b["steps_trained"] == 4  # the last step's training is counted
        assert a["predictions"] == b["predictions"]
        assert a["mean_loss"] == pytest.approx(b["mean_loss"], rel=1e-3)
    gpu.close()


def test_gemm_d_matches_the_gather_on_cuda():
    from esamp_sgl.core.dlogits import candidate_distiller_logits

    gen = torch.Generator(device="cuda").manual_seed(2)
    w = torch.randn(V, H, device="cuda", generator=gen).to(torch.bfloat16)
    h = torch.randn(8, H, device="cuda", generator=gen)
    ids = torch.randint(0, V, (8, 300), device="cuda", generator=gen)
    a = candidate_distiller_logits(h, w, ids, "gather")
    b = candidate_distiller_logits(h, w, ids, "gemm")
    assert torch.allclose(a, b, rtol=2e-2, atol=2e-2 * float(a.abs().max()))
