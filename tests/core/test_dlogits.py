"""d on the candidates by gather or by one GEMM, and the cost model that picks one."""

from __future__ import annotations

import pytest
import torch

from esamp_sgl.core.dlogits import (candidate_distiller_logits, choose_d_method, d_costs,
                                    distiller_logits_gather)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_gemm_and_gather_give_the_same_d(dtype, tol):
    gen = torch.Generator().manual_seed(0)
    w = (torch.randn(500, 32, generator=gen) * 0.5).to(dtype)
    h = torch.randn(6, 32, generator=gen)
    ids = torch.randint(0, 500, (6, 40), generator=gen)
    ref = distiller_logits_gather(h, w, ids)
    for method in ("gather", "gemm", "auto"):
        for machine in ("cpu", "cuda"):  # the gather's matvec in fp32 on CPU, in W's dtype on CUDA
            d = candidate_distiller_logits(h, w, ids, method, machine)
            assert d.dtype == torch.float32 and d.shape == (6, 40)
            assert torch.allclose(d, ref, rtol=tol, atol=tol * ref.abs().max()), (method, machine)
    with pytest.raises(ValueError, match="d method"):
        candidate_distiller_logits(h, w, ids, "sparse")


def test_cost_model_picks_the_gemm_for_many_candidates_on_a_gpu_and_the_gather_for_few():
    v = 152_064
    assert choose_d_method(256, 1024, 3584, v, 2, "cuda") == "gemm"
    assert choose_d_method(64, 2048, 896, v, 2, "cuda") == "gemm"
    assert choose_d_method(256, 16, 3584, v, 2, "cuda") == "gather"
    assert choose_d_method(64, 8, 576, 49_152, 2, "cpu") == "gather"  # trimmed K on CPU
    costs = d_costs(256, 1024, 3584, v, 2, "cuda")
    assert costs["gather"] > 1.5 * costs["gemm"]  # 5.6 GB of gathered rows vs ~1.2 GB
    assert choose_d_method(256, 64, 3584, v, 2, "cuda") == "gather"  # the width the data asks for
