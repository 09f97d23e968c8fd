"""The Distiller's prediction beside layers 2…L (the paper's Alg. 1 and App. E.2), on the CPU.

The source tap is the residual stream entering layer `source_index`; SGLang's layer loop hands it to
`AuxHiddenStateList.capture` as soon as it exists, long before the LM head. An AROUND hook there
plans the decode step and starts ĥ on the training worker (`train_mode` cpu_thread, the CPU's side
stream: after the training step in flight there) while the scheduler's thread runs the remaining
layers; the mix before the LM head (head_mix.py) then joins it instead of predicting on the
scheduler's thread, and reuses the plan. Same source, parameters and ops as predicting there, so the
same ĥ.

It starts only where the mix before the head will use it: a decode forward that is not a graph being
captured, the final-norm target, no TP ownership, a worker, and every exploring row mixing in latent
space (a latent rule, no top-k/top-p/min-p in the batch). Elsewhere nothing changes. On CUDA this is
where a side stream would start the prediction (not built: no GPU to test it on).

The forward batch is not an argument of `capture`: an AROUND hook on `ModelRunner._forward_raw`
keeps it for the forward's duration (`_FORWARD`), with what the capture hook started.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass

import torch

from esamp_sgl.core.plan import StepPlan
from esamp_sgl.core.step import PredictionBeside, mixes_every_row, predict_beside
from runtime_patch.launch_checks import check_slots, check_tensor
from runtime_patch.rows import rows_of
from runtime_patch.sampler import batch_unfiltered


@dataclass
class EarlyStep:
    """What the capture hook did for this forward's decode step."""

    plan: StepPlan  # the step's plan (the head mix reuses it)
    prediction: PredictionBeside | None  # ĥ in flight on the worker, or None (predict as usual)


@dataclass
class ForwardState:
    forward_batch: object
    early: EarlyStep | None = None


_FORWARD: contextvars.ContextVar[ForwardState | None] = contextvars.ContextVar("esamp_forward", default=None)


def track_forward(original, runner, forward_batch, *args, **kwargs):
    """AROUND ModelRunner._forward_raw: the forward batch, for the capture hook."""
    token = _FORWARD.set(ForwardState(forward_batch))
    try:
        return original(runner, forward_batch, *args, **kwargs)
    finally:
        _FORWARD.reset(token)


def early_step() -> EarlyStep | None:
    """The early step of the forward running now, if the capture hook started one."""
    state = _FORWARD.get()
    return None if state is None else state.early


def on_capture(runtime, original, captures, hidden, *args, **kwargs):
    """AROUND AuxHiddenStateList.capture: after the source tap is kept, start the step early."""
    index = len(captures)
    out = original(captures, hidden, *args, **kwargs)
    state = _FORWARD.get()
    if runtime is None or state is None or state.early is not None:
        return out
    try:
        state.early = start_early(runtime, state.forward_batch, captures[index], index)
    except Exception as exc:  # never take the forward down: the head mix predicts as usual
        runtime.count_head_mix_failure(exc)
    return out


def capturing_graph() -> bool:
    """A CUDA graph is being captured on this stream (a hook must not bake one step's work into it)."""
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def start_early(runtime, forward_batch, tap: torch.Tensor, index: int) -> EarlyStep | None:
    """The decode step planned and its ĥ started on the worker, when the head mix will use them."""
    taps, explorer = runtime.taps, runtime.explorer
    mode = getattr(forward_batch, "forward_mode", None)
    if (taps.capture_indices[index] != taps.source_index or mode is None or not mode.is_decode()
            or taps.target_index is not None or not runtime.config.latent_mixing
            or runtime.ownership is not None or explorer.trainer.mode != "cpu_thread" or capturing_graph()):
        return None
    info = getattr(forward_batch, "sampling_info", None)
    rows = rows_of(info)
    if rows is None or not rows.any_requested or tap.dim() != 2 or tap.shape[0] != len(rows.rids):
        return None
    plan = runtime.step_plan(rows, tap.device)
    if not plan.any_active or not mixes_every_row(explorer, plan.rules, batch_unfiltered(info)):
        return EarlyStep(plan, None)
    source = tap if taps.source_norm is None else taps.source_norm(tap.contiguous())
    # The checks the head mix makes before launch, for what the prediction reads.
    if (check_slots(plan.host_slots, explorer.bank.slots)
            or check_tensor("source", source, (len(plan.host_slots), explorer.bank.hidden), explorer.device)):
        return EarlyStep(plan, None)
    prediction = predict_beside(explorer, source, plan)
    if prediction is not None:
        runtime.predictions_beside += 1
    return EarlyStep(plan, prediction)
