"""Host-side batch plans: which rows belong to which bank slot, decided where it is known for free.

The engine knows each row's slot on the host (from request metadata), so the grouping of rows per
slot is computed there, in numpy, and shipped to the device with the step's other per-row values as
ONE copy from pinned memory (non-blocking on CUDA). The device path then needs no torch.unique, no
host read and no per-row gather of parameters: every per-slot tensor (Distiller parameters, Adam
moments) is read once per *group*.

Layout (`SlotLayout`): the U distinct slots of the included rows are the entries; each entry owns `n`
consecutive positions of a padded [U, n] block (n = the largest group), so the Distiller runs as one
batched matmul per weight over [U, n, H]. Padding positions repeat their entry's first row with
weight 0 (a finite value from the same group: a NaN in another group's row can never reach this
group's gradient).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

_ALIGN = 8  # every array starts at a multiple of 8 bytes, so int64 views of the buffer are legal


def to_device(arrays: Sequence[np.ndarray], device: torch.device | str) -> list[Tensor]:
    """Copy host arrays (int64 / int32 / float32 / bool) to `device` in one transfer: packed into one
    pinned buffer, one non-blocking copy, then typed views of the device buffer (no kernels).
    On CPU the views share one numpy-backed buffer. The views must not be written in place."""
    device = torch.device(device)
    offsets, total = [], 0
    for a in arrays:
        total = -(-total // _ALIGN) * _ALIGN
        offsets.append(total)
        total += a.nbytes
    host = torch.empty(max(total, _ALIGN), dtype=torch.uint8, pin_memory=device.type == "cuda")
    raw = host.numpy()
    for a, off in zip(arrays, offsets):
        raw[off:off + a.nbytes] = np.ascontiguousarray(a).view(np.uint8).reshape(-1)
    buf = host.to(device, non_blocking=True) if device.type == "cuda" else host
    out = []
    for a, off in zip(arrays, offsets):
        dtype = _TORCH_DTYPES[a.dtype.str[1:]]
        out.append(buf[off:off + a.nbytes].view(dtype).view(a.shape))
    return out


_TORCH_DTYPES = {"i8": torch.int64, "i4": torch.int32, "f4": torch.float32, "b1": torch.bool,
                 "u1": torch.uint8}


@dataclass
class SlotLayout:
    """R rows grouped by slot (see the module docstring). Device tensors share one buffer."""

    entries: list[int]  # host: the slot of each entry, U of them (distinct)
    rows: int  # R
    width: int  # n: padded positions per entry (the largest group)
    entry_index: Tensor  # [U] int64 the entries' slots
    gather: Tensor  # [U*n] int64 the row at each padded position (padding: the entry's first row)
    weight: Tensor  # [U, n] fp32 1 at a real row, 0 at padding
    count: Tensor  # [U] fp32 rows per entry
    position: Tensor  # [R] int64 each row's padded position (rows outside: 0)
    member: Tensor  # [R] bool the row belongs to an entry
    train: "SlotLayout | None" = None  # the layout of the rows that train (None: none train)
    # host: each row's slot if the row is in the layout, else -1 (a training cadence merges the
    # layouts of several steps from it, trainer.py)
    row_slots: np.ndarray | None = None

    @property
    def size(self) -> int:
        return len(self.entries)

    def buffers(self) -> list[Tensor]:
        """The device tensors (for record_stream when another stream reads them)."""
        out = [self.entry_index, self.gather, self.weight, self.count, self.position, self.member]
        if self.train is not None and self.train is not self:
            out += self.train.buffers()
        return out

    @staticmethod
    def arrays(slots: np.ndarray, include: np.ndarray | None = None) -> tuple[list[int], int, list[np.ndarray]] | None:
        """The layout as host arrays (entries, n, [entry_index, gather, weight, count, position,
        member]) for the rows with include & slot >= 0; None if there is none. `member` is the
        row_slots' mask: np.where(member, slots, -1) are the row_slots."""
        slots = np.asarray(slots, dtype=np.int64)
        keep = slots >= 0 if include is None else (np.asarray(include, dtype=bool) & (slots >= 0))
        rows = np.flatnonzero(keep)
        if rows.size == 0:
            return None
        entries, inverse, counts = np.unique(slots[rows], return_inverse=True, return_counts=True)
        u, n = entries.size, int(counts.max())
        order = np.argsort(inverse, kind="stable")
        sorted_rows, sorted_entry = rows[order], inverse[order]
        starts = np.cumsum(counts) - counts
        padded = sorted_entry * n + (np.arange(rows.size) - starts[sorted_entry])
        gather = np.repeat(sorted_rows[starts], n)
        gather[padded] = sorted_rows
        weight = np.zeros(u * n, dtype=np.float32)
        weight[padded] = 1.0
        position = np.zeros(slots.size, dtype=np.int64)
        position[sorted_rows] = padded
        return (entries.tolist(), n,
                [entries.astype(np.int64), gather.astype(np.int64), weight.reshape(u, n),
                 counts.astype(np.float32), position, keep])

    @classmethod
    def from_arrays(cls, entries: list[int], n: int, tensors: Sequence[Tensor],
                    row_slots: np.ndarray | None = None) -> "SlotLayout":
        entry_index, gather, weight, count, position, member = tensors
        return cls(entries, int(position.shape[0]), n, entry_index, gather, weight, count,
                   position, member, row_slots=row_slots)


def layout_arrays(slots: Sequence[int] | np.ndarray, train: Sequence[bool] | np.ndarray | None):
    """Host part of `slot_layout`: (list of arrays to copy, a function that builds the SlotLayout
    from their device views). Lets an engine add its own per-row arrays to the same copy."""
    slots = np.asarray(slots, dtype=np.int64)
    train_arr = None if train is None else np.asarray(train, dtype=bool)
    pred = SlotLayout.arrays(slots)
    if pred is None:
        return [], lambda views: None
    same = train_arr is None or bool(train_arr[slots >= 0].all())
    trn = None if same else SlotLayout.arrays(slots, train_arr)
    arrays = list(pred[2]) + ([] if trn is None else list(trn[2]))

    def build(views: Sequence[Tensor]) -> SlotLayout:
        layout = SlotLayout.from_arrays(pred[0], pred[1], views[:6], _row_slots(slots, pred))
        if same:
            layout.train = layout
        elif trn is not None:
            layout.train = SlotLayout.from_arrays(trn[0], trn[1], views[6:12], _row_slots(slots, trn))
        return layout
    return arrays, build


def _row_slots(slots: np.ndarray, found) -> np.ndarray:
    return np.where(found[2][5], slots, -1)


def layout_from_row_slots(row_slots: np.ndarray, device: torch.device | str) -> SlotLayout | None:
    """One layout (no `.train`) of the rows with a slot, from host slots (-1: not included); one
    host→device copy, no device read. None when no row has a slot."""
    row_slots = np.asarray(row_slots, dtype=np.int64)
    found = SlotLayout.arrays(row_slots)
    if found is None:
        return None
    entries, n, arrays = found
    return SlotLayout.from_arrays(entries, n, to_device(arrays, device), _row_slots(row_slots, found))


def slot_layout(slots: Sequence[int] | np.ndarray, train: Sequence[bool] | np.ndarray | None,
                device: torch.device | str) -> SlotLayout | None:
    """SlotLayout of the rows with a slot (slot >= 0), and in `.train` those whose `train` is True
    (None: all). One host→device copy. None when no row has a slot."""
    arrays, build = layout_arrays(slots, train)
    if not arrays:
        return None
    return build(to_device(arrays, device))


def layout_from_device(slots: Tensor, train: Tensor | None = None) -> SlotLayout | None:
    """The same plan from device tensors: a host read (free on CPU; one sync on CUDA, so engines
    pass the plan they built on the host instead)."""
    s = slots.detach().to("cpu", torch.int64).numpy()
    t = None if train is None else train.detach().to("cpu", torch.bool).numpy()
    return slot_layout(s, t, slots.device)


def layout_of_rows(slots: Tensor, include: Tensor | None = None) -> SlotLayout | None:
    """One layout (no `.train`) of the rows with include & slot >= 0, from a host read of device
    tensors (free on CPU; one sync on CUDA). None when there is no such row."""
    s = slots.detach().to("cpu", torch.int64).numpy()
    if include is not None:
        s = np.where(include.detach().to("cpu", torch.bool).numpy(), s, -1)
    return layout_from_row_slots(s, slots.device)
