"""Distiller bank and the per-slot test-time trainer."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from esamp_core_refs import ref_distill
from esamp_sgl.core import lowrank
from esamp_sgl.core.device import HostReads
from esamp_sgl.core.distiller import DistillerBank
from esamp_sgl.core.lowrank import PARAM_NAMES
from esamp_sgl.core.telemetry import Telemetry
from esamp_sgl.core.trainer import TestTimeTrainer

H, R = 16, 4


def distill(x, p):
    """The low-rank Distiller row by row (one parameter set per row)."""
    return lowrank.forward(x.unsqueeze(1), p).squeeze(1)


def _bank(slots=3, hidden=H, rank=R, seed=0):
    return DistillerBank(slots, hidden, rank, "cpu", seed)


def _trainer(bank, **kw):
    return TestTimeTrainer(bank, Telemetry(bank.slots, bank.hidden), **kw)


def _perturb(bank, seed=1):
    gen = torch.Generator().manual_seed(seed)
    for v in bank.params.values():
        v.add_(torch.randn(v.shape, generator=gen) * 0.3)


def _rows(slots, hidden=H, seed=0):
    gen = torch.Generator().manual_seed(seed)
    n = len(slots)
    return (torch.randn(n, hidden, generator=gen), torch.randn(n, hidden, generator=gen),
            torch.tensor(slots, dtype=torch.int64), torch.ones(n, dtype=torch.bool))


@pytest.mark.parametrize("grouped", [True, False])  # CPU path (rows grouped by slot), GPU path
def test_forward_matches_unbatched_reference_per_row(grouped):
    bank = DistillerBank(3, H, R, "cpu", 0, host_reads=HostReads(free=grouped))
    _perturb(bank)
    x, _, slots, _ = _rows([2, 0, -1, 1, 2, 0])
    out = bank(x, slots)
    assert out.dtype == torch.float32
    for i, s in enumerate(slots.tolist()):
        s = bank.sink if s < 0 else s
        p = {k: v[s] for k, v in bank.params.items()}
        want = ref_distill(x[i], p["ag"], p["b"], p["c"], p["ln_w"], p["ln_b"])
        assert torch.allclose(out[i].double(), want, atol=1e-5)


def test_init_is_layernorm_of_source_plus_a_small_delta_and_bf16_input_ok():
    bank = _bank()
    x = torch.randn(5, H)
    out = bank(x.to(torch.bfloat16), torch.zeros(5, dtype=torch.int64))
    assert out.dtype == torch.float32
    assert (out - F.layer_norm(x, (H,))).abs().max() < 0.1


def test_reset_slots_restores_the_template_only_where_asked():
    bank = _bank()
    _perturb(bank)
    before = bank.slot_params(1)
    bank.reset_slots(torch.tensor([0, 2]))
    for k in PARAM_NAMES:
        assert torch.equal(bank.params[k][0], bank.template[k])
        assert torch.equal(bank.params[k][2], bank.template[k])
        assert torch.equal(bank.params[k][1], before[k])


def test_rank_above_hidden_is_rejected():
    with pytest.raises(ValueError, match=r"esamp_rank must be an integer in \[1, 16\]"):
        DistillerBank(2, 16, 17)


def _rotation_stream(hidden, planes, gen):
    """A linear map the distiller can represent: rows are zero-mean, unit-variance, and the map
    rotates them by 90° in a few planes orthogonal to the all-ones vector (norm-preserving)."""
    basis, _ = torch.linalg.qr(torch.cat([torch.ones(hidden, 1),
                                          torch.randn(hidden, hidden - 1, generator=gen)], 1))
    m = torch.eye(hidden)
    for k in range(planes):
        u, v = basis[:, 1 + 2 * k], basis[:, 2 + 2 * k]
        m = m + torch.outer(u, v) - torch.outer(v, u) - torch.outer(u, u) - torch.outer(v, v)

    def batch(n):
        x = F.layer_norm(torch.randn(n, hidden, generator=gen), (hidden,))
        return x, x @ m
    return batch


def test_distiller_learns_a_linear_map_loss_falls_more_than_10x():
    gen = torch.Generator().manual_seed(0)
    hidden, rank = 32, 8
    stream = _rotation_stream(hidden, planes=4, gen=gen)
    bank = DistillerBank(2, hidden, rank, "cpu", 0)
    trainer = _trainer(bank, lr=3e-3)
    x_test, y_test = stream(256)
    zeros = torch.zeros(256, dtype=torch.int64)

    def loss():
        return float((bank(x_test, zeros) - y_test).square().mean())

    first = loss()
    for _ in range(300):
        x, y = stream(16)
        trainer.schedule(x, y, torch.zeros(16, dtype=torch.int64), torch.ones(16, dtype=torch.bool))
    assert first / loss() > 10
    snap = trainer.telemetry.snapshot(0)
    assert snap["steps_trained"] == 300 and snap["mean_loss"] < first


def _clone_state(trainer):
    return ({k: v.clone() for k, v in trainer.bank.params.items()},
            {k: v.clone() for k, v in trainer.exp_avg.items()},
            {k: v.clone() for k, v in trainer.exp_avg_sq.items()},
            trainer.step_count.clone())


@pytest.mark.parametrize("host_reads_free", [True, False])
@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
def test_slots_outside_the_batch_are_untouched(optimizer, host_reads_free):
    bank = _bank(slots=4)
    trainer = _trainer(bank, optimizer=optimizer, weight_decay=0.1,
                       host_reads=HostReads(free=host_reads_free))
    x, y, slots, valid = _rows([0, 2, 0, -1])
    trainer.schedule(x, y, torch.tensor([1, 1, 1, 1]), valid)  # give slot 1 some state
    params, m, s, t = _clone_state(trainer)
    for _ in range(3):
        trainer.schedule(x, y, slots, valid)
    for k in PARAM_NAMES:
        for slot in (1, 3):
            assert torch.equal(bank.params[k][slot], params[k][slot])
            if trainer.exp_avg:
                assert torch.equal(trainer.exp_avg[k][slot], m[k][slot])
                assert torch.equal(trainer.exp_avg_sq[k][slot], s[k][slot])
        assert not torch.equal(bank.params[k][0], params[k][0])  # the trained slot moved
    assert trainer.step_count.tolist() == [3.0, 1.0, 3.0, 0.0, 0.0]  # per-slot step counts


@pytest.mark.parametrize("host_reads_free", [True, False])
def test_training_slot_a_never_changes_slot_b(host_reads_free):
    x, y, _, valid = _rows([0] * 6, seed=3)
    mixed = torch.tensor([0, 1, 0, 1, 1, 0])
    only_b = torch.tensor([-1, 1, -1, 1, 1, -1])
    a = _trainer(_bank(), host_reads=HostReads(free=host_reads_free))
    b = _trainer(_bank(), host_reads=HostReads(free=host_reads_free))
    for _ in range(4):
        a.schedule(x, y, mixed, valid)
        b.schedule(x, y, only_b, valid)
    for k in PARAM_NAMES:
        assert torch.allclose(a.bank.params[k][1], b.bank.params[k][1], atol=1e-7, rtol=1e-6)
    probe = torch.randn(3, H)
    ones = torch.ones(3, dtype=torch.int64)
    assert torch.allclose(a.bank(probe, ones), b.bank(probe, ones), atol=1e-6)


def test_nonfinite_loss_resets_only_that_slot_and_flags_it():
    x, y, _, valid = _rows([0] * 6, seed=4)
    slots = torch.tensor([0, 1, 0, 1, 2, 2])
    bad_x = x.clone()
    bad_x[0, 3] = float("nan")  # one of slot 0's rows
    a = _trainer(_bank())
    ref = _trainer(_bank())
    for _ in range(2):  # both have some training history first
        a.schedule(x, y, slots, valid)
        ref.schedule(x, y, slots, valid)
    a.schedule(bad_x, y, slots, valid)
    ref.schedule(x, y, torch.tensor([-1, 1, -1, 1, 2, 2]), valid)
    for k in PARAM_NAMES:
        assert torch.equal(a.bank.params[k][0], a.bank.template[k])
        for s in (1, 2):
            assert torch.allclose(a.bank.params[k][s], ref.bank.params[k][s], atol=1e-7)
    assert float(a.step_count[0]) == 0.0 and float(a.exp_avg["ag"][0].abs().sum()) == 0.0
    assert a.telemetry.snapshot(0)["nonfinite_resets"] == 1
    assert a.telemetry.snapshot(1)["nonfinite_resets"] == 0
    # Padding rows (valid = False) may hold garbage without consequence.
    before = {k: v.clone() for k, v in a.bank.params.items()}
    junk = torch.full((2, H), float("inf"))
    a.schedule(junk, junk, torch.tensor([1, 2]), torch.tensor([False, False]))
    for k in PARAM_NAMES:
        assert torch.equal(a.bank.params[k], before[k])


def _torch_reference(params, x, y, opt_name, lr, wd, steps):
    leaves = {k: torch.nn.Parameter(v.clone()) for k, v in params.items()}
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}[opt_name]
    kw = {} if opt_name == "sgd" else {"betas": (0.9, 0.999), "eps": 1e-8}
    opt = cls(list(leaves.values()), lr=lr, weight_decay=wd, **kw)
    n = x.shape[0]
    for _ in range(steps):
        opt.zero_grad()
        pred = distill(x, {k: v.unsqueeze(0).expand(n, *v.shape) for k, v in leaves.items()})
        (pred - y).square().mean(-1).mean().backward()
        opt.step()
    return {k: v.detach() for k, v in leaves.items()}


@pytest.mark.parametrize("host_reads_free", [True, False])  # in-place (CPU) and masked (GPU) update
@pytest.mark.parametrize("optimizer,wd", [("adam", 0.0), ("adam", 0.05), ("adamw", 0.01),
                                          ("sgd", 0.0), ("sgd", 0.02)])
def test_per_slot_optimizer_equals_torch_optim_per_slot(optimizer, wd, host_reads_free):
    bank = _bank(slots=3)
    trainer = _trainer(bank, optimizer=optimizer, lr=1e-2, weight_decay=wd,
                       host_reads=HostReads(free=host_reads_free))
    x, y, _, valid = _rows([0] * 5, seed=6)
    x2, y2, _, _ = _rows([0] * 5, seed=7)
    init = {k: v.clone() for k, v in bank.template.items()}
    for _ in range(3):  # slot 0 first ...
        trainer.schedule(x, y, torch.zeros(5, dtype=torch.int64), valid)
    for _ in range(2):  # ... then slot 2 joins late, slot 0 continues in the same steps
        trainer.schedule(torch.cat([x, x2]), torch.cat([y, y2]),
                         torch.tensor([0] * 5 + [2] * 5), torch.ones(10, dtype=torch.bool))
    # slot 0 saw x,y for 5 steps; slot 2 saw x2,y2 for 2 steps with a fresh bias correction.
    want0 = _torch_reference(init, x, y, optimizer, 1e-2, wd, 5)
    want2 = _torch_reference(init, x2, y2, optimizer, 1e-2, wd, 2)
    for k in PARAM_NAMES:
        assert torch.allclose(bank.params[k][0], want0[k], atol=1e-6, rtol=1e-5), k
        assert torch.allclose(bank.params[k][2], want2[k], atol=1e-6, rtol=1e-5), k


def test_static_and_unique_compaction_train_identically():
    x, y, _, _ = _rows([0] * 8, seed=8)
    slots = torch.tensor([2, 0, 2, -1, 1, 0, 2, -1])
    valid = torch.tensor([True, True, True, False, True, True, False, True])
    a = _trainer(_bank(), host_reads=HostReads(free=True))
    b = _trainer(_bank(), host_reads=HostReads(free=False))
    for _ in range(3):
        a.schedule(x, y, slots, valid)
        b.schedule(x, y, slots, valid)
    for k in PARAM_NAMES:
        assert torch.allclose(a.bank.params[k][:3], b.bank.params[k][:3], atol=1e-6)
    for s in range(3):
        sa, sb = a.telemetry.snapshot(s), b.telemetry.snapshot(s)
        assert sa["steps_trained"] == sb["steps_trained"] == 3
        assert sa["mean_loss"] == pytest.approx(sb["mean_loss"], rel=1e-5)


def test_k_steps_per_decode_step():
    trainer = _trainer(_bank(), steps_per_decode=3)
    x, y, slots, valid = _rows([1, 1, 2])
    trainer.schedule(x, y, slots, valid)
    trainer.schedule(x, y, slots, valid)
    assert trainer.telemetry.snapshot(1)["steps_trained"] == 6
    assert float(trainer.step_count[1]) == 6.0


def test_training_works_inside_inference_mode():
    with torch.inference_mode():
        bank = _bank()
        trainer = _trainer(bank)
        x, y, slots, valid = _rows([0, 0, 1])
        before = bank.slot_params(0)
        trainer.schedule(x, y, slots, valid)
        bank.reset_slots(torch.tensor([1]))
    assert not torch.equal(bank.params["ag"][0], before["ag"])


def test_a_training_cadence_trains_every_kth_step_on_the_last_k_steps_rows():
    """train_every 3: nothing changes for two steps; the third trains once on the three steps' rows,
    exactly as one step of a trainer fed those rows together; a slot freed meanwhile drops its rows."""
    slot_steps = [torch.tensor([0, 1, 0, -1]), torch.tensor([1, 0, 2, 2]), torch.tensor([0, 0, 1, 2])]
    data = [_rows(s.tolist(), seed=i)[:2] for i, s in enumerate(slot_steps)]
    every, once = _bank(), _bank()
    _perturb(every), _perturb(once)
    cadence, single = _trainer(every, train_every=3), _trainer(once)
    start = every.flat.clone()
    for i, (s, (x, y)) in enumerate(zip(slot_steps, data)):
        cadence.schedule(x, y, s, s >= 0)
        if i < 2:
            assert torch.equal(every.flat, start)  # between training steps the parameters hold
    x_all = torch.cat([x for x, _ in data])
    y_all = torch.cat([y for _, y in data])
    s_all = torch.cat(slot_steps)
    single.schedule(x_all, y_all, s_all, s_all >= 0)
    assert torch.allclose(every.flat, once.flat, atol=1e-6)
    assert int(cadence.telemetry.train_steps[0]) == 1  # one optimiser step for the three decode steps

    freed, kept = _bank(), _bank()
    _perturb(freed), _perturb(kept)
    dropping, reference = _trainer(freed, train_every=2), _trainer(kept)
    x0, y0 = data[0]
    dropping.schedule(x0, y0, slot_steps[0], slot_steps[0] >= 0)
    dropping.forget_pending([1])  # slot 1's group left: its kept rows must not train the slot again
    x1, y1 = data[1]
    dropping.schedule(x1, y1, slot_steps[1], slot_steps[1] >= 0)
    s_kept = torch.cat([torch.where(slot_steps[0] == 1, -1, slot_steps[0]), slot_steps[1]])
    reference.schedule(torch.cat([x0, x1]), torch.cat([y0, y1]), s_kept, s_kept >= 0)
    assert torch.allclose(freed.flat, kept.flat, atol=1e-6)
