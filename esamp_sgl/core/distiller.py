"""A bank of Distillers stored as stacked tensors, one parameter set per slot.

The architecture (`lowrank`, `swiglu`: architectures.py, one module each) decides the parameters and
the forward; the bank stores one flat fp32 row of P values per slot, viewed per parameter, so that one
gather + batched matmul serves every row of a mixed batch. Master weights are fp32 whatever the
model's dtype.

The bank has `slots + 1` entries: the last one (`sink`) absorbs rows that have no slot, so every
shape stays static (no host sync, no data-dependent control flow).

Every slot starts from the same initial draw (the template, seeded), and a reset copies it back: a
group's distiller therefore does not depend on which slot it landed in.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from esamp_sgl.core.architectures import Forward, architecture, param_layout, split_flat
from esamp_sgl.core.config import check_rank
from esamp_sgl.core.device import HostReads
from esamp_sgl.core.layout import SlotLayout, layout_from_device
from esamp_sgl.core.lowrank import DistillerInit

# How the rows of a batch are laid out for the architecture's forward: the layout code is here, the
# formula in the architecture's module (lowrank.py, swiglu.py).


def distill_rows(x: Tensor, p: dict[str, Tensor], forward: Forward) -> Tensor:
    """The Distiller with one parameter set per row (`p` [R, ...]: each row's own, gathered): a block of
    one row per entry. x [R, H] (any float dtype); [R, H] fp32."""
    return forward(x.to(torch.float32).unsqueeze(1), p).squeeze(1)


def distill_groups(x: Tensor, p: dict[str, Tensor], layout: SlotLayout, forward: Forward) -> Tensor:
    """The Distiller for the rows of a host plan: x [R, H] (any float dtype), p = the parameters of
    `layout.entries` ([U, ...]), `forward` the architecture's. Rows outside the plan get 0 (they are
    not predicted). [R, H] fp32."""
    u, n, hidden = layout.size, layout.width, x.shape[-1]
    xg = x.index_select(0, layout.gather).to(torch.float32).view(u, n, hidden)
    y = forward(xg, p).view(u * n, hidden).index_select(0, layout.position)
    return torch.where(layout.member.unsqueeze(-1), y, 0.0)


def bank_block_rows(slot: Tensor, offset: Tensor, n: int) -> Tensor:
    """Where row j (`offset`, < n) of `slot`'s block lies in the whole bank's blocks stacked as
    [(slots + 1)·n, ...]: slot·n + j (distill_bank_blocks for a batch's rows, the trainer for a plan's)."""
    return slot * n + offset


def into_bank_blocks(t: Tensor, rows: Tensor, blocks: int, n: int) -> Tensor:
    """t's rows placed at `rows` (bank_block_rows) of zeroed [blocks·n, ...] whole-bank blocks."""
    return torch.zeros(blocks * n, *t.shape[1:], dtype=t.dtype, device=t.device).index_copy_(0, rows, t)


def distill_bank_blocks(x: Tensor, p: dict[str, Tensor], layout: SlotLayout, sink: int,
                        forward: Forward) -> Tensor:
    """The Distiller for the rows of a host plan over the whole bank: `p` = the bank's parameters
    ([slots + 1, ...] views, no copy); each row goes to block `slot·n + j` of a [slots + 1, n, H] input
    (rows outside the plan to the sink's block, whose output nothing reads). Same result as
    distill_groups; [R, H] fp32, rows outside the plan 0."""
    n, hidden = layout.width, x.shape[-1]
    blocks = next(iter(p.values())).shape[0]
    slot = layout.entry_index.index_select(0, torch.div(layout.position, n, rounding_mode="floor"))
    where = torch.where(layout.member, bank_block_rows(slot, layout.position % n, n), sink * n)
    xb = into_bank_blocks(x.to(torch.float32), where, blocks, n)
    y = forward(xb.view(blocks, n, hidden), p).view(blocks * n, hidden).index_select(0, where)
    return torch.where(layout.member.unsqueeze(-1), y, 0.0)


class Scratch:
    """A reusable [U, P] fp32 buffer, grown on demand, for one user of the bank (prediction, or the
    trainer: they may run at once on two threads). Kept only on CPU: a fresh block of tens of MB is
    mapped anew by the C allocator (glibc maps blocks over 32 MB and unmaps them when freed), so every
    step would fault in each of its pages again: a 42 MB gather took 18.5 ms fresh, 6.4 ms into a kept
    buffer (one thread). On CUDA torch's caching allocator already keeps its blocks."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._buf: Tensor | None = None

    def buffer(self, rows: int, numel: int) -> Tensor:
        """[rows, numel] fp32 to write into: the kept buffer on CPU, a fresh one elsewhere."""
        if self._buf is None or self._buf.shape[0] < rows:
            with torch.inference_mode(False):
                fresh = torch.empty(rows, numel, device=self.device)
            if self.device.type != "cpu":
                return fresh
            self._buf = fresh
        return self._buf[:rows]


class DistillerBank:
    """`slots` independent distillers (+1 sink entry) as stacked fp32 tensors on `device`.

    Storage: one flat fp32 row of P values per slot (`flat`, [slots + 1, P]; P = 3·H·r + r + 2·H for
    `lowrank`, 3·H·I per block for `swiglu`); `params[name]` are [slots + 1, ...] views of it. A
    group's parameters are one contiguous row, so a gather or an optimiser step touches one block per
    slot, whatever the number of tensors. `rank` is the architecture's inner width (lowrank's rank,
    swiglu's intermediate size)."""

    def __init__(self, slots: int, hidden: int, rank: int, device: torch.device | str = "cpu",
                 seed: int = 0, host_reads: HostReads | None = None, distiller: str = "lowrank",
                 blocks: int = 1) -> None:
        self.arch = architecture(distiller)
        if distiller == "lowrank":
            check_rank(rank, hidden)
        self.slots, self.hidden, self.rank, self.blocks = slots, hidden, rank, blocks
        self.sink = slots
        self.device = torch.device(device)
        # Without a host plan, rows are grouped per slot from a host read of their slots where that
        # is free (CPU); otherwise (CUDA) each row gathers its own parameters (no sync).
        self.host_reads = HostReads.on(self.device) if host_reads is None else host_reads
        self.shapes = self.arch.shapes(hidden, rank, blocks)
        self.layout = param_layout(self.shapes)
        self.numel = sum(math.prod(shape) for _, shape in self.layout.values())  # P
        # Created outside inference mode: the trainer updates these in place with autograd on.
        with torch.inference_mode(False), torch.no_grad():
            self.template_flat = self._flatten(self.arch.init(hidden, rank, blocks, seed))  # [P]
            self.flat = self.template_flat.unsqueeze(0).repeat(slots + 1, 1).contiguous()
            self.params: dict[str, Tensor] = split_flat(self.flat, self.layout)
            # One view per slot row (made once): the optimiser updates these rows in place.
            self.rows = self.flat.unbind(0)
        self._scratch = Scratch(self.device)  # prediction's gathers (the trainer keeps its own)

    def _flatten(self, stacked: dict[str, Tensor]) -> Tensor:
        return torch.cat([stacked[k].to(device=self.device, dtype=torch.float32).reshape(-1)
                          for k in self.layout]).contiguous()

    @property
    def template(self) -> dict[str, Tensor]:
        """The per-slot init (no slot axis) that reset_slots copies in (views of template_flat)."""
        return {k: v[0] for k, v in split_flat(self.template_flat.unsqueeze(0), self.layout).items()}

    def slot_index(self, slot: Tensor) -> Tensor:
        """Rows without a slot (slot < 0) use the sink entry."""
        slot = slot.to(device=self.device, dtype=torch.int64)
        return torch.where(slot < 0, torch.full_like(slot, self.sink), slot)

    def gather(self, slot_index: Tensor, scratch: Scratch | None = None) -> dict[str, Tensor]:
        """Parameters of the given slots ([U, ...] views of one [U, P] gather, into `scratch` if given)."""
        if scratch is None:
            return split_flat(self.flat.index_select(0, slot_index), self.layout)
        out = scratch.buffer(slot_index.shape[0], self.numel)
        return split_flat(torch.index_select(self.flat, 0, slot_index, out=out), self.layout)

    def entry_params(self, layout: SlotLayout, scratch: Scratch | None = None) -> dict[str, Tensor]:
        """Parameters of the plan's entries ([U, ...]): views of the bank in place when the entries are
        consecutive slots (entries are sorted, and slots are handed out from 0 up, a freed one next:
        consecutive unless groups of different lengths interleave), else a gather."""
        first, last = layout.entries[0], layout.entries[-1]
        if last - first + 1 == layout.size:
            return split_flat(self.flat[first:last + 1], self.layout)
        return self.gather(layout.entry_index, scratch)

    @torch.no_grad()
    def forward(self, x: Tensor, slot: Tensor, layout: SlotLayout | None = None) -> Tensor:
        """Predict: x [R, H] (any float dtype), slot [R] int64 (-1 = none). Returns [R, H] fp32.

        With `layout` (the host plan of the rows with a slot; see layout.py) parameters are read once
        per group and rows without a slot get 0 (nothing reads their prediction). Without it, rows
        without a slot use the sink entry, and the rows are grouped from a host read of `slot` where
        host reads are free (`host_reads`, CPU) or each row gathers its parameters (CUDA, no sync)."""
        with torch.inference_mode(False):
            x = x.to(device=self.device)
            forward = self.arch.forward
            if layout is not None:
                if self.reads_whole_bank(layout):
                    return distill_bank_blocks(x, self.params, layout, self.sink, forward)
                return distill_groups(x, self.entry_params(layout, self._scratch), layout, forward)
            idx = self.slot_index(slot)
            if not self.host_reads.free:
                return distill_rows(x, self.gather(idx), forward)
            plan = layout_from_device(idx)
            return distill_groups(x, self.entry_params(plan, self._scratch), plan, forward)

    __call__ = forward

    def reads_whole_bank(self, layout: SlotLayout) -> bool:
        """Predict from the bank in place when the groups in use are at least a third of it: a gather
        moves ~3 parameter sets per group (read, write, read again), the whole bank one per slot."""
        return 3 * layout.size >= self.slots + 1

    @torch.no_grad()
    def reset_slots(self, slot_ids: Tensor) -> None:
        """Copy the init template back into the given slots (device op, no host sync)."""
        with torch.inference_mode(False):
            idx = slot_ids.to(device=self.device, dtype=torch.int64).reshape(-1)
            self.flat.index_copy_(0, idx, self.template_flat.unsqueeze(0).expand(idx.numel(), -1))

    @torch.no_grad()
    def load_template(self, init: DistillerInit, reset_all: bool = True) -> None:
        """Replace the init template (the SVD warm start: low-rank only); optionally re-init every slot."""
        if self.arch.name != "lowrank":
            raise ValueError(f"a DistillerInit template is low-rank; this bank's Distiller is {self.arch.name!r}")
        expect = self.shapes
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
