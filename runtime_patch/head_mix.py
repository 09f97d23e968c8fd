"""The paper's latent mixing before the LM head, inside SGLang's decode forward.

The paper mixes the final state, h_mix = (1+β)·h − β·ĥ, and runs its LM head once (Alg. 1, App. E.2).
Two AROUND hooks do that here, for the rows `esamp_sgl.core.step.mix_before_head` selects (latent
mixing on, a latent rule, no top-k/top-p/min-p, not greedy):

* on `LogitsProcessor.forward` (decode batches): build the step (row plan, taps) from the batch's
  rows and captured streams, predict ĥ (or join the prediction started beside layers 2…L on the
  CPU's worker, with its plan: beside.py) and compute the LM head's input; run the forward with that
  input pending; hand the step to the sampler on the output (`sampler.STEP_ATTR`), so it neither
  predicts nor splits the taps again;
* on `LogitsProcessor._get_logits`: project the mixed states instead of h when it is called on
  exactly the forward's final states (decode: `pruned_states is hidden_states`).

The stored hidden states (the target the Distiller trains on, the gate's fit) are taken before
`_get_logits` and stay h. SGLang's logit processors, temperature, filters and draw then apply to
W_U·h_mix once, as in the paper, and the sampler keeps the engine's token for those rows; the logprobs
SGLang reports for them are those of the mixed distribution, the one the token was drawn from.

Where the hooks cannot run — a CUDA-graph replay (no Python), a graph being captured (it would bake
this step's mix in), the first token (an extend forward), a target other than the final norm, tensor
parallelism (the sharded head would need every group's ĥ on every rank; tensor_parallel.py) — the
sampler mixes after the head instead (`mix_latent`: one more projection, same distribution). On CUDA
SGLang replays decode steps from graphs by default, so there this is the common path until the mix is
made graph-safe (docs/performance.md § 9).
"""

from __future__ import annotations

import contextvars
from dataclasses import replace

import torch

from esamp_sgl.core.step import mix_before_head
from runtime_patch.beside import capturing_graph, early_step
from runtime_patch.sampler import STEP_ATTR, StepContext, launch_check, step_batch, step_context
from runtime_patch.taps import prompt_positions

# (the forward's final states, the LM head's input to use instead) while a mixed forward runs
_PENDING: contextvars.ContextVar[tuple[torch.Tensor, torch.Tensor] | None] = contextvars.ContextVar(
    "esamp_head_input", default=None)


def decode_step(runtime, forward_batch, hidden_states, aux_hidden_states) -> StepContext | None:
    """The decode step with its head input, or None when nothing is mixed before the head. Checked
    before launch as the sampler's step is (launch_checks.py); a failure leaves the forward stock
    for this step (the sampler then checks, mixes after the head or samples stock), counted in
    the runtime's `head_mix_failures` and logged."""
    if (runtime is None or aux_hidden_states is None or runtime.taps.target_index is not None
            or not runtime.config.latent_mixing or runtime.ownership is not None or capturing_graph()):
        return None
    info = getattr(forward_batch, "sampling_info", None)
    early = early_step()  # the plan, and ĥ in flight, if the source tap's hook started them (beside.py)
    try:
        rows = hidden_states.shape[0]
        step = step_context(runtime, info, prompt_positions(aux_hidden_states, hidden_states, 0, rows),
                            plan=None if early is None else early.plan)
        if step is None:
            return None
        reason = launch_check(runtime, step, info, None)
        if reason is not None:
            raise ValueError(reason)
        batch = step_batch(step, info, None, None)
        if early is not None and early.prediction is not None:
            batch = replace(batch, h_hat=early.prediction.result())
        step.head = mix_before_head(runtime.explorer, batch)
    except Exception as exc:  # never take the forward down
        runtime.count_head_mix_failure(exc)
        return None
    return step if step.head is not None else None


def mix_on_decode(runtime, original, processor, input_ids, hidden_states, lm_head, logits_metadata, *args,
                  **kwargs):
    """LogitsProcessor.forward of a decode batch (hooks.on_logits_forward, the AROUND hook, dispatches)."""
    aux = kwargs.get("aux_hidden_states", args[0] if args else None)
    step = decode_step(runtime, logits_metadata, hidden_states, aux)
    if step is None:
        return original(processor, input_ids, hidden_states, lm_head, logits_metadata, *args, **kwargs)
    token = _PENDING.set((hidden_states, step.head.hidden))
    try:
        out = original(processor, input_ids, hidden_states, lm_head, logits_metadata, *args, **kwargs)
    finally:
        _PENDING.reset(token)
    setattr(out, STEP_ATTR, step)
    runtime.head_mix_steps += 1
    return out


def project_mixed(original, processor, hidden_states, *args, **kwargs):
    """AROUND LogitsProcessor._get_logits: the mixed states replace the forward's final states."""
    pending = _PENDING.get()
    if pending is not None and hidden_states is pending[0]:
        hidden_states = pending[1]
    return original(processor, hidden_states, *args, **kwargs)
