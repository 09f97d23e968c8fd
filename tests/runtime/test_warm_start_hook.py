"""The prefill warm start through the hook SGLang calls (LogitsProcessor.forward): a failure is
counted, logged with its reason, reported, and never takes the forward down."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import torch

from esamp_sgl.core.config import ESampConfig, ExploreRequest
from esamp_sgl.core.explorer import Explorer
from runtime_patch.rows import ROWS_ATTR, BatchRows, ExtendSpan
from runtime_patch.runtime import SchedulerState
from runtime_patch.taps import Taps

H, V, P = 16, 40, 6


def _extend(runtime, monkeypatch, width: int):
    """Run hooks.on_logits_forward on one ESamp request's whole prompt of P positions whose
    taps are `width` wide; returns (whether the original forward ran, its result)."""
    from sglang.srt.model_executor.forward_batch_info import ForwardMode

    import runtime_patch.hooks as hooks
    import runtime_patch.taps as taps

    monkeypatch.setattr(hooks.STATE, "runtime", runtime)
    monkeypatch.setitem(taps.APPEND_FINAL_NORM, "enabled", True)  # target = the final normed state
    request = ExploreRequest(group="g")
    runtime.join("a", request)
    info = SimpleNamespace()
    setattr(info, ROWS_ATTR, BatchRows(("a",), (request,), (ExtendSpan("k", P, 0, P, True),)))
    meta = SimpleNamespace(forward_mode=ForwardMode.EXTEND, sampling_info=info, extend_seq_lens_cpu=[P])
    gen = torch.Generator().manual_seed(0)
    aux, hidden = torch.randn(P, width, generator=gen), torch.randn(P, width, generator=gen)
    ran = []

    def original(processor, input_ids, hidden_states, lm_head, logits_metadata, *args, **kwargs):
        ran.append(True)
        return "logits"

    out = hooks.on_logits_forward(original, None, None, hidden, None, meta, aux)
    return ran == [True], out


def _runtime(taps_hidden: int) -> SchedulerState:
    config = ESampConfig(rank=4, max_groups=2, prefill_warm_start=True, warm_start_steps=3)
    explorer = Explorer(config, H, torch.randn(V, H, generator=torch.Generator().manual_seed(1)))
    return SchedulerState(config, explorer, Taps([2], taps_hidden, 2, None, None, None))


def test_a_warm_start_on_pairs_of_the_wrong_hidden_size_is_counted_logged_and_reported(monkeypatch, caplog):
    runtime = _runtime(taps_hidden=H + 4)  # the taps hand over [P, H + 4]: the Distiller is H wide
    with caplog.at_level(logging.WARNING, logger="esamp_sgl.runtime"):
        ran, out = _extend(runtime, monkeypatch, width=H + 4)
    assert ran and out == "logits"  # the forward went on
    assert runtime.warm_start_failures == 1 and runtime.summary()["warm_start_failures"] == 1
    failures = [r for r in caplog.records if "prefill warm start failed" in r.getMessage()]
    assert len(failures) == 1 and "ValueError" in failures[0].getMessage()
    member = runtime.members["a"]
    telemetry = runtime.member_report(member)
    assert telemetry["warm_start_failed"] is True and telemetry["warm_start_steps"] == 0
    assert not runtime.explorer.needs_warm_start(member.group)  # not retried
    runtime.leave("a")
    assert runtime.summary()["warm_start_failures"] == 1


def test_a_warm_start_through_the_hook_runs_when_the_shapes_agree(monkeypatch):
    runtime = _runtime(taps_hidden=H)
    ran, _ = _extend(runtime, monkeypatch, width=H)
    assert ran and runtime.warm_start_failures == 0
    telemetry = runtime.member_report(runtime.members["a"])
    assert telemetry["warm_start_steps"] == 3 and telemetry["warm_start_failed"] is False
    assert telemetry["warm_start_positions"] == P
