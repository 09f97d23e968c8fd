"""The esamp backend across online weight updates (RL loops that train between rollouts).

RL frameworks update the served weights in place between rollouts: `/update_weights_from_disk`,
`update_weights_from_tensor` (verl, colocated), `update_weights_from_distributed` (OpenRLHF, a NCCL
group with the trainer) or `update_weights_from_ipc` (checkpoint-engine). Each reaches every
scheduler as one call of `SchedulerWeightUpdaterManager.<method>`; an AFTER hook on each (registered
from `touch_points.py`; TP ranks all run it, so the collective below is matched) re-binds the Explorer:

* the LM head `d = ĥ·W_U[candidates]` is computed from. Without TP the Explorer holds the model's
  own parameter, which a loader usually overwrites in place, but a loader may also replace the
  Parameter object; under TP the Explorer holds an assembled full copy (`tensor_parallel.py`),
  which would go stale. So the head is re-read from `model.lm_head` and, under TP, assembled again
  (one all-reduce of V x H per update call, whether or not the call touched the head).
* groups alive across the update restart: see `SchedulerState.on_weights_updated`. With SGLang's
  defaults there are none: an update waits for the requests in flight to finish and holds new ones
  back (the tokenizer's model-update lock), so every group runs on one weight version. Only a
  client that pauses generation in place (`/pause_generation`, update, `/continue_generation`, as
  asynchronous RL with partial rollouts does) has members running across an update.

The hook runs whether or not the update reported success: a failed load may have changed part of
the weights (SGLang: "partially updated"), and every TP rank must take part in the re-assembly.
"""

from __future__ import annotations

import logging

from runtime_patch.tensor_parallel import full_lm_head_weight

logger = logging.getLogger("esamp_sgl.weight_sync")

def rebind_after_weight_update(result, manager, *args, **kwargs):
    """AFTER SchedulerWeightUpdaterManager.update_weights_from_* (scheduler process)."""
    from runtime_patch.hooks import STATE

    runtime = STATE.runtime
    if runtime is None:
        return result
    runner = manager.tp_worker.model_runner
    reset = runtime.on_weights_updated(full_lm_head_weight(runner.model.lm_head))
    logger.info("esamp: weights updated (%d so far); LM head re-bound (norm %.4g), %d live groups restarted",
                runtime.weight_updates, runtime.lm_head_norm, reset)
    return result
