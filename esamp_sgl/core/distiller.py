"""The Distiller and a bank of them stored as stacked tensors.

    y = LN(x + ((x·A) ⊙ SiLU(x·G + c)) · B)      A, G: [H, r]   B: [r, H]   c: [r]   LN affine: [H]

One parameter set per slot, stacked on a leading slot axis, so that one gather + batched matmul
serves every row of a mixed batch. A and G are stored side by side as `ag[..., :r] = A`,
`ag[..., r:] = G` (one bmm for both). Master weights are fp32 whatever the model's dtype.

The bank has `slots + 1` entries: the last one (`sink`) absorbs rows that have no slot, so every
shape stays static (no host sync, no data-dependent control flow).

Every slot starts from the same initial draw (`init`, seeded), and a reset copies it back: a
group's distiller therefore does not depend on which slot it landed in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from esamp_sgl.core.config import check_rank
from esamp_sgl.core.plan import RowGroups, plan_from_device

PARAM_NAMES = ("ag", "b", "c", "ln_w", "ln_b")
LN_EPS = 1e-5
INIT_STD = 0.02


@dataclass
class DistillerInit:
    """One distiller's parameters (no slot axis), used as the template for every slot."""

    a: Tensor  # [H, r]
    g: Tensor  # [H, r]
    b: Tensor  # [r, H]
    c: Tensor  # [r]
    ln_w: Tensor  # [H]
    ln_b: Tensor  # [H]

    @classmethod
    def random(cls, hidden: int, rank: int, seed: int) -> "DistillerInit":
        """The reference's init: A, G, B ~ N(0, 0.02²), c = 1, LN weight 1, bias 0 (so y ≈ LN(x))."""
        gen = torch.Generator(device="cpu").manual_seed(seed)
        def randn(*shape: int) -> Tensor:
            return torch.randn(*shape, generator=gen, dtype=torch.float32) * INIT_STD
        return cls(a=randn(hidden, rank), g=randn(hidden, rank), b=randn(rank, hidden),
                   c=torch.ones(rank), ln_w=torch.ones(hidden), ln_b=torch.zeros(hidden))

    def stacked(self) -> dict[str, Tensor]:
        """As the bank stores one slot: {name: tensor} with A|G concatenated."""
        return {"ag": torch.cat([self.a, self.g], dim=1), "b": self.b, "c": self.c,
                "ln_w": self.ln_w, "ln_b": self.ln_b}


def distill(x: Tensor, p: dict[str, Tensor]) -> Tensor:
    """Row-wise distiller. x: [R, H] fp32; p: per-row parameters ag [R,H,2r], b [R,r,H],
    c [R,r], ln_w/ln_b [R,H]. Returns [R, H] fp32."""
    rank = p["c"].shape[-1]
    xag = torch.bmm(x.unsqueeze(1), p["ag"]).squeeze(1)  # [R, 2r]
    xa, xg = xag[:, :rank], xag[:, rank:]
    hidden = xa * F.silu(xg + p["c"])
    delta = torch.bmm(hidden.unsqueeze(1), p["b"]).squeeze(1)  # [R, H]
    y = F.layer_norm(x + delta, (x.shape[-1],), eps=LN_EPS)
    return y * p["ln_w"] + p["ln_b"]


def distill_padded(x: Tensor, p: dict[str, Tensor]) -> Tensor:
    """Distiller on a padded block: x [U, n, H] fp32 (the rows of entry u in x[u]); p holds one
    parameter set per entry ([U, ...], any strides). Weights are read once per entry. [U, n, H]."""
    rank = p["c"].shape[-1]
    xag = torch.bmm(x, p["ag"])  # [U, n, 2r]
    hid = xag[..., :rank] * F.silu(xag[..., rank:] + p["c"].unsqueeze(1))
    y = F.layer_norm(torch.baddbmm(x, hid, p["b"]), (x.shape[-1],), eps=LN_EPS)  # LN(x + hid·B)
    return torch.addcmul(p["ln_b"].unsqueeze(1), y, p["ln_w"].unsqueeze(1))


def distill_groups(x: Tensor, p: dict[str, Tensor], groups: RowGroups) -> Tensor:
    """The Distiller for the rows of a host plan: x [R, H] (any float dtype), p = the parameters of
    `groups.entries` ([U, ...]). Rows outside the plan get 0 (they are not predicted). [R, H] fp32."""
    u, n, hidden = groups.size, groups.width, x.shape[-1]
    xg = x.index_select(0, groups.gather).to(torch.float32).view(u, n, hidden)
    y = distill_padded(xg, p).view(u * n, hidden).index_select(0, groups.position)
    return torch.where(groups.member.unsqueeze(-1), y, 0.0)


def param_layout(hidden: int, rank: int) -> dict[str, tuple[int, tuple[int, ...]]]:
    """{name: (offset, shape)} of one slot's parameters in its flat fp32 row."""
    shapes = {"ag": (hidden, 2 * rank), "b": (rank, hidden), "c": (rank,), "ln_w": (hidden,),
              "ln_b": (hidden,)}
    out, off = {}, 0
    for k in PARAM_NAMES:
        out[k] = (off, shapes[k])
        off += math.prod(shapes[k])
    return out


def split_flat(flat: Tensor, layout: dict[str, tuple[int, tuple[int, ...]]]) -> dict[str, Tensor]:
    """Views of a [N, P] flat block as {name: [N, *shape]} (no copy)."""
    out = {}
    for k, (off, shape) in layout.items():
        size = math.prod(shape)
        out[k] = flat[:, off:off + size].view(flat.shape[0], *shape)
    return out


class DistillerBank:
    """`slots` independent distillers (+1 sink entry) as stacked fp32 tensors on `device`.

    Storage: one flat fp32 row of P = 3·H·r + r + 2·H values per slot (`flat`, [slots + 1, P]);
    `params[name]` are [slots + 1, ...] views of it. A group's parameters are one contiguous row, so
    a gather or an optimiser step touches one block per slot, whatever the number of tensors."""

    def __init__(self, slots: int, hidden: int, rank: int, device: torch.device | str = "cpu",
                 seed: int = 0, grouped: bool | None = None) -> None:
        check_rank(rank, hidden)
        self.slots, self.hidden, self.rank = slots, hidden, rank
        self.sink = slots
        self.device = torch.device(device)
        # Without a host plan, grouped prediction reads the batch's slots on the host: free on CPU
        # only; on CUDA the fallback gathers each row's parameters instead (no sync).
        self.grouped = self.device.type != "cuda" if grouped is None else grouped
        self.layout = param_layout(hidden, rank)
        self.numel = sum(math.prod(shape) for _, shape in self.layout.values())  # P
        # Created outside inference mode: the trainer updates these in place with autograd on.
        with torch.inference_mode(False), torch.no_grad():
            self.init = DistillerInit.random(hidden, rank, seed)
            self.template_flat = self._flatten(self.init.stacked())  # [P]
            self.flat = self.template_flat.unsqueeze(0).repeat(slots + 1, 1).contiguous()
            self.params: dict[str, Tensor] = split_flat(self.flat, self.layout)
            # One view per slot row (made once): the optimiser updates these rows in place.
            self.rows = self.flat.unbind(0)

    def _flatten(self, stacked: dict[str, Tensor]) -> Tensor:
        return torch.cat([stacked[k].to(device=self.device, dtype=torch.float32).reshape(-1)
                          for k in PARAM_NAMES]).contiguous()

    @property
    def template(self) -> dict[str, Tensor]:
        """The per-slot init (no slot axis) that reset_slots copies in (views of template_flat)."""
        return {k: v[0] for k, v in split_flat(self.template_flat.unsqueeze(0), self.layout).items()}

    def slot_index(self, slot: Tensor) -> Tensor:
        """Rows without a slot (slot < 0) use the sink entry."""
        slot = slot.to(device=self.device, dtype=torch.int64)
        return torch.where(slot < 0, torch.full_like(slot, self.sink), slot)

    def gather(self, slot_index: Tensor) -> dict[str, Tensor]:
        """Parameters of the given slots ([U, ...] views of one [U, P] gather)."""
        return split_flat(self.flat.index_select(0, slot_index), self.layout)

    @torch.no_grad()
    def forward(self, x: Tensor, slot: Tensor, groups: RowGroups | None = None) -> Tensor:
        """Predict: x [R, H] (any float dtype), slot [R] int64 (-1 = none). Returns [R, H] fp32.

        With `groups` (the host plan of the rows with a slot; see plan.py) parameters are read once
        per group and rows without a slot get 0 (nothing reads their prediction). Without it, rows
        without a slot use the sink entry, and the rows are grouped from a host read of `slot`
        (`grouped`, CPU) or each row gathers its parameters (CUDA, no sync)."""
        with torch.inference_mode(False):
            x = x.to(device=self.device)
            if groups is not None:
                return distill_groups(x, self.gather(groups.entry_index), groups)
            idx = self.slot_index(slot)
            if not self.grouped:
                return distill(x.to(torch.float32), split_flat(self.flat.index_select(0, idx),
                                                                self.layout))
            plan = plan_from_device(idx)
            return distill_groups(x, self.gather(plan.entry_index), plan)

    __call__ = forward

    @torch.no_grad()
    def reset_slots(self, slot_ids: Tensor) -> None:
        """Copy the init template back into the given slots (device op, no host sync)."""
        with torch.inference_mode(False):
            idx = slot_ids.to(device=self.device, dtype=torch.int64).reshape(-1)
            self.flat.index_copy_(0, idx, self.template_flat.unsqueeze(0).expand(idx.numel(), -1))

    @torch.no_grad()
    def load_template(self, init: DistillerInit, reset_all: bool = True) -> None:
        """Replace the init template (e.g. the SVD warm start); optionally re-init every slot."""
        h, r = self.hidden, self.rank
        expect = {"ag": (h, 2 * r), "b": (r, h), "c": (r,), "ln_w": (h,), "ln_b": (h,)}
        with torch.inference_mode(False):
            new = {k: v.to(device=self.device, dtype=torch.float32) for k, v in init.stacked().items()}
            for k, v in new.items():
                if tuple(v.shape) != expect[k]:
                    raise ValueError(f"template {k} has shape {tuple(v.shape)}, "
                                     f"expected {expect[k]}")
            self.template_flat.copy_(self._flatten(new))
            if reset_all:
                self.reset_slots(torch.arange(self.slots + 1, device=self.device))

    def slot_params(self, slot: int) -> dict[str, Tensor]:
        """A copy of one slot's parameters (tests, debugging)."""
        return {k: v[slot].detach().clone() for k, v in self.params.items()}
