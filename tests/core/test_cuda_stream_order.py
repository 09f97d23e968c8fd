"""CUDA-only: ESamp's work stays ordered across the streams SGLang's overlap scheduler uses (the
forward stream runs step t+1 while the scheduler's stream frees step t's finished requests).
Skipped without a GPU. Each test opens the race window with a long kernel (torch.cuda._sleep)
and checks that the window was still open when the racing work was queued, so that a missing
device-side wait shows as a wrong value, not as luck.

* a slot reset from the scheduler's stream waits for the step queued on the forward stream (a
  frozen group: no training wait to hide behind), and the next group starts from zero;
* the next step on the forward stream waits for a reset queued on the scheduler's stream;
* a trainer wait() from a second stream does not un-order the first stream's next prediction;
* a telemetry read before any step completed waits for the step's own stream.
"""

from __future__ import annotations

import functools

import pytest
import torch

from esamp_sgl.core.config import ESampConfig
from esamp_sgl.core.distiller import DistillerBank
from esamp_sgl.core.explorer import Explorer
from esamp_sgl.core.layout import slot_layout
from esamp_sgl.core.plan import StepPlan
from esamp_sgl.core.step import StepBatch, explore_batch
from esamp_sgl.core.telemetry import Telemetry
from esamp_sgl.core.trainer import TestTimeTrainer

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (stream ordering)"),
]

H, V, ROWS = 64, 5000, 8
WINDOW_MS = 300  # the long kernel: far longer than the host needs to queue the racing work


@functools.cache
def _cycles_per_ms() -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    torch.cuda._sleep(10_000_000)
    end.record()
    end.synchronize()
    return 10_000_000 / start.elapsed_time(end)


def _sleep_ms(ms: float) -> None:
    """Keep the current stream busy for about `ms` milliseconds (one kernel)."""
    torch.cuda._sleep(int(ms * _cycles_per_ms()))


def _explorer(**kw) -> Explorer:
    cfg = ESampConfig(**{"rank": 16, "max_groups": 2, "fit_gate": False, "backend": "torch", **kw})
    w = torch.randn(V, H, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    return Explorer(cfg, H, w.cuda(), device="cuda")


def _batch(slot: int, seed: int) -> StepBatch:
    """A planned batch (no host read in the step) whose rows all belong to `slot`."""
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(ROWS, V, generator=gen) * 3).cuda()
    slots = [slot] * ROWS
    return StepBatch(
        logits=logits, temperatures=torch.ones(ROWS, device="cuda"),
        top_k=torch.full((ROWS,), 50, device="cuda"), top_p=torch.full((ROWS,), 0.95, device="cuda"),
        min_p=torch.full((ROWS,), 0.02, device="cuda"),
        is_greedy=torch.zeros(ROWS, dtype=torch.bool, device="cuda"),
        plan=StepPlan(slots=torch.tensor(slots, device="cuda"), betas=torch.full((ROWS,), 1.0, device="cuda"),
                      any_active=True, layout=slot_layout(slots, None, "cuda")),
        source=torch.randn(ROWS, H, generator=gen).bfloat16().cuda(),
        target=torch.randn(ROWS, H, generator=gen).bfloat16().cuda(),
        probs=torch.softmax(logits, -1))


def _step(ex: Explorer, batch: StepBatch) -> None:
    explore_batch(ex, batch, lambda: batch.probs.argmax(-1))  # the engine's draw: no host read


def _warm_up(ex: Explorer) -> None:
    """One step and one release, so that lazy initialisation is not inside the race window."""
    slot = ex.join_group("warm-up")
    _step(ex, _batch(slot, 0))
    ex.leave_group("warm-up")
    torch.cuda.synchronize()


def test_a_reset_on_the_scheduler_stream_waits_for_the_step_queued_on_the_forward_stream():
    ex = _explorer(training=False)  # frozen: no training for the reset to wait behind
    _warm_up(ex)
    slot = ex.join_group("finished")
    batch = _batch(slot, 1)
    torch.cuda.synchronize()
    forward, scheduler = torch.cuda.Stream(), torch.cuda.Stream()
    step_end = torch.cuda.Event()
    with torch.cuda.stream(forward):
        _sleep_ms(WINDOW_MS)  # the step's writes land only after this
        _step(ex, batch)
        step_end.record()
    with torch.cuda.stream(scheduler):
        assert ex.leave_group("finished") == slot
    window_open = not step_end.query()
    torch.cuda.synchronize()
    assert window_open, "the step completed before the reset was queued: widen WINDOW_MS"
    assert torch.count_nonzero(ex.telemetry.counters[slot]) == 0  # the step's telemetry was reset
    assert torch.count_nonzero(ex.gate.count[slot]) == 0  # and its gate
    assert ex.join_group("next") == slot
    t = ex.report("next")
    assert t["predictions"] == 0 and t["gate_r2"] is None  # nothing inherited
    ex.close()


def test_the_next_step_on_the_forward_stream_waits_for_a_reset_on_the_scheduler_stream():
    ex = _explorer()  # training on: a side stream, a third one
    _warm_up(ex)
    slot = ex.join_group("finished")
    _step(ex, _batch(slot, 1))
    torch.cuda.synchronize()
    forward, scheduler = torch.cuda.Stream(), torch.cuda.Stream()
    reset_end = torch.cuda.Event()
    with torch.cuda.stream(scheduler):
        _sleep_ms(WINDOW_MS)  # the reset lands only after this
        assert ex.leave_group("finished") == slot
        reset_end.record()
    assert ex.join_group("next") == slot
    with torch.cuda.stream(forward):
        _step(ex, _batch(slot, 2))
    window_open = not reset_end.query()
    torch.cuda.synchronize()
    assert window_open, "the reset completed before the step was queued: widen WINDOW_MS"
    t = ex.report("next")
    assert t["predictions"] == ROWS and t["steps_trained"] == 1  # written after the reset, kept
    ex.close()


def test_a_wait_from_a_second_stream_keeps_the_first_streams_prediction_behind_training():
    # A long training: ~2 ms of GPU time per optimiser step against ~0.25 ms of host time to queue
    # it, so the prediction is queued while the side stream is still training.
    hidden, rows = 2048, 32_768
    bank = DistillerBank(2, hidden, 256, "cuda", seed=0)
    trainer = TestTimeTrainer(bank, Telemetry(2, hidden, "cuda"), mode="cuda_stream",
                              steps_per_decode=20)
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(rows, hidden, device="cuda", generator=gen)
    y = torch.randn(rows, hidden, device="cuda", generator=gen)
    slots = torch.zeros(rows, dtype=torch.int64, device="cuda")
    train_plan = slot_layout([0] * rows, None, "cuda").train
    probe = torch.randn(32, hidden, device="cuda", generator=gen)
    probe_plan = slot_layout([0] * 32, None, "cuda")
    probe_slot_ids = torch.zeros(32, dtype=torch.int64, device="cuda")
    torch.cuda.synchronize()
    forward, scheduler = torch.cuda.Stream(), torch.cuda.Stream()
    with torch.cuda.stream(forward):
        trainer.schedule(x, y, slots, torch.ones(rows, dtype=torch.bool, device="cuda"),
                         layout=train_plan)
    with torch.cuda.stream(scheduler):
        trainer.wait()  # e.g. a slot reset
        trainer.wait()  # a second call site on the same stream
    with torch.cuda.stream(forward):
        trainer.wait()  # the next prediction
        racing = bank(probe, probe_slot_ids, layout=probe_plan)
    torch.cuda.synchronize()
    with torch.cuda.stream(forward):  # the same kernels on the same stream, after everything
        settled = bank(probe, probe_slot_ids, layout=probe_plan)
    torch.cuda.synchronize()
    # The prediction saw all 20 optimiser steps (one Adam step moves it by far more than this).
    assert torch.allclose(racing, settled, rtol=1e-5, atol=1e-6)
    trainer.close()


def test_a_read_before_any_step_completed_waits_for_the_step_on_its_own_stream():
    _warm_up(_explorer(training=False))  # a separate Explorer: this one has no completed step
    ex = _explorer(training=False)
    slot = ex.join_group("g")
    batch = _batch(slot, 1)
    torch.cuda.synchronize()
    forward = torch.cuda.Stream()
    step_end = torch.cuda.Event()
    with torch.cuda.stream(forward):
        _sleep_ms(WINDOW_MS)
        _step(ex, batch)
        step_end.record()
    window_open = not step_end.query()
    t = ex.report("g")  # from the default stream, which ran nothing of the step
    assert window_open, "the step completed before the read: widen WINDOW_MS"
    assert t["predictions"] == ROWS
    ex.close()
