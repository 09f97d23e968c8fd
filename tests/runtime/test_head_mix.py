"""Latent mixing before the LM head through the hooks SGLang calls (LogitsProcessor.forward on a decode
batch, then its _get_logits): the LM head projects h_mix for the mixed rows only, the step reaches
the sampler on the output, and a failure leaves the forward stock, counted."""

from __future__ import annotations

import torch
from decode_forward import decode_batch, join_rows, logits_forward

from esamp_sgl.core.config import ESampConfig
from esamp_sgl.core.explorer import Explorer
from runtime_patch import head_mix
from runtime_patch.runtime import SchedulerState
from runtime_patch.sampler import STEP_ATTR
from runtime_patch.taps import APPEND_FINAL_NORM, Taps

H, V, R = 16, 40, 3


def _runtime(taps_hidden: int = H) -> SchedulerState:
    config = ESampConfig(profile="paper", rank=8, max_groups=2)
    explorer = Explorer(config, H, torch.randn(V, H, generator=torch.Generator().manual_seed(1)))
    return SchedulerState(config, explorer, Taps([1], taps_hidden, 1, None, None, None))


def _decode(runtime, monkeypatch, min_p: list[float], width: int = H):
    """One decode forward of R rows (rows 0, 1 explore in one group, row 2 is stock) through the hooks;
    returns (the states _get_logits projected, the forward's output, the final states h)."""
    monkeypatch.setitem(APPEND_FINAL_NORM, "enabled", True)  # target = the final normed state
    join_rows(runtime)
    gen = torch.Generator().manual_seed(0)
    aux, hidden = [torch.randn(R, width, generator=gen)], torch.randn(R, width, generator=gen)
    projected, out = logits_forward(runtime, decode_batch(min_p), hidden, aux)
    return projected, out, hidden


def test_the_lm_head_projects_the_mixed_state_of_unfiltered_exploring_rows_only(monkeypatch):
    runtime = _runtime()
    projected, out, h = _decode(runtime, monkeypatch, min_p=[0.0, 0.1, 0.0])
    step = getattr(out, STEP_ATTR)
    assert step.head.mixed.tolist() == [True, False, False]  # row 1 has a filter, row 2 no ESamp
    assert torch.equal(projected[1:], h[1:])
    want = 1.25 * h[0] - 0.25 * step.head.h_hat[0]  # (1+β)·h − β·ĥ, the paper's h_mix
    assert torch.allclose(projected[0], want, atol=1e-6)
    assert torch.equal(step.target, h)  # the Distiller trains on h, not on h_mix
    assert runtime.summary()["head_mix_steps"] == 1 and runtime.summary()["head_mix_failures"] == 0


def test_a_mix_that_fails_its_checks_leaves_the_forward_stock_and_is_counted(monkeypatch):
    runtime = _runtime(taps_hidden=H + 4)  # taps [R, H + 4]: the Distiller is H wide
    projected, out, h = _decode(runtime, monkeypatch, min_p=[0.0, 0.0, 0.0], width=H + 4)
    assert torch.equal(projected, h) and not hasattr(out, STEP_ATTR)
    assert runtime.summary()["head_mix_failures"] == 1 and runtime.summary()["head_mix_steps"] == 0


def test_a_forward_of_another_tensor_is_never_mixed():
    sentinel = torch.zeros(2, H)
    token = head_mix._PENDING.set((sentinel, torch.ones(2, H)))
    try:
        other = torch.zeros(2, H)  # equal values, another tensor (e.g. an extend's other positions)
        assert torch.equal(head_mix.project_mixed(lambda p, s: s, None, other), other)
        assert torch.equal(head_mix.project_mixed(lambda p, s: s, None, sentinel), torch.ones(2, H))
    finally:
        head_mix._PENDING.reset(token)
