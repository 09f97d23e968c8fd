"""The low-rank gated residual Distiller (the official release's architecture; `bounded`, `reference`):

    y = LN(x + ((x·A) ⊙ SiLU(x·G + c))·B)·w + b      A, G: [H, r]   B: [r, H]   c: [r]   w, b: [H]

A and G are stored side by side as `ag` ([H, 2r]: one bmm for both). Init as the release: A, G, B ~
N(0, 0.02²), c = 1, LN weight 1, bias 0, so that y ≈ LN(x) at first.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

LN_EPS = 1e-5
INIT_STD = 0.02


def shapes(hidden: int, rank: int, blocks: int = 1) -> dict[str, tuple[int, ...]]:
    return {"ag": (hidden, 2 * rank), "b": (rank, hidden), "c": (rank,), "ln_w": (hidden,), "ln_b": (hidden,)}


PARAM_NAMES = tuple(shapes(1, 1))  # in storage order


@dataclass
class DistillerInit:
    """One low-rank distiller's parameters (no slot axis): a template for every slot (the SVD warm start,
    warm_start.svd_template)."""

    a: Tensor  # [H, r]
    g: Tensor  # [H, r]
    b: Tensor  # [r, H]
    c: Tensor  # [r]
    ln_w: Tensor  # [H]
    ln_b: Tensor  # [H]

    def stacked(self) -> dict[str, Tensor]:
        """As the bank stores one slot: {name: tensor} with A|G concatenated."""
        return {"ag": torch.cat([self.a, self.g], dim=1), "b": self.b, "c": self.c,
                "ln_w": self.ln_w, "ln_b": self.ln_b}


def init(hidden: int, rank: int, blocks: int, seed: int) -> dict[str, Tensor]:
    gen = torch.Generator(device="cpu").manual_seed(seed)

    def randn(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=gen, dtype=torch.float32) * INIT_STD

    a, g, b = randn(hidden, rank), randn(hidden, rank), randn(rank, hidden)
    return {"ag": torch.cat([a, g], dim=1), "b": b, "c": torch.ones(rank), "ln_w": torch.ones(hidden),
            "ln_b": torch.zeros(hidden)}


def forward(x: Tensor, p: dict[str, Tensor]) -> Tensor:
    """x [U, n, H] fp32, one parameter set per entry. [U, n, H]."""
    rank = p["c"].shape[-1]
    xag = torch.bmm(x, p["ag"])  # [U, n, 2r]
    hid = xag[..., :rank] * F.silu(xag[..., rank:] + p["c"].unsqueeze(1))
    y = F.layer_norm(torch.baddbmm(x, hid, p["b"]), (x.shape[-1],), eps=LN_EPS)  # LN(x + hid·B)
    return torch.addcmul(p["ln_b"].unsqueeze(1), y, p["ln_w"].unsqueeze(1))


def forward_saving(x: Tensor, p: dict[str, Tensor]) -> tuple[Tensor, tuple]:
    rank, hidden = p["c"].shape[-1], x.shape[-1]
    xag = torch.bmm(x, p["ag"])  # [U, n, 2r]
    a = xag[..., :rank]
    q = xag[..., rank:] + p["c"].unsqueeze(1)
    sig = torch.sigmoid(q)
    act = q * sig  # silu(q)
    hid = a * act
    pre = torch.baddbmm(x, hid, p["b"])  # x + hid·B
    ln_out, ln_mean, ln_rstd = torch.native_layer_norm(pre, [hidden], None, None, LN_EPS)
    y = torch.addcmul(p["ln_b"].unsqueeze(1), ln_out, p["ln_w"].unsqueeze(1))
    return y, (x, a, q, sig, act, hid, pre, ln_out, ln_mean, ln_rstd)


def backward(g_y: Tensor, saved: tuple, p: dict[str, Tensor], grads: dict[str, Tensor]) -> None:
    x, a, q, sig, act, hid, pre, ln_out, ln_mean, ln_rstd = saved
    rank, hidden = p["c"].shape[-1], x.shape[-1]
    torch.sum(g_y, 1, out=grads["ln_b"])
    torch.sum(g_y * ln_out, 1, out=grads["ln_w"])
    g_pre = torch.ops.aten.native_layer_norm_backward(
        g_y * p["ln_w"].unsqueeze(1), pre, [hidden], ln_mean, ln_rstd, None, None,
        [True, False, False])[0]  # [U, n, H]
    torch.bmm(hid.transpose(1, 2), g_pre, out=grads["b"])  # [U, r, H]
    g_hid = torch.bmm(g_pre, p["b"].transpose(1, 2))  # [U, n, r]
    g_aq = torch.cat([g_hid * act, g_hid * a * (sig * (1.0 + q * (1.0 - sig)))], -1)  # [U, n, 2r]
    torch.sum(g_aq[..., rank:], 1, out=grads["c"])
    torch.bmm(x.transpose(1, 2), g_aq, out=grads["ag"])  # [U, H, 2r]
