"""Faults inside ESamp, in-process with the real core: a Distiller that outputs NaN/inf for one group.

The poisoned group's rows must be sampled stock (bit-identical to the engine's own draw), its
telemetry flagged (`nonfinite_predictions`, status `nonfinite_prediction`) and logged once when the
group ends; the other group must get exactly the tokens, parameters and telemetry it gets when
nothing is poisoned.
"""

from __future__ import annotations

import logging

import pytest
import torch

from esamp_sgl.core.candidates import stock_sample
from esamp_sgl.core.config import ESampConfig, ExploreRequest
from esamp_sgl.core.explorer import Explorer
from esamp_sgl.core.plan import StepPlan
from esamp_sgl.core.step import StepBatch, explore_batch
from runtime_patch.runtime import SchedulerState

H, V = 16, 300
ROWS_PER_GROUP = 2


pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


def _runtime() -> SchedulerState:
    config = ESampConfig(rank=8, max_groups=4, fit_gate=False)  # steering on from the first step; the gate has its own tests
    lm_head = torch.randn(V, H, generator=torch.Generator().manual_seed(123))
    # The taps are only used by the SGLang sampler to split the captured states; not needed here.
    return SchedulerState(config, Explorer(config, H, lm_head, device="cpu"), taps=None)


def _batch(gen: torch.Generator, slots: list[int]) -> StepBatch:
    rows = len(slots)
    temps = torch.full((rows,), 0.9)
    logits = torch.randn(rows, V, generator=gen) * 3 / temps[:, None]
    slots_t = torch.tensor(slots, dtype=torch.int64)
    return StepBatch(
        logits=logits, temperatures=temps, top_k=torch.full((rows,), 50), top_p=torch.full((rows,), 0.95),
        min_p=torch.full((rows,), 0.01), is_greedy=torch.zeros(rows, dtype=torch.bool),
        plan=StepPlan(slots=slots_t, betas=torch.full((rows,), 1.0), any_active=True),
        source=torch.randn(rows, H, generator=gen),
        target=torch.randn(rows, H, generator=gen), probs=torch.softmax(logits, -1))


def _stock(batch: StepBatch, gen: torch.Generator):
    return lambda: stock_sample(batch.probs, batch.top_k, batch.top_p, batch.min_p, gen)


def _run(poison: float | None, steps: int = 3):
    """Two groups ('bad', 'good') plus one stock row for `steps` decode steps; the bad group's
    Distiller parameters are overwritten with `poison` before the first step. Returns the
    runtime, per-step (tokens, stock reference) and the good group's final parameters."""
    runtime = _runtime()
    ex = runtime.explorer
    for rid, group in (("bad-0", "bad"), ("bad-1", "bad"), ("good-0", "good"), ("good-1", "good")):
        runtime.join(rid, ExploreRequest(group=group))
    bad, good = ex.groups.slot_of("bad"), ex.groups.slot_of("good")
    if poison is not None:
        with torch.no_grad():
            for tensor in ex.bank.params.values():
                tensor[bad].fill_(poison)
    slots = [bad] * ROWS_PER_GROUP + [good] * ROWS_PER_GROUP + [-1]
    data, stock_gen, ref_gen = (torch.Generator().manual_seed(s) for s in (7, 11, 11))
    history = []
    for _ in range(steps):
        batch = _batch(data, slots)
        tokens = explore_batch(ex, batch, _stock(batch, stock_gen))
        history.append((tokens, _stock(batch, ref_gen)()))
    ex.trainer.wait()  # a reader of the bank waits for the training in flight (cpu_thread)
    good_params = {k: v.clone() for k, v in ex.bank.slot_params(good).items()}
    return runtime, history, good_params


@pytest.mark.parametrize("poison", [float("nan"), float("inf"), -float("inf")])
def test_a_nonfinite_distiller_falls_back_to_stock_for_its_group_only(poison, caplog):
    runtime, history, good_params = _run(poison)
    control_runtime, control_history, control_good = _run(None)
    bad_rows, good_rows = slice(0, ROWS_PER_GROUP), slice(ROWS_PER_GROUP, 2 * ROWS_PER_GROUP)

    # Step 1: the poisoned group's rows and the stock row are exactly the engine's stock draw.
    tokens, stock = history[0]
    assert torch.equal(tokens[bad_rows], stock[bad_rows]) and tokens[-1] == stock[-1]
    # The other group is unaffected: same tokens every step, same trained parameters.
    for (tokens, _), (control_tokens, _) in zip(history, control_history):
        assert torch.equal(tokens[good_rows], control_tokens[good_rows])
    for name, value in good_params.items():
        assert torch.equal(value, control_good[name]), name

    ex = runtime.explorer
    bad = ex.report("bad")
    good = ex.report("good")
    assert bad["nonfinite_predictions"] == ROWS_PER_GROUP  # only step 1: its loss reset the Distiller
    assert bad["nonfinite_resets"] == 1
    steps = len(history)
    assert bad["tokens_reweighted"] == ROWS_PER_GROUP * (steps - 1)  # recovered after the reset
    assert good["nonfinite_predictions"] == 0 and good["nonfinite_resets"] == 0
    assert good["tokens_reweighted"] == ROWS_PER_GROUP * steps
    assert good == {**control_runtime.explorer.report("good")}

    # Runtime view: flagged status, and one warning for the group when its last member leaves.
    with caplog.at_level(logging.WARNING, logger="esamp_sgl.runtime"):
        first = runtime.leave("bad-0")
        last = runtime.leave("bad-1")
        goods = [runtime.leave("good-0"), runtime.leave("good-1")]
    assert first["status"] == last["status"] == "nonfinite_prediction"
    assert {t["status"] for t in goods} == {"ok"}
    warnings = [r.getMessage() for r in caplog.records if "non-finite" in r.getMessage()]
    assert len(warnings) == 1 and "'bad'" in warnings[0], warnings
    assert last["server"]["slots_in_use"] == 1 and goods[-1]["server"]["slots_in_use"] == 0


def test_a_reset_slot_is_clean_for_the_next_group():
    """After a poisoned group ends, the next group that gets its slot starts from a finite init."""
    runtime, _, _ = _run(float("nan"), steps=1)
    bad_slot = runtime.explorer.groups.slot_of("bad")
    for rid in ("good-0", "good-1", "bad-0", "bad-1"):  # the bad slot is freed last: reused first
        runtime.leave(rid)
    runtime.join("next", ExploreRequest(group="next"))
    slot = runtime.explorer.groups.slot_of("next")
    assert slot == bad_slot
    assert all(torch.isfinite(v).all() for v in runtime.explorer.bank.slot_params(slot).values())
    assert runtime.explorer.report("next")["nonfinite_predictions"] == 0
