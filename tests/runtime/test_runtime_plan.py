"""SchedulerState.step_plan: every per-row array and the rows' grouping per slot in one host->device copy."""

from __future__ import annotations

import torch

from esamp_sgl.core.config import ESampConfig, ExploreRequest
from esamp_sgl.core.explorer import Explorer
from esamp_sgl.core.layout import slot_layout
from runtime_patch.rows import BatchRows
from runtime_patch.runtime import SchedulerState


def test_plan_carries_slots_betas_train_and_the_groups_in_one_buffer():
    config = ESampConfig(rank=4, max_groups=4, beta=0.5)
    rt = SchedulerState(config, Explorer(config, 8, torch.randn(40, 8), device="cpu"), taps=None)
    a, frozen = ExploreRequest(group="a", beta=2.0), ExploreRequest(group="b", train=False)
    for rid, req in (("r0", a), ("r2", frozen), ("r3", a)):
        rt.join(rid, req)
    rows = BatchRows(("r0", "x", "r2", "r3"), (a, None, frozen, a))
    plan = rt.step_plan(rows, torch.device("cpu"))
    sa, sb = rt.members["r0"].slot, rt.members["r2"].slot
    assert plan.any_active and plan.slots.tolist() == [sa, -1, sb, sa]
    assert plan.betas.tolist() == [2.0, 0.0, 0.5, 2.0] and plan.train.tolist() == [True, False, False, True]
    want = slot_layout([sa, -1, sb, sa], [True, False, False, True], "cpu")
    g = plan.layout
    assert g.entries == want.entries and g.width == want.width
    for name in ("entry_index", "gather", "weight", "count", "position", "member"):
        assert torch.equal(getattr(g, name), getattr(want, name)), name
    assert g.train.entries == [sa] and g.train.count.tolist() == [2.0]  # group b is frozen
    storages = {t.untyped_storage().data_ptr() for t in (plan.slots, plan.betas, plan.train, *g.buffers())}
    assert len(storages) == 1  # one buffer, one copy
    none = rt.step_plan(BatchRows(("x",), (None,)), torch.device("cpu"))
    assert not none.any_active and none.layout is None
