"""Host-side checks of one exploration step, before anything is launched (the sampler runs them).

On CUDA a kernel that indexes out of range (an index_select/gather/index_add with a bad slot or token
id) does not raise where it is launched: the fault is reported at a later synchronisation, outside
the sampler's `except`, and it poisons the CUDA context, so the scheduler goes down. Everything the
exploration step indexes with, or sizes its kernels by, that comes from the host is therefore checked
here from host values and tensor metadata only (shape, dtype, device: no device read, no sync):

* slot ids: -1 (stock row) or a bank slot, 0 <= slot < max_groups (they index the bank, the
  optimiser state, the gate and the telemetry);
* one known rule name per row (`rules.rule_names`), and one β per row in [0, BETA_MAX], finite;
* the captured taps: source and target [rows, H], H the Distiller's width;
* the scores (logits or probabilities) [rows, V] with V at most the LM head's rows (candidate token
  ids index the LM head), and SGLang's per-row filters [rows];
* floating dtypes, and every tensor on the Explorer's device.

A failed check returns its reason; the sampler then samples the whole batch stock and counts it in
`ESampSampler.failures`. What cannot be checked before launch: faults inside kernels on values
computed on the device (e.g. token ids drawn from NaN probabilities, an illegal memory access in a
library kernel). Those surface asynchronously at the next sync and cannot be caught by the sampler;
the scheduler process then fails as it would on the same fault in SGLang's own kernels.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from esamp_sgl.core.config import BETA_MAX
from esamp_sgl.core.rules import rule_names


def same_device(a: torch.device, b: torch.device) -> bool:
    """Same device type, and the same index when both name one ('cuda' is the current 'cuda:i')."""
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


def check_slots(slots: Sequence[int], bank_slots: int) -> str | None:
    bad = [s for s in slots if s != -1 and not 0 <= s < bank_slots]
    return None if not bad else f"slot ids {bad[:4]} outside the bank's 0..{bank_slots - 1} (or -1)"


def check_rules(rules: str | Sequence[str], rows: int) -> str | None:
    names = [rules] * rows if isinstance(rules, str) else list(rules)
    if len(names) != rows:
        return f"{len(names)} rule names for {rows} rows"
    known = set(rule_names())
    unknown = sorted({n for n in names if n not in known})
    return None if not unknown else f"unknown rules {unknown[:4]}"


def check_betas(betas: Sequence[float], rows: int) -> str | None:
    if len(betas) != rows:
        return f"{len(betas)} betas for {rows} rows"
    bad = [b for b in betas if not (math.isfinite(b) and 0.0 <= b <= BETA_MAX)]
    return None if not bad else f"betas {bad[:4]} outside [0, {BETA_MAX:g}]"


def check_tensor(name: str, tensor: torch.Tensor | None, shape: tuple[int | None, ...],
                 device: torch.device, floating: bool = True) -> str | None:
    """`tensor` has `shape` (None: any size on that axis), a floating dtype if asked, on `device`."""
    if tensor is None:
        return f"{name} is missing"
    if tensor.dim() != len(shape) or any(want is not None and got != want
                                         for got, want in zip(tensor.shape, shape)):
        want = ", ".join("*" if s is None else str(s) for s in shape)
        return f"{name} is {list(tensor.shape)}, expected [{want}]"
    if floating and not tensor.dtype.is_floating_point:
        return f"{name} has dtype {tensor.dtype}, expected a floating dtype"
    if not same_device(tensor.device, device):
        return f"{name} is on {tensor.device}, the Explorer on {device}"
    return None


def check_step(explorer, slots: Sequence[int], betas: Sequence[float], rules: str | Sequence[str],
               plan_tensors: dict[str, torch.Tensor], source: torch.Tensor, target: torch.Tensor,
               filters: dict[str, torch.Tensor]) -> str | None:
    """The first failed check of one step's plan, taps and filters (see the module docstring), None
    when all pass. `slots`/`betas`: the plan's host values; `plan_tensors`: its device copies;
    `filters`: SGLang's per-row tensors. The scores are checked apart (check_scores): a step mixed
    before the LM head is checked there, before any score exists (head_mix.py)."""
    rows, device = len(slots), explorer.device
    hidden = explorer.bank.hidden
    reason = (check_slots(slots, explorer.bank.slots) or check_rules(rules, rows)
              or check_betas(betas, rows)
              or check_tensor("source", source, (rows, hidden), device)
              or check_tensor("target", target, (rows, hidden), device))
    if reason is not None:
        return reason
    for name, tensor in {**plan_tensors, **filters}.items():
        reason = check_tensor(name, tensor, (rows,), device, floating=False)
        if reason is not None:
            return reason
    return None


def check_scores(explorer, scores: torch.Tensor | None, rows: int) -> str | None:
    """The logits or probabilities the step samples from: [rows, V], V at most the LM head's rows."""
    reason = check_tensor("scores", scores, (rows, None), explorer.device)
    vocab = explorer.lm_head_weight.shape[0]
    if reason is None and scores.shape[1] > vocab:  # a token id past the LM head's rows: out of range
        reason = f"scores have {scores.shape[1]} tokens, the LM head {vocab} rows"
    return reason
