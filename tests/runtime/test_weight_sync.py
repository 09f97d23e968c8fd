"""Online weight updates: the hook on SGLang's real `SchedulerWeightUpdaterManager` re-binds the LM head
that `d` is computed from, and restarts the groups alive across the update.

The end-to-end proof on a real server (`/update_weights_from_disk` with a scaled LM head) is
tests/e2e/test_rl_rollouts.py.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch

from esamp_sgl.core.config import ESampConfig, ExploreRequest
from esamp_sgl.core.explorer import Explorer
from esamp_sgl.core.dlogits import distiller_logits_gather
from runtime_patch.runtime import SchedulerState
from runtime_patch.taps import Taps

H, V = 16, 50


def _manager(model):
    """SGLang's scheduler-side updater, with only what `update_weights_from_disk` reads and no runner
    to load into: the hooked method is SGLang's own."""
    from sglang.srt.managers.scheduler_components.weight_updater import SchedulerWeightUpdaterManager

    manager = object.__new__(SchedulerWeightUpdaterManager)
    manager.tp_worker = SimpleNamespace(model_runner=SimpleNamespace(model=model),
                                        weight_update_runners=lambda: [])
    manager.draft_worker = None
    manager.metrics_collector = None
    manager.scheduler = SimpleNamespace(record_weight_version_change=lambda new_version: None)
    manager.flush_cache = lambda empty_cache=False: True
    return manager


def test_an_update_rebinds_a_replaced_lm_head_and_restarts_live_groups(sglang_with_plugin):
    from sglang.srt.managers.io_struct import UpdateWeightFromDiskReqInput

    from runtime_patch.hooks import STATE

    gen = torch.Generator().manual_seed(0)
    model = torch.nn.Module()
    model.lm_head = torch.nn.Module()
    model.lm_head.weight = torch.nn.Parameter(torch.randn(V, H, generator=gen), requires_grad=False)
    config = ESampConfig(rank=4, seed=1)
    runtime = SchedulerState(config, Explorer(config, H, model.lm_head.weight), Taps([2], H, 2, None, None, None))
    explorer = runtime.explorer
    runtime.join("a", ExploreRequest(group="g"))
    slot = explorer.groups.slot_of("g")
    source = torch.randn(6, H, generator=gen)
    target = torch.nn.functional.layer_norm(source, (H,))  # what a Distiller fits at once
    explorer.warm_start_group("g", source, target)
    runtime.prompt_pairs.add("p", 6, 0, source, target)
    before = explorer.report("g")
    assert before["warm_start_steps"] > 0 and before["gate_r2"] is not None  # fitted, fit measured
    h_hat = torch.randn(2, H, generator=gen)
    cand = torch.tensor([[0, 3, 7], [1, 2, 49]])
    d_before = distiller_logits_gather(h_hat, explorer.lm_head_weight, cand)
    norm_before = runtime.lm_head_norm

    # A loader that replaces the Parameter object (not an in-place copy): the Explorer's reference goes stale.
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach() * 2, requires_grad=False)
    STATE.runtime = runtime
    try:
        out = _manager(model).update_weights_from_disk(UpdateWeightFromDiskReqInput(model_path="new", load_format="auto"))
    finally:
        STATE.runtime = None
    assert out.success

    assert explorer.lm_head_weight is model.lm_head.weight
    torch.testing.assert_close(distiller_logits_gather(h_hat, explorer.lm_head_weight, cand), 2 * d_before)
    assert runtime.weight_updates == 1 and abs(runtime.lm_head_norm - 2 * norm_before) < 1e-4 * norm_before
    summary = runtime.summary()
    assert summary["weight_updates"] == 1 and summary["lm_head_norm"] == runtime.lm_head_norm
    # The live group keeps its members and slot, restarted: no warm start, gate shut, counters at zero.
    telemetry = runtime.member_report(runtime.members["a"])
    assert telemetry["slot"] == slot and telemetry["members"] == 1
    assert telemetry["warm_start_steps"] == 0 and telemetry["gate"] == 0.0 and telemetry["gate_r2"] is None
    assert explorer.needs_warm_start("g") and len(runtime.prompt_pairs) == 0
    runtime.leave("a")
    assert runtime.slots_in_use() == 0


def test_an_update_with_no_esamp_runtime_is_left_alone(sglang_with_plugin):
    from sglang.srt.managers.io_struct import UpdateWeightFromDiskReqInput

    from runtime_patch.hooks import STATE

    assert STATE.runtime is None  # a stock server, or a process without the esamp sampler
    model = SimpleNamespace(lm_head=None)  # would fail if the hook touched it
    assert _manager(model).update_weights_from_disk(UpdateWeightFromDiskReqInput(model_path="m")).success
