"""A decode step's plan: what ESamp does with each row, decided on the host and copied to the device once.

The engine knows each row's fork group, β, rule and whether its group trains from request metadata,
so the plan is made there, on the host: `plan_step` packs the per-row values and the rows' layout per
bank slot (layout.py) into ONE host→device copy (from pinned memory, non-blocking on CUDA) and keeps
the host values the sampler checks before it launches anything (runtime_patch/launch_checks.py). The
step then reads the plan from its batch (step.StepBatch.plan): no device value is read on the host.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from esamp_sgl.core.config import DEFAULT_RULE
from esamp_sgl.core.layout import SlotLayout, layout_arrays, to_device


@dataclass
class StepPlan:
    """Host-side decisions for one step's R rows, as device tensors (and the host values behind them)."""

    slots: Tensor  # [R] int64 bank slot of the row's group, -1 = stock row
    betas: Tensor  # [R] float32
    any_active: bool  # host: does any row have a slot?
    rules: str | Sequence[str] = DEFAULT_RULE  # one rule name for every row, or one per row
    train: Tensor | None = None  # [R] bool: the row's group trains (None: every row with a slot)
    # The rows with a slot grouped per slot (`.train`: the rows that train). None: built from a host
    # read of `slots` where that is free (CPU), else each row gathers its parameters.
    layout: SlotLayout | None = None
    # The host values behind `slots` and `betas` (() when the plan was built from device tensors).
    host_slots: tuple[int, ...] = ()
    host_betas: tuple[float, ...] = ()

    def take(self, rows: Tensor) -> "StepPlan":
        """The plan of `rows` (a host read of `rows`: the CPU path); the layout is dropped (rebuilt
        for the restricted rows by the step)."""
        keep = rows.tolist()
        return StepPlan(
            slots=self.slots.index_select(0, rows), betas=self.betas.index_select(0, rows),
            any_active=self.any_active,
            rules=self.rules if isinstance(self.rules, str) else [self.rules[i] for i in keep],
            train=None if self.train is None else self.train.index_select(0, rows),
            host_slots=tuple(self.host_slots[i] for i in keep) if self.host_slots else (),
            host_betas=tuple(self.host_betas[i] for i in keep) if self.host_betas else ())


def plan_step(slots: Sequence[int], betas: Sequence[float], train: Sequence[bool], rules: Sequence[str],
              device: torch.device | str) -> StepPlan:
    """The plan of a step from its rows' host values (slot -1: stock row), in one host→device copy."""
    any_active = any(s >= 0 for s in slots)
    slots_np = np.asarray(slots, dtype=np.int64)
    train_np = np.asarray(train, dtype=bool)
    layout_host, build = layout_arrays(slots_np, train_np) if any_active else ([], None)
    views = to_device([slots_np, np.asarray(betas, dtype=np.float32), train_np, *layout_host], device)
    return StepPlan(
        slots=views[0], betas=views[1], any_active=any_active,
        rules=rules[0] if rules and list(rules).count(rules[0]) == len(rules) else list(rules),  # one: a str
        train=views[2],
        layout=build(views[3:]) if build is not None else None,
        host_slots=tuple(int(s) for s in slots), host_betas=tuple(float(b) for b in betas))
