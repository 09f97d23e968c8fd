"""The host-side plan (rows grouped per slot), the grouped Distiller/trainer, and the static-shape
(CUDA) path run on CPU: same results as the CPU path, and no host read inside the step."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import esamp_sgl.core.distiller as distiller_mod
import esamp_sgl.core.layout as plan_mod
import esamp_sgl.core.step as step_mod
import esamp_sgl.core.trainer as trainer_mod
from esamp_core_refs import ref_distill
from esamp_sgl.core.candidates import stock_sample
from esamp_sgl.core.config import ESampConfig
from esamp_sgl.core.device import HostReads
from esamp_sgl.core.distiller import DistillerBank
from esamp_sgl.core.explorer import Explorer
from esamp_sgl.core.layout import slot_layout, to_device
from esamp_sgl.core.plan import StepPlan
from esamp_sgl.core.step import StepBatch, explore_batch
from esamp_sgl.core.telemetry import Telemetry
from esamp_sgl.core.trainer import TestTimeTrainer

H, V = 16, 300


def test_plan_layout_groups_rows_per_slot_with_padding_from_the_same_group():
    slots = [2, 0, 2, -1, 1, 0, 2, -1]
    train = [True, True, False, True, True, True, True, False]
    g = slot_layout(slots, train, "cpu")
    assert g.entries == [0, 1, 2] and g.width == 3 and g.rows == 8
    assert g.entry_index.tolist() == [0, 1, 2] and g.count.tolist() == [2.0, 1.0, 3.0]
    assert g.member.tolist() == [s >= 0 for s in slots]
    gather, weight = g.gather.tolist(), g.weight.reshape(-1).tolist()
    for row, slot in enumerate(slots):
        if slot >= 0:
            pos = int(g.position[row])
            assert gather[pos] == row and weight[pos] == 1.0 and pos // g.width == g.entries.index(slot)
    for pos, (row, w) in enumerate(zip(gather, weight)):
        if w == 0.0:  # padding repeats a row of its own entry
            assert slots[row] == g.entries[pos // g.width]
    t = g.train  # rows 2 and 7 do not train (7 has no slot anyway)
    assert t.entries == [0, 1, 2] and t.count.tolist() == [2.0, 1.0, 2.0]
    assert sorted(r for r, w in zip(t.gather.tolist(), t.weight.reshape(-1).tolist()) if w) == [0, 1, 4, 5, 6]
    assert slot_layout([-1, -1], None, "cpu") is None
    assert slot_layout([0, 1], [False, False], "cpu").train is None
    every = slot_layout([0, 1], None, "cpu")
    assert every.train is every  # every row with a slot trains: one layout


def test_to_device_packs_every_array_into_one_buffer():
    arrays = [np.arange(3, dtype=np.int64), np.array([0.5, 1.5], dtype=np.float32),
              np.array([True, False, True]), np.arange(4, dtype=np.int64).reshape(2, 2)]
    out = to_device(arrays, "cpu")
    for a, t in zip(arrays, out):
        assert t.shape == a.shape and t.numpy().tolist() == a.tolist()
    assert len({t.untyped_storage().data_ptr() for t in out}) == 1


def test_grouped_forward_with_a_plan_matches_the_reference_and_zeroes_rows_without_slot():
    bank = DistillerBank(3, H, 4, "cpu", 0, host_reads=HostReads(free=False))
    gen = torch.Generator().manual_seed(1)
    bank.flat.add_(torch.randn(bank.flat.shape, generator=gen) * 0.3)
    slots = [2, 0, -1, 1, 2, 0, 2]
    x = torch.randn(len(slots), H, generator=gen)
    out = bank(x.to(torch.bfloat16).float(), torch.tensor(slots), layout=slot_layout(slots, None, "cpu"))
    per_row = bank(x.to(torch.bfloat16).float(), torch.tensor(slots))  # per-row gather fallback
    for i, s in enumerate(slots):
        if s < 0:
            assert torch.equal(out[i], torch.zeros(H))
            continue
        p = {k: v[s] for k, v in bank.params.items()}
        want = ref_distill(x[i].to(torch.bfloat16).float(), p["ag"], p["b"], p["c"], p["ln_w"], p["ln_b"])
        assert torch.allclose(out[i].double(), want, atol=1e-5)
        assert torch.allclose(out[i], per_row[i], atol=1e-6)


def _trainers(**kw):
    def make(static):
        bank = DistillerBank(4, H, 4, "cpu", 0)
        return TestTimeTrainer(bank, Telemetry(4, H), host_reads=HostReads(free=not static), **kw)
    return make(False), make(True)


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
def test_static_trainer_with_a_host_plan_equals_the_cpu_trainer(optimizer):
    cpu, static = _trainers(optimizer=optimizer, weight_decay=0.01, lr=1e-2)
    gen = torch.Generator().manual_seed(2)
    slots = [2, 0, 2, -1, 1, 0, 2, -1]
    train = torch.tensor([True, True, False, True, True, True, True, True])
    for _ in range(4):
        x, y = torch.randn(8, H, generator=gen), torch.randn(8, H, generator=gen)
        valid = train & (torch.tensor(slots) >= 0)
        cpu.schedule(x, y, torch.tensor(slots), valid)
        g = slot_layout(slots, train.numpy(), "cpu")
        static.schedule(x, y, torch.tensor(slots), valid, layout=g.train)
    assert torch.allclose(cpu.bank.flat, static.bank.flat, atol=1e-6)
    assert torch.equal(cpu.step_count, static.step_count)
    assert cpu.step_count.tolist() == [4.0, 4.0, 4.0, 0.0, 0.0]
    if optimizer != "sgd":
        assert torch.allclose(cpu.exp_avg_sq_flat, static.exp_avg_sq_flat, atol=1e-9)
    for s in range(3):
        a, b = cpu.telemetry.snapshot(s), static.telemetry.snapshot(s)
        assert a["steps_trained"] == b["steps_trained"] == 4
        assert a["mean_loss"] == pytest.approx(b["mean_loss"], rel=1e-6)
    # The sink (written by the static path's no-sync non-finite handling) still holds the template.
    assert torch.equal(static.bank.flat[static.bank.sink], static.bank.template_flat)


def test_static_trainer_resets_a_nonfinite_slot_without_touching_the_others():
    cpu, static = _trainers()
    gen = torch.Generator().manual_seed(3)
    slots = [0, 1, 0, 1, 2, 2]
    for step in range(3):
        x, y = torch.randn(6, H, generator=gen), torch.randn(6, H, generator=gen)
        if step == 2:
            x[0, 3] = float("nan")  # one of slot 0's rows
        for tr in (cpu, static):
            tr.schedule(x, y, torch.tensor(slots), torch.ones(6, dtype=torch.bool),
                        layout=slot_layout(slots, None, "cpu").train)
    # The static path collects the slot and resets it with the others every NONFINITE_RESET_EVERY
    # steps (no host read); meanwhile it is not finite, and the other slots are already trained.
    assert not torch.isfinite(static.bank.flat[0]).all() and float(static.nonfinite[0]) == 1.0
    assert torch.allclose(cpu.bank.flat[1:], static.bank.flat[1:], atol=1e-6)
    static.flush_nonfinite()
    for tr in (cpu, static):
        assert torch.equal(tr.bank.flat[0], tr.bank.template_flat)
        assert float(tr.step_count[0]) == 0.0 and float(tr.exp_avg_flat[0].abs().sum()) == 0.0
        assert tr.telemetry.snapshot(0)["nonfinite_resets"] == 1
    assert torch.allclose(cpu.bank.flat, static.bank.flat, atol=1e-6)


class _NoHostRead(TorchDispatchMode):
    """Fails on every aten op that would read the device on the host under CUDA."""

    SYNCING = {"_local_scalar_dense", "nonzero", "_unique2", "unique_dim", "unique_consecutive",
               "masked_select", "bincount", "equal", "is_nonzero", "repeat_interleave"}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in self.SYNCING:
            raise AssertionError(f"host read in the static path: aten.{name}")
        return func(*args, **(kwargs or {}))


def _static_explorer(**kw):
    cfg = ESampConfig(**{"rank": 8, "max_groups": 4, "fit_gate": False, **kw})
    ex = Explorer(cfg, H, torch.randn(V, H, generator=torch.Generator().manual_seed(123)), device="cpu")
    return ex


def _force_static(ex):
    """The CUDA code path on CPU: no candidate trimming, no host reads in training, the per-row
    prediction fallback (a plan is passed, so it is not used)."""
    ex.host_reads.free = False
    return ex


def _batch(gen, slots, train=None, rules="compensated"):
    rows = len(slots)
    logits = torch.randn(rows, V, generator=gen) * 3
    s = torch.tensor(slots)
    return StepBatch(
        logits=logits, temperatures=torch.ones(rows), top_k=torch.full((rows,), 40),
        top_p=torch.full((rows,), 0.95), min_p=torch.full((rows,), 0.02),
        is_greedy=torch.zeros(rows, dtype=torch.bool),
        plan=StepPlan(slots=s, betas=torch.full((rows,), 1.0), any_active=True, rules=rules,
                      train=None if train is None else torch.tensor(train), layout=slot_layout(slots, train, "cpu")),
        source=torch.randn(rows, H, generator=gen), target=torch.randn(rows, H, generator=gen),
        probs=torch.softmax(logits, -1))


def test_static_path_makes_no_host_read_keeps_stock_rows_and_trains_like_the_cpu_path(monkeypatch):
    cpu, static = _static_explorer(), _force_static(_static_explorer())
    for ex in (cpu, static):
        ex.join_group("a"), ex.join_group("b")
    slots = [0, -1, 1, 0, 1, -1, 0, 1]
    train = [True, False, True, True, False, False, True, False]  # group b: one frozen row
    data, g_cpu, g_static, g_ref = (torch.Generator().manual_seed(s) for s in (4, 5, 5, 5))

    def forbidden(*a, **k):
        raise AssertionError("the static path built a plan from the device")
    for _ in range(5):
        batch = _batch(data, slots, train)
        ref = stock_sample(batch.probs, batch.top_k, batch.top_p, batch.min_p, g_ref)
        explore_batch(cpu, batch, lambda: stock_sample(batch.probs, batch.top_k, batch.top_p,
                                                      batch.min_p, g_cpu))
        with monkeypatch.context() as m, _NoHostRead():
            for name in ("layout_from_device", "layout_of_rows"):
                for mod in (plan_mod, step_mod, trainer_mod, distiller_mod):
                    if hasattr(mod, name):
                        m.setattr(mod, name, forbidden)
            tokens = explore_batch(static, batch, lambda: stock_sample(
                batch.probs, batch.top_k, batch.top_p, batch.min_p, g_static))
        stock_rows = [i for i, s in enumerate(slots) if s < 0]
        assert tokens[stock_rows].tolist() == ref[stock_rows].tolist()
    cpu.trainer.wait(), static.trainer.wait()  # a reader of the bank waits for training in flight
    assert torch.allclose(cpu.bank.flat, static.bank.flat, atol=1e-5)
    for key in ("a", "b"):
        a, b = cpu.report(key), static.report(key)
        for field in ("steps_trained", "predictions", "tokens_reweighted"):
            assert a[field] == b[field], field
        assert a["mean_loss"] == pytest.approx(b["mean_loss"], rel=1e-5)
        assert a["mean_novelty"] == pytest.approx(b["mean_novelty"], rel=1e-5)


@pytest.mark.parametrize("distiller,blocks", [("lowrank", 1), ("swiglu", 1), ("swiglu", 2), ("swiglu", 3)])
def test_written_out_backward_equals_autograd_including_padding_and_a_nonfinite_entry(distiller, blocks):
    from esamp_sgl.core.architectures import split_flat

    bank = DistillerBank(4, H, 4, "cpu", 0, distiller=distiller, blocks=blocks)
    distill_padded = bank.arch.forward
    tr = TestTimeTrainer(bank, Telemetry(4, H))
    gen = torch.Generator().manual_seed(9)
    bank.flat.add_(torch.randn(bank.flat.shape, generator=gen) * 0.3)
    slots = [0, 2, 0, 3, 0, 2]
    g = slot_layout(slots, None, "cpu")
    x = torch.randn(6, H, generator=gen)
    x[3, 1] = float("nan")  # slot 3's only row: that entry's loss is NaN
    y = torch.randn(6, H, generator=gen)
    xg = x.index_select(0, g.gather).view(g.size, g.width, H)
    yg = y.index_select(0, g.gather).view(g.size, g.width, H)
    coef = g.weight / g.count.unsqueeze(-1)
    loss, finite, grad = tr._loss_and_grad(xg, yg, g, coef)
    leaf = bank.flat.index_select(0, g.entry_index).requires_grad_(True)
    err = (distill_padded(xg, split_flat(leaf, bank.layout)) - yg).square().mean(-1)
    want_loss = (err * coef).sum(-1)
    torch.where(torch.isfinite(want_loss), want_loss, 0.0).sum().backward()
    ok = torch.isfinite(want_loss)
    assert ok.tolist() == [True, True, False] and torch.equal(finite, ok)
    assert torch.allclose(loss[ok], want_loss[ok].detach(), rtol=1e-6)
    assert torch.allclose(grad[ok], leaf.grad[ok], atol=1e-6, rtol=1e-5)


def test_the_static_trainer_flushes_collected_nonfinite_slots_on_its_cadence(monkeypatch):
    import esamp_sgl.core.trainer as trainer_module

    monkeypatch.setattr(trainer_module, "NONFINITE_RESET_EVERY", 2)
    _, static = _trainers()
    slots = [0, 1]
    x, y = torch.ones(2, H), torch.zeros(2, H)
    x[1, 0] = float("inf")  # slot 1's row
    for step in range(2):
        static.schedule(x, y, torch.tensor(slots), torch.ones(2, dtype=torch.bool),
                        layout=slot_layout(slots, None, "cpu").train)
        if step == 0:
            assert float(static.nonfinite[1]) == 1.0
    assert torch.equal(static.bank.flat[1], static.bank.template_flat) and float(static.nonfinite.sum()) == 0
    assert not torch.equal(static.bank.flat[0], static.bank.template_flat)  # slot 0 trained, not reset


@pytest.mark.parametrize("distiller", ["lowrank", "swiglu"])
def test_predicting_from_the_whole_bank_equals_the_gathered_groups(distiller):
    """Both layouts of the host plan give the same prediction; rows without a slot get 0."""
    from esamp_sgl.core.distiller import distill_bank_blocks, distill_groups

    bank = DistillerBank(5, H, 4, "cpu", 0, distiller=distiller)
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        bank.flat.add_(torch.randn(bank.flat.shape, generator=gen) * 0.1)
    for slots in ([3, -1, 0, 3, 3, 4, -1], [1], [0, 1, 2, 3, 4, 0, 0]):
        x = torch.randn(len(slots), H, generator=gen)
        groups = slot_layout(slots, None, "cpu")
        whole = distill_bank_blocks(x, bank.params, groups, bank.sink, bank.arch.forward)
        gathered = distill_groups(x, bank.gather(groups.entry_index), groups, bank.arch.forward)
        assert torch.allclose(whole, gathered, atol=1e-6)
        assert torch.equal(whole[torch.tensor(slots) < 0], torch.zeros(sum(s < 0 for s in slots), H))
    assert bank.reads_whole_bank(slot_layout([0, 1], None, "cpu"))  # 2 groups of a 6-entry bank
    assert not bank.reads_whole_bank(slot_layout([0], None, "cpu"))
