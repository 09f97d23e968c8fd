"""Prefill warm start and the SVD template."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import esamp_sgl.core.warm_start as ws
from esamp_sgl.core.config import ESampConfig
from esamp_sgl.core.distiller import DistillerBank
from esamp_sgl.core.explorer import Explorer
from esamp_sgl.core.warm_start import ffn_linear_map, svd_template

H = 24


def _prompt_pairs(n, gen):
    """A prompt's (source, target) pairs: one fixed map shared by every position of the prompt."""
    basis, _ = torch.linalg.qr(torch.randn(H, H, generator=gen))
    mix = torch.eye(H) + 2.0 * basis[:, :6] @ basis[:, 6:12].T
    x = F.layer_norm(torch.randn(n, H, generator=gen), (H,))
    return x, F.layer_norm(x @ mix, (H,))


def _explorer(**kw):
    cfg = ESampConfig(**{"rank": 8, "max_groups": 3, "prefill_warm_start": True, **kw})
    return Explorer(cfg, H, torch.randn(50, H, generator=torch.Generator().manual_seed(1)))


def test_prefill_warm_start_lowers_error_on_held_out_pairs_of_the_prompt():
    gen = torch.Generator().manual_seed(0)
    x, y = _prompt_pairs(40, gen)
    train, held = slice(0, 30), slice(30, 40)
    ex = _explorer()
    s = ex.join_group("p")
    other = ex.join_group("q")
    slots = torch.full((10,), s)

    def held_out_error():
        ex.trainer.wait()
        return float((ex.bank(x[held], slots) - y[held]).square().mean())

    other_before = ex.bank.slot_params(other)
    before = held_out_error()
    assert ex.warm_start_group("p", x[train], y[train])
    after = held_out_error()
    assert after < 0.8 * before  # measured: 0.50 -> 0.34 with 30 pairs, 50 steps at lr 3e-3
    snap = ex.report("p")
    assert snap["warm_start_steps"] == 50
    assert snap["warm_start_loss_after"] < snap["warm_start_loss_before"]
    assert snap["steps_trained"] == 0  # decode-time counters are separate
    for k, v in ex.bank.slot_params(other).items():
        assert torch.equal(v, other_before[k])
    # Once per group; the optimiser state carries over into decode training.
    assert not ex.warm_start_group("p", x[train], y[train])
    assert float(ex.trainer.step_count[s]) == 50.0


def test_prefill_warm_start_is_a_no_op_when_off_or_without_slot():
    gen = torch.Generator().manual_seed(1)
    x, y = _prompt_pairs(8, gen)
    ex = _explorer(prefill_warm_start=False)
    s = ex.join_group("p")
    before = ex.bank.slot_params(s)
    assert not ex.warm_start_group("p", x, y)
    assert not _explorer().warm_start_group("never-acquired", x, y)
    for k, v in ex.bank.slot_params(s).items():
        assert torch.equal(v, before[k])


def _ffn(inter, gen):
    return (torch.randn(inter, H, generator=gen) / H ** 0.5,
            torch.randn(inter, H, generator=gen) / H ** 0.5,
            torch.randn(H, inter, generator=gen) / inter ** 0.5)


def test_ffn_linear_map_is_the_row_vector_ffn_without_its_nonlinearity():
    gen = torch.Generator().manual_seed(2)
    w_gate, w_up, w_down = _ffn(40, gen)
    up = torch.nn.Linear(H, 40, bias=False)
    down = torch.nn.Linear(40, H, bias=False)
    with torch.no_grad():
        up.weight.copy_(0.5 * (w_gate + w_up))
        down.weight.copy_(w_down)
    x = torch.randn(7, H, generator=gen)
    with torch.no_grad():
        want = down(up(x))  # the FFN with SiLU(gate) ⊙ up replaced by the averaged projection
    m = ffn_linear_map(w_gate, w_up, w_down)
    assert torch.allclose(x @ m, want, atol=1e-5)
    assert not torch.allclose(x @ m.T, want, atol=1e-2)  # the reference's transposed map


@pytest.mark.parametrize("exact_max", [4096, 8])  # exact SVD, and the randomised low-rank path
def test_svd_template_residual_is_the_best_rank_r_map(monkeypatch, exact_max):
    monkeypatch.setattr(ws, "_EXACT_SVD_MAX", exact_max)
    gen = torch.Generator().manual_seed(3)
    w_gate, w_up, w_down = _ffn(6, gen)  # rank(M) <= 6
    m = ffn_linear_map(w_gate, w_up, w_down)
    bank = DistillerBank(2, H, 6, "cpu", 0)
    bank.load_template(svd_template(w_gate, w_up, w_down, bank.rank))
    x = torch.randn(9, H, generator=gen)
    out = bank(x, torch.zeros(9, dtype=torch.int64))
    assert torch.allclose(out, F.layer_norm(x + x @ m, (H,)), atol=1e-4)
    assert not torch.allclose(out, F.layer_norm(x + x @ m.T, (H,)), atol=1e-2)
    # Rank 3 < rank(M): the residual's singular values are M's top three.
    init = svd_template(w_gate, w_up, w_down, 3)
    r3 = (init.a * F.silu(torch.tensor(1.0))) @ init.b
    want = torch.linalg.svdvals(m)[:3]
    got = torch.linalg.svdvals(r3)[:3]
    assert torch.allclose(got, want, rtol=1e-3, atol=1e-5)


def test_explorer_svd_warm_start_only_when_enabled_and_before_groups():
    gen = torch.Generator().manual_seed(4)
    w_gate, w_up, w_down = _ffn(12, gen)
    off = _explorer()
    assert not off.load_svd_template(w_gate, w_up, w_down)
    on = _explorer(svd_warm_start=True)
    assert on.load_svd_template(w_gate, w_up, w_down)
    s = on.join_group("g")
    assert torch.equal(on.bank.params["b"][s], on.bank.template["b"])
    assert float(on.bank.template["ag"][:, 8:].abs().sum()) == 0.0  # G = 0
    with pytest.raises(RuntimeError, match="before any group"):
        on.load_svd_template(w_gate, w_up, w_down)


def test_shape_errors_are_explicit():
    gen = torch.Generator().manual_seed(5)
    w_gate, w_up, w_down = _ffn(12, gen)
    with pytest.raises(ValueError, match=r"down projection must be \[H, I\]"):
        ffn_linear_map(w_gate, w_up, w_down.T)
    with pytest.raises(ValueError, match="same shape"):
        ffn_linear_map(w_gate[:5], w_up, w_down)


# -- the warm start as one host-planned group (issue 21, defect 2) ----------------------------------
def _hand_adam_warm_start(ex, slot, x, y, steps, lr):
    """The reference: the slot's parameters as autograd leaves, torch.optim.Adam on the mean over
    positions of mean_H (f(x) − y)²."""
    params = {k: v.unsqueeze(0).clone().requires_grad_() for k, v in ex.bank.slot_params(slot).items()}
    opt = torch.optim.Adam(params.values(), lr=lr, eps=ex.config.adam_eps)
    for _ in range(steps):
        opt.zero_grad()
        loss = (ex.bank.arch.forward(x.unsqueeze(0), params) - y).square().mean()
        loss.backward()
        opt.step()
    return {k: v.detach().squeeze(0) for k, v in params.items()}


def test_warm_start_result_equals_hand_written_adam_and_the_per_position_path():
    gen = torch.Generator().manual_seed(11)
    x, y = _prompt_pairs(6, gen)
    kw = dict(optimizer="adam", weight_decay=0.0, grad_clip=0.0, warm_start_steps=4, warm_start_lr=1e-2)
    ex, old = _explorer(**kw), _explorer(**kw)
    s, s_old = ex.join_group("p"), old.join_group("p")
    expected = _hand_adam_warm_start(ex, s, x, y, 4, 1e-2)
    assert ex.warm_start_group("p", x, y)
    # The old path: per-row slots and a plan read back from the device.
    old.trainer.schedule(x, y, torch.full((6,), s_old), torch.ones(6, dtype=torch.bool), steps=4, lr=1e-2,
                         warm=True)
    old.trainer.wait()  # a reader of the bank waits for training in flight
    for k, v in ex.bank.slot_params(s).items():
        torch.testing.assert_close(v, expected[k], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(v, old.bank.slot_params(s_old)[k], atol=1e-5, rtol=1e-5)
    # The fit that seeds the gate, by hand: R² = 1 − mean SSE / mean SST around the mean target.
    h_hat = ex.bank.arch.forward(x.unsqueeze(0), {k: v.unsqueeze(0) for k, v in expected.items()})[0]
    sse = (h_hat - y).square().sum(-1).mean()
    sst = (y - y.mean(0)).square().sum(-1).mean()
    torch.testing.assert_close(ex.gate.ema_sse[s], sse, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ex.gate.ema_sst[s], sst, atol=1e-5, rtol=1e-5)
    assert ex.report("p")["warm_start_r2"] == pytest.approx(float(1 - sse / sst), abs=1e-5)
    assert ex.report("p")["warm_start_failed"] is False


def test_warm_start_reads_nothing_on_the_host_and_its_launches_do_not_grow_with_the_prompt():
    from esamp_sgl.bench.opcount import warm_start_counts

    small = warm_start_counts(positions=8, hidden=H, rank=8, steps=3, path="static")
    large = warm_start_counts(positions=64, hidden=H, rank=8, steps=3, path="static")
    assert small["host_reads"] == 0 and large["host_reads"] == 0
    assert small["ops"] == large["ops"]


def test_prompt_plan_is_one_entry_of_the_slot_built_from_host_values():
    plan = ws.prompt_plan(2, 5, "cpu")
    assert plan.layout.entries == [2] and plan.layout.width == 5 and plan.layout.train is plan.layout
    assert plan.slots.tolist() == [2] * 5 and bool(plan.layout.member.all())
    assert plan.layout.gather.tolist() == list(range(5))


def test_a_failed_warm_start_leaves_the_slot_at_init_and_says_so():
    gen = torch.Generator().manual_seed(12)
    x, y = _prompt_pairs(6, gen)
    ex = _explorer()
    s = ex.join_group("p")
    init = ex.bank.slot_params(s)
    with pytest.raises(ValueError, match=r"\[positions, 24\]"):
        ex.warm_start_group("p", torch.cat([x, x[:, :4]], 1), torch.cat([y, y[:, :4]], 1))
    assert not ex.needs_warm_start("p")  # not retried
    assert ex.report("p")["warm_start_failed"] is True
    for k, v in ex.bank.slot_params(s).items():
        assert torch.equal(v, init[k])
