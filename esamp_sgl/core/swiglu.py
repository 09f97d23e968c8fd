"""The paper's Distiller (App. E.2): residual gated-SwiGLU blocks, input and output the LLM's hidden
size H, intermediate width I (384 in the paper), no norm:

    x_{k+1} = x_k + (SiLU(x_k·W_g) ⊙ (x_k·W_u))·W_d        W_g, W_u: [H, I]   W_d: [I, H]

"A two-layer MLP with residual connections, each layer a gated SwiGLU block" reads as two blocks; its
Table 17 counts its variants in the same layers (2-layer vs 4-layer gated SwiGLU), so the block
count is a setting (`distiller_blocks`) with 2 as the paper's. (App. E.2 also says a Distiller takes
"< 10 MB", which fits one block in bf16 at H 3584 — 8.3 MB — better than two, 16.5 MB; the
architecture's own description is taken as the specification.) W_g and W_u of block k are stored side
by side as `gu{k}` ([H, 2I]: one bmm for both), W_d as `d{k}`. Init: "initialised randomly", read as
PyTorch's nn.Linear default, U(±1/√fan_in) per weight (no biases: the paper names none).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def shapes(hidden: int, inter: int, blocks: int) -> dict[str, tuple[int, ...]]:
    out: dict[str, tuple[int, ...]] = {}
    for k in range(blocks):
        out[f"gu{k}"] = (hidden, 2 * inter)
        out[f"d{k}"] = (inter, hidden)
    return out


def init(hidden: int, inter: int, blocks: int, seed: int) -> dict[str, Tensor]:
    gen = torch.Generator(device="cpu").manual_seed(seed)

    def uniform(fan_in: int, *shape: int) -> Tensor:
        bound = 1.0 / math.sqrt(fan_in)
        return (torch.rand(*shape, generator=gen, dtype=torch.float32) * 2.0 - 1.0) * bound

    out = {}
    for k in range(blocks):
        out[f"gu{k}"] = uniform(hidden, hidden, 2 * inter)
        out[f"d{k}"] = uniform(inter, inter, hidden)
    return out


def _blocks(p: dict[str, Tensor]) -> int:
    return len(p) // 2


def forward(x: Tensor, p: dict[str, Tensor]) -> Tensor:
    """x [U, n, H] fp32, one parameter set per entry. [U, n, H]."""
    for k in range(_blocks(p)):
        gu = torch.bmm(x, p[f"gu{k}"])  # [U, n, 2I]
        inter = gu.shape[-1] // 2
        x = torch.baddbmm(x, F.silu(gu[..., :inter]) * gu[..., inter:], p[f"d{k}"])
    return x


def forward_saving(x: Tensor, p: dict[str, Tensor]) -> tuple[Tensor, list]:
    saved = []
    for k in range(_blocks(p)):
        gu = torch.bmm(x, p[f"gu{k}"])  # [U, n, 2I]
        inter = gu.shape[-1] // 2
        g, u = gu[..., :inter], gu[..., inter:]
        sig = torch.sigmoid(g)
        act = g * sig  # SiLU(g)
        hid = act * u
        saved.append((x, g, u, sig, act, hid))
        x = torch.baddbmm(x, hid, p[f"d{k}"])
    return x, saved


def backward(g_y: Tensor, saved: list, p: dict[str, Tensor], grads: dict[str, Tensor]) -> None:
    """Back through the blocks, last first; the residual passes g_y straight to the block's input."""
    g_x = g_y
    for k in reversed(range(len(saved))):
        x, g, u, sig, act, hid = saved[k]
        torch.bmm(hid.transpose(1, 2), g_x, out=grads[f"d{k}"])  # [U, I, H]
        g_hid = torch.bmm(g_x, p[f"d{k}"].transpose(1, 2))  # [U, n, I]
        g_gu = torch.cat([g_hid * u * (sig * (1.0 + g * (1.0 - sig))), g_hid * act], -1)  # [U, n, 2I]
        torch.bmm(x.transpose(1, 2), g_gu, out=grads[f"gu{k}"])  # [U, H, 2I]
        if k:
            g_x = torch.baddbmm(g_x, g_gu, p[f"gu{k}"].transpose(1, 2))
