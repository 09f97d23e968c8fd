"""The esamp backend against SGLang 0.5.23's real classes: argument resolution, the sampler, row metadata."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from esamp_sgl.core.config import ESampConfig, ExploreRequest
from esamp_sgl.core.explorer import Explorer
from runtime_patch.rows import ROWS_ATTR, BatchRows, rows_of
from runtime_patch.runtime import SchedulerState
from runtime_patch.taps import Taps

H, V = 32, 200


def test_plugin_self_check_passes_on_the_installed_sglang():
    from runtime_patch.compat import self_check

    self_check()


def test_cpu_resolution_keeps_esamp_and_captures_last_hidden_states(sglang_with_plugin):
    from sglang.srt.runtime_context import get_exec

    assert get_exec().kernel.sampling_backend == "esamp"  # SGLang alone would force `pytorch` on CPU
    assert get_exec().features.return_hidden_states_mode == "last"


def test_full_hidden_state_mode_is_rejected(sglang_with_plugin):
    from sglang.srt.server_args import prepare_server_args

    args = prepare_server_args(["--model-path", "dummy", "--device", "cpu", "--sampling-backend", "esamp",
                                "--return-hidden-states-mode", "full"])
    with pytest.raises(ValueError, match="return-hidden-states-mode last"):
        args.resolve_once()  # what publish() and the launcher run


def _info(temperatures, top_ks, top_ps, min_ps):
    from sglang.srt.sampling.sampling_batch_info import SamplingBatchInfo

    top_ks = torch.tensor(top_ks, dtype=torch.int32)
    return SamplingBatchInfo(
        temperatures=torch.tensor(temperatures, dtype=torch.float32).view(-1, 1),
        top_ps=torch.tensor(top_ps, dtype=torch.float32), top_ks=top_ks,
        min_ps=torch.tensor(min_ps, dtype=torch.float32),
        is_all_greedy=bool((top_ks <= 1).all()), is_any_greedy=bool((top_ks <= 1).any()),
        need_top_p_sampling=any(p < 1 for p in top_ps), need_top_k_sampling=bool((top_ks != 1 << 30).any()),
        need_min_p_sampling=any(m > 0 for m in min_ps), vocab_size=V, device="cpu")


@pytest.fixture()
def samplers(sglang_with_plugin):
    from sglang.srt.layers.sampler import Sampler, create_sampler
    from sglang.srt.runtime_context import get_parallel

    from runtime_patch.sampler import ESampSampler

    with get_parallel().override(tp_group=SimpleNamespace(device_group=None)):
        esamp, stock = create_sampler(), Sampler()
    assert isinstance(esamp, ESampSampler)
    gen = torch.Generator().manual_seed(0)
    lm_head = torch.randn(V, H, generator=gen)
    config = ESampConfig(beta=2.0, seed=3, rank=8, fit_gate=False)  # the gate has its own tests
    esamp.runtime = SchedulerState(config, Explorer(config, H, lm_head), Taps([2], H, 2, None, None, None))
    return esamp, stock


def _run(sampler, info, logits, hidden, seed, stock_backend=False):
    from sglang.srt.layers.logits_processor import LogitsProcessorOutput
    from sglang.srt.runtime_context import get_exec

    out = LogitsProcessorOutput(next_token_logits=logits.clone(), hidden_states=hidden)
    torch.manual_seed(seed)
    positions = torch.zeros(logits.shape[0], dtype=torch.int64)
    if stock_backend:
        with get_exec().kernel.override(sampling_backend="pytorch"):
            return sampler(out, info, False, [], [], positions)
    return sampler(out, info, False, [], [], positions)


ROWS = dict(temperatures=[1.0, 0.8, 1.0, 0.7, 1.2, 1.0], top_ks=[1 << 30, 20, 1 << 30, 50, 1 << 30, 1 << 30],
            top_ps=[1.0, 1.0, 0.9, 0.95, 1.0, 1.0], min_ps=[0.0, 0.0, 0.0, 0.05, 0.1, 0.0])


def test_rows_without_esamp_match_the_stock_pytorch_sampler_bit_for_bit(samplers):
    esamp, stock = samplers
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(6, V, generator=gen) * 3
    hidden = torch.randn(6, 2 * H, generator=gen)
    for seed in range(5):
        expected = _run(stock, _info(**ROWS), logits, hidden, seed, stock_backend=True)
        assert torch.equal(_run(esamp, _info(**ROWS), logits, hidden, seed), expected)  # no rows metadata
        info = _info(**ROWS)
        setattr(info, ROWS_ATTR, BatchRows.stock(6))
        assert torch.equal(_run(esamp, info, logits, hidden, seed), expected)


def test_exploring_rows_are_reweighted_trained_and_leave_stock_rows_untouched(samplers):
    esamp, stock = samplers
    runtime = esamp.runtime
    request = ExploreRequest(group="g")
    for rid in ("a", "c", "e"):
        runtime.join(rid, request)
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(6, V, generator=gen) * 3
    hidden = torch.randn(6, 2 * H, generator=gen)
    rows = BatchRows(("a", "b", "c", "d", "e", "f"), (request, None, request, None, request, None))
    before = runtime.explorer.bank.forward(hidden[:1, :H], torch.tensor([0])).clone()
    changed = 0
    for seed in range(8):
        expected = _run(stock, _info(**ROWS), logits, hidden, seed, stock_backend=True)
        info = _info(**ROWS)
        setattr(info, ROWS_ATTR, rows)
        got = _run(esamp, info, logits, hidden, seed)
        assert torch.equal(got[[1, 3, 5]], expected[[1, 3, 5]])  # stock rows: identical tokens
        changed += int((got[[0, 2, 4]] != expected[[0, 2, 4]]).sum())
        # exploring rows stay inside their candidate sets (row 2: top-p 0.9; row 4: min-p 0.1 at T=1.2)
        probs = torch.softmax(logits / torch.tensor(ROWS["temperatures"]).view(-1, 1), -1)
        assert probs[4, got[4]] >= 0.1 * probs[4].max()
        sorted_p, order = probs[2].sort(descending=True)
        allowed = order[(sorted_p.cumsum(0) - sorted_p) <= 0.9]
        assert got[2] in allowed
    assert changed > 0  # β = 2 changes some draws
    after = runtime.explorer.bank.forward(hidden[:1, :H], torch.tensor([0]))
    assert not torch.allclose(before, after)  # the group's Distiller was trained
    telemetry = runtime.member_report(runtime.members["a"])
    assert telemetry["steps_trained"] == 8 and telemetry["predictions"] == 24
    for rid in ("a", "c", "e"):
        runtime.leave(rid)
    assert runtime.slots_in_use() == 0 and not runtime.members


def test_a_batch_that_explores_every_row_skips_the_stock_draw_unless_sglang_captures_its_mask(samplers,
                                                                                               monkeypatch):
    """Every row explores (β = 2, gate off): SGLang's draw is not run (its tokens would all be
    discarded), the ids keep SGLang's dtype; when SGLang asks for the sampling mask, which it captures
    inside its own draw, the draw runs and the mask is there."""
    import sglang.srt.layers.sampler as sglang_sampler
    from sglang.srt.layers.logits_processor import LogitsProcessorOutput

    esamp, _ = samplers
    request = ExploreRequest(group="g")
    rids = tuple("abcdef")
    for rid in rids:
        esamp.runtime.join(rid, request)
    gen = torch.Generator().manual_seed(3)
    logits, hidden = torch.randn(6, V, generator=gen) * 3, torch.randn(6, 2 * H, generator=gen)
    draws = []
    stock_draw = sglang_sampler.top_k_top_p_min_p_sampling_from_probs_torch

    def counted(*args, **kwargs):
        draws.append(1)
        return stock_draw(*args, **kwargs)

    monkeypatch.setattr(sglang_sampler, "top_k_top_p_min_p_sampling_from_probs_torch", counted)
    for capture in (None, torch.arange(6)):
        draws.clear()
        info = _info(**ROWS)
        setattr(info, ROWS_ATTR, BatchRows(rids, (request,) * 6))
        info.sampling_mask_batch_indices = capture
        out = LogitsProcessorOutput(next_token_logits=logits.clone(), hidden_states=hidden)
        ids = esamp(out, info, False, [], [], torch.zeros(6, dtype=torch.int64))
        assert ids.dtype == torch.int32 and ids.shape == (6,)
        assert len(draws) == (0 if capture is None else 1)
        assert (out.sampling_mask_output is not None) == (capture is not None)
    for rid in rids:
        esamp.runtime.leave(rid)


class _Batch:  # what BatchedPenalizerOrchestrator keeps a weak reference to
    device = "cpu"
    reqs: list = []


def test_row_metadata_follows_sglang_filter_merge_and_copy(sglang_with_plugin):
    from sglang.srt.sampling.penaltylib.orchestrator import BatchedPenalizerOrchestrator

    batch = _Batch()
    a = _info([1.0, 1.0, 1.0], [1 << 30] * 3, [1.0] * 3, [0.0] * 3)
    b = _info([0.5, 0.5], [1 << 30] * 2, [1.0] * 2, [0.0] * 2)
    for info in (a, b):  # no penalties: SGLang's own orchestrator with an empty penalizer set
        info.penalizer_orchestrator = BatchedPenalizerOrchestrator(V, batch, set())
    req = ExploreRequest()
    setattr(a, ROWS_ATTR, BatchRows(("a0", "a1", "a2"), (req, None, req)))
    # b carries no metadata (a batch of stock requests): merge pads it with stock rows
    a.merge_batch(b)
    assert rows_of(a).rids == ("a0", "a1", "a2", "", "") and len(a) == 5
    a.filter_batch([0, 2, 3], torch.tensor([0, 2, 3]))
    assert rows_of(a).rids == ("a0", "a2", "") and rows_of(a).requests == (req, req, None)
    copy = a.copy_for_forward()
    assert rows_of(copy) == rows_of(a)  # dataclasses.replace alone would drop it


def _run_masked(sampler, info, logits, hidden, seed, stock_backend=False):
    """_run with SGLang's sampling mask (and its support log-probabilities) captured for every row."""
    n = logits.shape[0]
    info.sampling_mask_batch_indices = torch.arange(n)
    info.sampling_support_logprobs_capture_indices = torch.arange(n)
    from sglang.srt.layers.logits_processor import LogitsProcessorOutput
    from sglang.srt.runtime_context import get_exec

    out = LogitsProcessorOutput(next_token_logits=logits.clone(), hidden_states=hidden)
    torch.manual_seed(seed)
    positions = torch.zeros(n, dtype=torch.int64)
    with get_exec().kernel.override(sampling_backend="pytorch" if stock_backend else "esamp"):
        ids = sampler(out, info, False, [], [], positions)
    return ids, out.sampling_mask_output


def test_sampling_mask_reports_the_emitted_token_not_the_discarded_stock_one(samplers):
    """SGLang's mask for a row ESamp redraws: the same support (the candidate set), and the selected
    log-probability is the emitted token's under that support, not the discarded stock token's."""
    esamp, stock = samplers
    request = ExploreRequest(group="g")
    for rid in ("a", "c", "e"):
        esamp.runtime.join(rid, request)
    gen = torch.Generator().manual_seed(4)
    logits, hidden = torch.randn(6, V, generator=gen) * 3, torch.randn(6, 2 * H, generator=gen)
    rows = BatchRows(tuple("abcdef"), (request, None, request, None, request, None))
    changed = 0
    for seed in range(8):
        stock_ids, want = _run_masked(stock, _info(**ROWS), logits, hidden, seed, stock_backend=True)
        info = _info(**ROWS)
        setattr(info, ROWS_ATTR, rows)
        ids, got = _run_masked(esamp, info, logits, hidden, seed)
        assert torch.equal(got.token_ids, want.token_ids) and torch.equal(got.lengths, want.lengths)
        assert torch.equal(got.support_logprobs, want.support_logprobs)  # the support is the filters'
        assert got.statuses.tolist() == [0] * 6  # SamplingMaskStatus.OK: every token inside its support
        for i in range(6):
            support = want.token_ids[i, : want.lengths[i]].tolist()
            expected = want.support_logprobs[i, support.index(int(ids[i]))]
            torch.testing.assert_close(got.selected_logprobs[i], expected)
        stock_rows = [1, 3, 5]
        assert torch.equal(ids[stock_rows], stock_ids[stock_rows])
        assert torch.equal(got.selected_logprobs[stock_rows], want.selected_logprobs[stock_rows])
        changed += int((ids[[0, 2, 4]] != stock_ids[[0, 2, 4]]).sum())
    assert changed > 0  # some explored rows did emit another token than the stock draw
    for rid in ("a", "c", "e"):
        esamp.runtime.leave(rid)


@pytest.mark.parametrize("all_greedy", [True, False])
def test_greedy_mask_marks_rows_whose_token_esamp_changed_invalid(samplers, all_greedy):
    """apply_to_greedy: SGLang's mask of a greedy row says support {argmax}; an explored row whose token
    is not the argmax is reported INVALID (SGLang aborts it) rather than with a false support. Both of
    SGLang's paths: the all-greedy batch (argmax, no draw) and greedy rows (top-k 1) among sampled ones."""
    from sglang.srt.layers.logits_processor import SamplingMaskStatus

    esamp, _ = samplers
    saved = esamp.runtime
    config = ESampConfig(beta=2.0, seed=3, rank=8, fit_gate=False, apply_to_greedy=True, greedy_min_p=0.02)
    lm_head = torch.randn(V, H, generator=torch.Generator().manual_seed(0))
    esamp.runtime = SchedulerState(config, Explorer(config, H, lm_head), Taps([2], H, 2, None, None, None))
    try:
        request = ExploreRequest(group="g")
        rids = tuple("abcdef")
        for rid in rids:
            esamp.runtime.join(rid, request)
        gen = torch.Generator().manual_seed(5)
        logits, hidden = torch.randn(6, V, generator=gen), torch.randn(6, 2 * H, generator=gen)
        changed = 0
        greedy = torch.tensor([True] * 6 if all_greedy else [True, True, True, False, False, False])
        top_ks = torch.where(greedy, 1, 1 << 30).tolist()  # SGLang turns temperature 0 into top_k 1
        for seed in range(6):
            info = _info([1.0] * 6, top_ks, [1.0] * 6, [0.0] * 6)
            assert info.is_all_greedy == all_greedy
            setattr(info, ROWS_ATTR, BatchRows(rids, (request,) * 6))
            ids, mask = _run_masked(esamp, info, logits, hidden, seed)
            argmax = logits.argmax(-1)
            if all_greedy:
                assert torch.equal(mask.token_ids.view(-1), argmax.to(torch.int32))  # SGLang's greedy support
            moved = greedy & (ids != argmax)
            want = torch.where(moved, int(SamplingMaskStatus.INVALID), int(SamplingMaskStatus.OK))
            assert torch.equal(mask.statuses, want.to(mask.statuses.dtype))
            changed += int(moved.sum())
        assert changed > 0
    finally:
        esamp.runtime = saved
