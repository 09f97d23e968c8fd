"""How the bank's parameters are read for a plan: in place for consecutive slots, else a gather (into a kept
buffer on CPU); every way predicts and trains the same."""

from __future__ import annotations

import torch

from esamp_sgl.core.distiller import DistillerBank
from esamp_sgl.core.layout import layout_from_row_slots
from esamp_sgl.core.telemetry import Telemetry
from esamp_sgl.core.trainer import TestTimeTrainer

H = 12


def _bank(slots: int = 12) -> DistillerBank:
    bank = DistillerBank(slots, H, 8, distiller="swiglu", blocks=2, seed=3)
    with torch.no_grad():  # distinct slots, so that a wrong slot shows
        bank.flat.add_(torch.randn(bank.flat.shape, generator=torch.Generator().manual_seed(4)) * 0.1)
    return bank


def test_consecutive_entries_are_read_in_place_and_others_gathered_into_one_kept_buffer():
    bank = _bank()
    together = layout_from_row_slots(torch.tensor([3, 3, 4, 5, 5]).numpy(), "cpu")
    apart = layout_from_row_slots(torch.tensor([1, 1, 4, 9]).numpy(), "cpu")
    in_place = bank.entry_params(together)
    start = bank.flat[3].data_ptr()
    assert all(v.data_ptr() == start + bank.layout[k][0] * 4 for k, v in in_place.items())  # views: no copy
    first = bank.entry_params(apart, bank._scratch)
    again = bank.entry_params(apart, bank._scratch)
    assert next(iter(first.values())).data_ptr() == next(iter(again.values())).data_ptr()  # one kept buffer
    for k, v in again.items():
        assert torch.equal(v, bank.params[k][[1, 4, 9]])


def test_in_place_and_gathered_reads_predict_and_train_the_same():
    """The same three groups in consecutive slots (read in place) and in scattered ones (gathered)."""
    gen = torch.Generator().manual_seed(5)
    together, apart = [2, 3, 4], [0, 7, 11]
    a, b = _bank(), _bank()
    with torch.no_grad():
        b.flat[apart] = a.flat[together]
    ta, tb = (TestTimeTrainer(bank, Telemetry(12, H), optimizer="adam", lr=1e-2, mode="sync") for bank in (a, b))
    group = torch.tensor([0, 0, 1, 2, 2, 1])
    for _ in range(3):
        x, y = torch.randn(6, H, generator=gen), torch.randn(6, H, generator=gen)
        sa, sb = torch.tensor(together)[group], torch.tensor(apart)[group]
        la, lb = (layout_from_row_slots(s.numpy(), "cpu") for s in (sa, sb))
        assert not a.reads_whole_bank(la)  # 3 groups of a 13-entry bank: the plan's own rows
        torch.testing.assert_close(a(x, sa, layout=la), b(x, sb, layout=lb), rtol=1e-5, atol=1e-6)
        ta.schedule(x, y, sa, torch.ones(6, dtype=torch.bool), layout=la)
        tb.schedule(x, y, sb, torch.ones(6, dtype=torch.bool), layout=lb)
        torch.testing.assert_close(a.flat[together], b.flat[apart], rtol=1e-5, atol=1e-6)
    assert not torch.equal(a.flat[together], _bank().flat[together])  # it trained
