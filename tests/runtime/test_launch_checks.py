"""The sampler's host-side checks before launch (runtime_patch/launch_checks.py): each bad input
samples the batch stock, bit for bit, with a counted failure. SGLang's real sampler and
SamplingBatchInfo, as in test_contract.py (its fixtures and helpers)."""

from __future__ import annotations

import torch

from esamp_sgl.core.config import ExploreRequest
from runtime_patch.launch_checks import check_tensor
from runtime_patch.rows import ROWS_ATTR, BatchRows
from runtime_patch.taps import Taps
from test_contract import H, ROWS, V, _info, _run, samplers  # noqa: F401  (samplers: a fixture)

RIDS = ("a", "b", "c", "d", "e", "f")


def _explore_rows(esamp, request: ExploreRequest) -> BatchRows:
    for rid in ("a", "c", "e"):
        esamp.runtime.join(rid, ExploreRequest(group="g"))
    return BatchRows(RIDS, (request, None, request, None, request, None))


def _assert_stock_with_one_failure(esamp, stock, rows, logits, hidden, reason: str, caplog):
    expected = _run(stock, _info(**ROWS), logits, hidden, 0, stock_backend=True)
    info = _info(**ROWS)
    setattr(info, ROWS_ATTR, rows)
    with caplog.at_level("WARNING", logger="esamp_sgl.sampler"):
        got = _run(esamp, info, logits, hidden, 0)
    assert torch.equal(got, expected)
    assert esamp.failures == 1
    assert any(reason in r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records]
    assert esamp.runtime.member_report(esamp.runtime.members["a"]).get("predictions", 0) == 0  # nothing launched


def _inputs(seed: int = 4, vocab: int = V, width: int = 2 * H):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(6, vocab, generator=gen) * 3, torch.randn(6, width, generator=gen)


def test_a_slot_outside_the_bank_samples_stock(samplers, caplog):
    esamp, stock = samplers
    request = ExploreRequest(group="g")
    rows = _explore_rows(esamp, request)
    esamp.runtime.members["c"].slot = esamp.runtime.config.max_groups  # one past the bank
    _assert_stock_with_one_failure(esamp, stock, rows, *_inputs(), "outside the bank", caplog)


def test_an_unknown_rule_samples_stock(samplers, caplog):
    esamp, stock = samplers
    request = ExploreRequest(group="g").model_copy(update={"rule": "no_such_rule"})  # past validation
    _assert_stock_with_one_failure(esamp, stock, _explore_rows(esamp, request), *_inputs(), "unknown rules",
                                   caplog)


def test_a_beta_out_of_range_samples_stock(samplers, caplog):
    esamp, stock = samplers
    for beta in (float("nan"), -1.0, 1e9):
        esamp.failures = 0
        caplog.clear()
        request = ExploreRequest(group="g").model_copy(update={"beta": beta})
        _assert_stock_with_one_failure(esamp, stock, _explore_rows(esamp, request), *_inputs(), "betas",
                                       caplog)


def test_taps_of_the_wrong_hidden_size_sample_stock(samplers, caplog):
    esamp, stock = samplers
    esamp.runtime.taps = Taps([2], H + 2, 2, None, None, None)  # splits into [rows, H + 2]
    logits, hidden = _inputs(width=2 * (H + 2))
    _assert_stock_with_one_failure(esamp, stock, _explore_rows(esamp, ExploreRequest(group="g")), logits,
                                   hidden, f"source is [6, {H + 2}], expected [6, {H}]", caplog)


def test_captured_streams_that_cannot_be_split_sample_stock(samplers, caplog):
    esamp, stock = samplers
    logits, hidden = _inputs(width=2 * H + 3)
    _assert_stock_with_one_failure(esamp, stock, _explore_rows(esamp, ExploreRequest(group="g")), logits,
                                   hidden, "expected captured hidden states", caplog)


def test_scores_wider_than_the_lm_head_sample_stock(samplers, caplog):
    esamp, stock = samplers
    logits, hidden = _inputs(vocab=V + 5)
    _assert_stock_with_one_failure(esamp, stock, _explore_rows(esamp, ExploreRequest(group="g")), logits,
                                   hidden, f"scores have {V + 5} tokens", caplog)


def test_taps_of_a_non_floating_dtype_sample_stock(samplers, caplog):
    esamp, stock = samplers
    logits, _ = _inputs()
    hidden = torch.randint(-3, 3, (6, 2 * H), generator=torch.Generator().manual_seed(5))
    _assert_stock_with_one_failure(esamp, stock, _explore_rows(esamp, ExploreRequest(group="g")), logits,
                                   hidden, "expected a floating dtype", caplog)


def test_a_tensor_on_another_device_is_rejected():
    on_meta = torch.empty(4, 8, device="meta")
    assert "is on meta" in check_tensor("source", on_meta, (4, 8), torch.device("cpu"))
    assert check_tensor("source", torch.empty(4, 8), (4, 8), torch.device("cpu")) is None
    assert check_tensor("slots", torch.empty(4, dtype=torch.int64), (4,), torch.device("cpu"),
                        floating=False) is None
