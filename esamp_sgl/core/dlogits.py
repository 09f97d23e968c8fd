"""d = ĥ·W_U[candidates]: by a gather of the candidates' LM-head rows, or by one GEMM ĥ·W_Uᵀ
followed by a gather of K logits per row, whichever a cost model says is cheaper for the shape.

Cost model (time = bytes / bandwidth + flops / throughput; R rows, K candidates per row, hidden
H, vocabulary V, e = bytes per LM-head element, 2 for bf16):

    gather: gather K rows of W_U per row (read + write, e each), then the batched matvec: on CPU
            in fp32 (cast: read e, write 4; matvec: read 4), bytes = R·K·H·(3e + 8); on CUDA in W's
            dtype (matvec: read e), bytes = R·K·H·3e;         flops = 2·R·K·H
    gemm:   read W_U once, ĥ in W's dtype, write the R×V logits in W's dtype, gather K per row:
            bytes = V·H·e + R·H·(4 + 2e) + R·V·e + R·K·(e + 4),  flops = 2·R·V·H (W's dtype)

With bf16 on an H200-class GPU (constants below, derated from the nominal 4.8 TB/s and ~990 TFLOP/s)
at V = 152k the GEMM wins from K = 538–580 at R = 256 and K = 1116–1159 at R = 64 (H 3584–896),
the gather below that (docs/performance.md has the table). On CPU, where candidates are trimmed
to the step's largest kept count (K ≈ 5 at min-p 0.05), the gather always wins. The choice needs
only shapes: no host read.

Precision: on CUDA both methods cast ĥ to W's dtype and round d to it (fp32 accumulation; relative
error ~2⁻⁸ on d, far below the spread the tilt bound allows): an fp32 copy of the gathered rows would
write 4/e times the rows gathered (235 MB per step at R 256, K 64, H 3584). On CPU, where K is trimmed
to a few candidates, the gather computes d in fp32.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Effective machine constants for the cost model (not measured on a GPU here; see module docstring).
MACHINES = {
    "cuda": {"bandwidth": 4.0e12, "gemm_flops": 6.0e14, "fp32_flops": 5.0e13, "gather_in_fp32": False},
    "cpu": {"bandwidth": 2.0e10, "gemm_flops": 5.0e10, "fp32_flops": 1.0e11, "gather_in_fp32": True},
}
D_METHODS = ("auto", "gather", "gemm")

# Bound on the gathered LM-head block per chunk (elements), so that rows × K × H never
# materialises at once (64 rows × 1024 candidates × 3584 would be 235 M elements).
_CHUNK_ELEMS = 1 << 24


def machine_constants(machine: str) -> dict:
    """The cost model's constants for a device type (every device but CUDA is modelled as the CPU)."""
    return MACHINES["cuda" if machine == "cuda" else "cpu"]


def d_costs(rows: int, k: int, hidden: int, vocab: int, elt: int, machine: str) -> dict[str, float]:
    """Modelled seconds of each method (see the module docstring)."""
    m = machine_constants(machine)
    gather_bytes = rows * k * hidden * (3 * elt + 8 if m["gather_in_fp32"] else 3 * elt)
    gemm_bytes = vocab * hidden * elt + rows * hidden * (4 + 2 * elt) + rows * vocab * elt + rows * k * (elt + 4)
    return {
        "gather": gather_bytes / m["bandwidth"] + 2 * rows * k * hidden / m["fp32_flops"],
        "gemm": gemm_bytes / m["bandwidth"] + 2 * rows * vocab * hidden / m["gemm_flops"],
    }


def choose_d_method(rows: int, k: int, hidden: int, vocab: int, elt: int, machine: str) -> str:
    costs = d_costs(rows, k, hidden, vocab, elt, machine)
    return "gemm" if costs["gemm"] < costs["gather"] else "gather"


def distiller_logits_gather(h_hat: Tensor, lm_head_weight: Tensor, cand_ids: Tensor,
                            in_fp32: bool = True) -> Tensor:
    """d[r, k] = ĥ[r] · W_U[cand_ids[r, k]] ([R, K] fp32), gathering only the candidates' LM-head rows
    (never a full-vocabulary projection); the matvec in fp32 or (`in_fp32` False) in W's dtype.
    h_hat [R, H], lm_head_weight [V, H], cand_ids [R, K]."""
    rows, k = cand_ids.shape
    hidden = lm_head_weight.shape[-1]
    dtype = torch.float32 if in_fp32 else lm_head_weight.dtype
    h = h_hat.to(dtype).unsqueeze(-1)  # [R, H, 1]
    chunk = max(1, _CHUNK_ELEMS // max(1, rows * hidden))
    out = torch.empty(rows, k, dtype=torch.float32, device=h_hat.device)
    for start in range(0, k, chunk):
        ids = cand_ids[:, start:start + chunk]
        w = lm_head_weight[ids.reshape(-1)].view(rows, ids.shape[1], hidden).to(dtype)
        out[:, start:start + chunk] = torch.bmm(w, h).squeeze(-1)
    return out


def distiller_logits_gemm(h_hat: Tensor, lm_head_weight: Tensor, cand_ids: Tensor) -> Tensor:
    """d via one GEMM over the whole vocabulary, then the candidates' K logits per row. [R, K] fp32."""
    logits = torch.mm(h_hat.to(lm_head_weight.dtype), lm_head_weight.t())  # [R, V]
    return logits.gather(1, cand_ids).float()


def candidate_distiller_logits(h_hat: Tensor, lm_head_weight: Tensor, cand_ids: Tensor,
                               method: str = "auto", machine: str | None = None) -> Tensor:
    """d[r, k] = ĥ[r]·W_U[cand_ids[r, k]] ([R, K] fp32) by `method` ('auto': the cost model for
    `machine`, default the tensors' device type)."""
    if method not in D_METHODS:
        raise ValueError(f"d method must be one of {D_METHODS}, got {method!r}")
    machine = machine or h_hat.device.type
    if method == "auto":
        rows, k = cand_ids.shape
        vocab, hidden = lm_head_weight.shape
        method = choose_d_method(rows, k, hidden, vocab, lm_head_weight.element_size(), machine)
    if method == "gemm":
        return distiller_logits_gemm(h_hat, lm_head_weight, cand_ids)
    in_fp32 = machine_constants(machine)["gather_in_fp32"]
    return distiller_logits_gather(h_hat, lm_head_weight, cand_ids, in_fp32)
