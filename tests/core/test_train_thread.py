"""Training on the CPU's worker thread (train_mode cpu_thread): the same Distillers as inline training,
every reader waits for the step in flight, its errors surface, and `auto` picks it only with a core spare."""

from __future__ import annotations

import os
import threading
import time

import pytest
import torch

from esamp_sgl.core.candidates import stock_sample
from esamp_sgl.core.config import ESampConfig
from esamp_sgl.core.explorer import Explorer, resolve_train_mode
from esamp_sgl.core.plan import StepPlan
from esamp_sgl.core.step import StepBatch, explore_batch
from esamp_sgl.core.trainer import TestTimeTrainer
from esamp_sgl.launch.parallel import parallel_env

H, V, ROWS = 16, 200, 8


def _explorer(mode: str, profile: str = "paper", **kw) -> Explorer:
    if profile == "bounded":
        kw.setdefault("rank", 8)  # at most the hidden size
    cfg = ESampConfig(profile=profile, max_groups=3, train_mode=mode, seed=7, **kw)
    w = torch.randn(V, H, generator=torch.Generator().manual_seed(5))
    return Explorer(cfg, H, w, device="cpu")


def _batch(gen: torch.Generator, slots: list[int]) -> StepBatch:
    rows = len(slots)
    logits = torch.randn(rows, V, generator=gen) * 2
    return StepBatch(
        logits=logits, temperatures=torch.ones(rows), top_k=torch.full((rows,), 1 << 30),
        top_p=torch.ones(rows), min_p=torch.full((rows,), 0.05), is_greedy=torch.zeros(rows, dtype=torch.bool),
        plan=StepPlan(slots=torch.tensor(slots), betas=torch.full((rows,), 0.5), any_active=True,
                      rules="contrastive"),
        source=torch.randn(rows, H, generator=gen), target=torch.randn(rows, H, generator=gen),
        probs=torch.softmax(logits, -1))


def _run_steps(ex: Explorer, steps: int) -> list[list[int]]:
    slots = [ex.join_group("a")] * 4 + [ex.join_group("b")] * 4
    data, stock_gen = torch.Generator().manual_seed(11), torch.Generator().manual_seed(12)
    tokens = []
    for _ in range(steps):
        batch = _batch(data, slots)
        tokens.append(explore_batch(ex, batch, lambda: stock_sample(
            batch.probs, batch.top_k, batch.top_p, batch.min_p, stock_gen)).tolist())
    return tokens


@pytest.mark.parametrize("profile", ["paper", "bounded"])
def test_the_training_thread_trains_and_samples_exactly_as_inline_training(profile):
    inline, thread = _explorer("sync", profile), _explorer("cpu_thread", profile)
    assert thread.trainer.mode == "cpu_thread"
    try:
        assert _run_steps(inline, 6) == _run_steps(thread, 6)  # each prediction saw the same parameters
        thread.trainer.wait()
        assert torch.equal(inline.bank.flat, thread.bank.flat)
        assert torch.equal(inline.trainer.exp_avg_sq_flat, thread.trainer.exp_avg_sq_flat)
        assert torch.equal(inline.telemetry.counters, thread.telemetry.counters)
        assert inline.report("a")["steps_trained"] == thread.report("a")["steps_trained"] == 6
    finally:
        inline.close(), thread.close()


def _slow_training(trainer: TestTimeTrainer, monkeypatch, seconds: float = 0.3) -> threading.Event:
    """Each training step starts `seconds` late, on the worker; the event is set when one finished."""
    done = threading.Event()
    run = trainer._run

    def late(*args, **kwargs):
        time.sleep(seconds)
        run(*args, **kwargs)
        done.set()

    monkeypatch.setattr(trainer, "_run", late)
    return done


def test_readers_wait_for_the_step_in_flight(monkeypatch):
    ex = _explorer("cpu_thread")
    try:
        _run_steps(ex, 1)
        done = _slow_training(ex.trainer, monkeypatch)
        _run_steps(ex, 1)  # the same groups: their second step, still training on the worker
        assert not done.is_set()
        assert ex.report("a")["steps_trained"] == 2  # the report waited for it
        assert done.is_set()
        # A group that leaves while its step trains is reset after that step, not before it.
        done.clear()
        _run_steps(ex, 1)
        assert not done.is_set()
        slot = ex.groups.slot_of("b")
        for _ in range(ex.groups.members("b")):  # one member per _run_steps call; the last frees it
            freed = ex.leave_group("b")
        assert freed == slot and done.is_set()
        assert torch.equal(ex.bank.flat[slot], ex.bank.template_flat)
        assert ex.telemetry.counters[slot].abs().sum() == 0
        assert ex.trainer.step_count[slot] == 0
    finally:
        ex.close()


def test_an_error_on_the_training_thread_fails_the_next_step_not_a_report_or_a_reset(monkeypatch):
    ex = _explorer("cpu_thread")
    try:
        def broken(*args, **kwargs):
            raise RuntimeError("out of memory (test)")

        monkeypatch.setattr(ex.trainer, "_train", broken)
        _run_steps(ex, 1)
        ex.trainer.wait()  # a reset's or a report's wait (SGLang's request path) does not raise
        assert ex.report("a")["steps_trained"] == 0
        with pytest.raises(RuntimeError, match="out of memory"):
            _run_steps(ex, 1)  # the next step's prediction raises it (inside the sampler's guard)
        monkeypatch.undo()
        _run_steps(ex, 1)  # raised once; the trainer goes on
        assert ex.report("a")["steps_trained"] == 1
    finally:
        monkeypatch.undo()
        ex.close()


def test_auto_trains_on_a_thread_only_where_torch_leaves_a_core_free():
    cores = len(os.sched_getaffinity(0))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(cores)
        assert resolve_train_mode("auto", torch.device("cpu")) == "sync"
        if cores > 1:
            torch.set_num_threads(cores - 1)
            assert resolve_train_mode("auto", torch.device("cpu")) == "cpu_thread"
    finally:
        torch.set_num_threads(before)
    assert resolve_train_mode("auto", torch.device("cuda")) == "cuda_stream"
    with pytest.raises(ValueError, match="esamp_train_mode 'cpu_thread' needs a CPU device"):
        resolve_train_mode("cpu_thread", torch.device("cuda"))
    with pytest.raises(ValueError, match="esamp_train_mode 'cuda_stream' needs a CUDA device"):
        resolve_train_mode("cuda_stream", torch.device("cpu"))


def test_cpu_ranks_that_share_the_cores_train_inline():
    env = parallel_env(dp_size=2, on_cpu=True, esamp=True, base={})
    assert env["ESAMP_SGL_TRAIN_MODE"] == "sync"  # every core is a rank's: no core for a thread
    assert "ESAMP_SGL_TRAIN_MODE" not in parallel_env(dp_size=1, on_cpu=True, esamp=True, base={})
    assert parallel_env(dp_size=2, on_cpu=True, esamp=True,
                        base={"ESAMP_SGL_TRAIN_MODE": "cpu_thread"})["ESAMP_SGL_TRAIN_MODE"] == "cpu_thread"
