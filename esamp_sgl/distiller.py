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

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

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


def distill_entries(x: Tensor, p: dict[str, Tensor], row_to_entry: Tensor,
                    grouped: bool) -> Tensor:
    """Distiller for rows that share parameter entries: p holds U entries ([U, ...]) and row i
    uses entry row_to_entry[i].

    grouped=False gathers each row's parameters ([R, H, 2r]: static shapes, no host sync; the
    GPU path). grouped=True packs the rows of each entry into a zero-padded [U, n_max, H] block
    and multiplies by each entry's weights once, so weights are read U times instead of R times;
    it reads n_max on the host, which is free on CPU."""
    if not grouped:
        return distill(x, {k: v.index_select(0, row_to_entry) for k, v in p.items()})
    rows, hidden = x.shape
    entries = p["c"].shape[0]
    counts = torch.bincount(row_to_entry, minlength=entries)
    n_max = int(counts.max()) if rows else 0
    order = torch.argsort(row_to_entry, stable=True)
    entry_sorted = row_to_entry.index_select(0, order)
    start = torch.cumsum(counts, 0) - counts
    pos = torch.arange(rows, device=x.device) - start.index_select(0, entry_sorted)
    x_pad = x.new_zeros(entries, n_max, hidden)
    x_pad[entry_sorted, pos] = x.index_select(0, order)
    rank = p["c"].shape[-1]
    xag = torch.bmm(x_pad, p["ag"])  # [U, n_max, 2r]
    hid = xag[..., :rank] * F.silu(xag[..., rank:] + p["c"].unsqueeze(1))
    delta_pad = torch.bmm(hid, p["b"])  # [U, n_max, H]
    delta = torch.empty_like(x).index_put((order,), delta_pad[entry_sorted, pos])
    y = F.layer_norm(x + delta, (hidden,), eps=LN_EPS)
    return y * p["ln_w"].index_select(0, row_to_entry) + p["ln_b"].index_select(0, row_to_entry)


class DistillerBank:
    """`slots` independent distillers (+1 sink entry) as stacked fp32 tensors on `device`."""

    def __init__(self, slots: int, hidden: int, rank: int, device: torch.device | str = "cpu",
                 seed: int = 0, grouped: bool | None = None) -> None:
        if not 1 <= rank <= hidden:
            raise ValueError(f"esamp_rank must be an integer in [1, {hidden}], got {rank}")
        self.slots, self.hidden, self.rank = slots, hidden, rank
        self.sink = slots
        self.device = torch.device(device)
        # Grouped prediction reads the batch's unique slots on the host: free on CPU only.
        self.grouped = self.device.type != "cuda" if grouped is None else grouped
        # Created outside inference mode: the trainer updates these in place with autograd on.
        with torch.inference_mode(False), torch.no_grad():
            self.init = DistillerInit.random(hidden, rank, seed)
            self._template = {k: v.to(self.device) for k, v in self.init.stacked().items()}
            self.params: dict[str, Tensor] = {
                k: v.unsqueeze(0).repeat(slots + 1, *([1] * v.dim())).contiguous()
                for k, v in self._template.items()}

    @property
    def template(self) -> dict[str, Tensor]:
        """The per-slot init (no slot axis) that reset_slots copies in."""
        return self._template

    def slot_index(self, slot: Tensor) -> Tensor:
        """Rows without a slot (slot < 0) use the sink entry."""
        slot = slot.to(device=self.device, dtype=torch.int64)
        return torch.where(slot < 0, torch.full_like(slot, self.sink), slot)

    def gather(self, slot_index: Tensor) -> dict[str, Tensor]:
        return {k: v.index_select(0, slot_index) for k, v in self.params.items()}

    @torch.no_grad()
    def forward(self, x: Tensor, slot: Tensor) -> Tensor:
        """Predict: x [R, H] (any float dtype), slot [R] int64 (-1 = none). Returns [R, H] fp32."""
        with torch.inference_mode(False):
            idx = self.slot_index(slot)
            x = x.to(device=self.device, dtype=torch.float32)
            if not self.grouped:
                return distill(x, self.gather(idx))
            entries, row_to_entry = torch.unique(idx, return_inverse=True)
            return distill_entries(x, self.gather(entries), row_to_entry, grouped=True)

    __call__ = forward

    @torch.no_grad()
    def reset_slots(self, slot_ids: Tensor) -> None:
        """Copy the init template back into the given slots (device op, no host sync)."""
        with torch.inference_mode(False):
            idx = slot_ids.to(device=self.device, dtype=torch.int64).reshape(-1)
            for k, v in self.params.items():
                t = self._template[k].unsqueeze(0).expand(idx.numel(), *v.shape[1:])
                v.index_copy_(0, idx, t.contiguous())

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
            self._template = new
            if reset_all:
                self.reset_slots(torch.arange(self.slots + 1, device=self.device))

    def load_svd_template(self, w_gate: Tensor | None, w_up: Tensor, w_down: Tensor,
                          reset_all: bool = True) -> None:
        """SVD warm start from an FFN (see warm_start.svd_template for what it computes)."""
        from esamp_sgl.warm_start import svd_template

        self.load_template(svd_template(w_gate, w_up, w_down, self.rank), reset_all=reset_all)

    def slot_params(self, slot: int) -> dict[str, Tensor]:
        """A copy of one slot's parameters (tests, debugging)."""
        return {k: v[slot].detach().clone() for k, v in self.params.items()}
