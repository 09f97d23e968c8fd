"""The prediction beside layers 2…L (runtime_patch/beside.py), through the hooks SGLang calls in a decode
forward: ModelRunner._forward_raw, then SGLang's own AuxHiddenStateList.capture for the source tap, then
LogitsProcessor.forward. The prediction starts on the CPU's training worker as soon as the tap exists,
behind the work queued there, and the mix before the LM head uses it: the same ĥ and h_mix as
predicting on the scheduler's thread, the step planned once."""

from __future__ import annotations

import threading

import pytest
import torch
from decode_forward import ROWS as R, decode_batch, join_rows, logits_forward
from sglang.srt.layers.aux_hidden_states import AuxHiddenStateList

from esamp_sgl.core.config import ESampConfig
from esamp_sgl.core.explorer import Explorer
from runtime_patch import beside
from runtime_patch.runtime import SchedulerState
from runtime_patch.sampler import STEP_ATTR
from runtime_patch.taps import APPEND_FINAL_NORM, Taps

H, V = 16, 40


def _runtime(train_mode: str) -> SchedulerState:
    config = ESampConfig(profile="paper", rank=8, max_groups=2, train_mode=train_mode)
    explorer = Explorer(config, H, torch.randn(V, H, generator=torch.Generator().manual_seed(1)))
    runtime = SchedulerState(config, explorer, Taps([1], H, 1, None, None, None))
    join_rows(runtime)
    return runtime


def _decode(runtime, batch, with_forward_hook: bool = True, after_capture=None):
    """One decode forward through the hooks: the layer loop hands the source tap to SGLang's
    AuxHiddenStateList.capture; then the logits processor runs. Returns (states projected by the LM
    head, the forward's output)."""
    gen = torch.Generator().manual_seed(0)
    source, final = torch.randn(R, H, generator=gen), torch.randn(R, H, generator=gen)

    def forward_raw(runner, batch):
        captures = AuxHiddenStateList()
        beside.on_capture(runtime, AuxHiddenStateList.capture, captures, source)  # SGLang's own capture
        if after_capture is not None:
            after_capture()
        return logits_forward(runtime, batch, final, captures)

    return beside.track_forward(forward_raw, None, batch) if with_forward_hook else forward_raw(None, batch)


@pytest.fixture(autouse=True)
def _final_norm_target(monkeypatch):
    monkeypatch.setitem(APPEND_FINAL_NORM, "enabled", True)


def test_the_prediction_runs_on_the_worker_behind_its_queue_and_mixes_as_on_the_scheduler_thread():
    inline, early = _runtime("cpu_thread"), _runtime("cpu_thread")
    release = threading.Event()
    early.explorer.trainer.run_beside(lambda: release.wait(10))  # stands for the training step in flight
    queued = {}

    def after_capture():
        # The capture hook returned while the worker is still busy: the prediction waits behind it
        # there, not on this thread.
        queued["done"] = beside.early_step().prediction.future.done()
        release.set()

    try:
        want_projected, want_out = _decode(inline, decode_batch([0.0, 0.0, 0.0]), with_forward_hook=False)
        got_projected, got_out = _decode(early, decode_batch([0.0, 0.0, 0.0]), after_capture=after_capture)
    finally:
        release.set()
        inline.explorer.close(), early.explorer.close()
    assert queued == {"done": False}
    assert early.summary()["predictions_beside"] == 1 and inline.summary()["predictions_beside"] == 0
    assert torch.equal(getattr(got_out, STEP_ATTR).head.h_hat, getattr(want_out, STEP_ATTR).head.h_hat)
    assert torch.equal(got_projected, want_projected)  # the same h_mix reaches the LM head
    assert early.rows_planned == inline.rows_planned == 2  # the step was planned once
    assert early.summary()["head_mix_failures"] == 0


@pytest.mark.parametrize("train_mode, min_p, mode", [
    ("sync", [0.0, 0.0, 0.0], "DECODE"),  # no worker to run it beside the forward
    ("cpu_thread", [0.0, 0.1, 0.0], "DECODE"),  # a filtered row: not every row mixes before the head
    ("cpu_thread", [0.0, 0.0, 0.0], "EXTEND"),  # the first token: no mix before the head
])
def test_no_prediction_beside_where_the_mix_before_the_head_would_not_use_it(train_mode, min_p, mode):
    runtime = _runtime(train_mode)

    def forward_raw(runner, batch):
        beside.on_capture(runtime, AuxHiddenStateList.capture, AuxHiddenStateList(), torch.randn(R, H))
        return beside.early_step()

    try:
        early = beside.track_forward(forward_raw, None, decode_batch(min_p, mode))
    finally:
        runtime.explorer.close()
    assert early is None or early.prediction is None
    assert runtime.summary()["predictions_beside"] == 0 and runtime.summary()["head_mix_failures"] == 0
