"""The `esamp` sampling backend: SGLang's own `Sampler`, plus ESamp for the rows that asked for it.

Everything SGLang does before sampling (penalties, grammar, logit bias, temperature, softmax, the
greedy path, logprobs, TP token sync) is the parent class's code, unchanged. Only the final draw is
replaced: `_sample_from_probs` runs SGLang's stock draw for every row (the `pytorch` backend on
CPU, `flashinfer` on CUDA, selected by a scoped config override so it is literally SGLang's code and
RNG use), and `esamp_sgl.core.step.explore_batch` redraws the rows of live fork groups from their
reweighted candidates. Rows without ESamp therefore get bit-identical tokens to the stock backend.
On CPU a batch whose every row ESamp redraws skips the stock draw, whose tokens would all be
discarded (step.with_stock_rows says why).

The sampling mask (`SamplingBatchInfo.sampling_mask_batch_indices`, captured inside SGLang's draw)
describes the row's filtered support, which is ESamp's candidate set (the same top-k/top-p/min-p), with
the model's filtered probabilities as weights. For a row ESamp redraws, SGLang must not pair the emitted
token with the weight its discarded stock token had: the weight is looked up for the emitted token (as
SGLang itself does when TP sync or a grammar replaces a token), so `selected_logprobs` is the model's
filtered log-probability of the token actually emitted, and a token outside the support is reported
INVALID (SGLang then aborts the request) instead of passing silently. It is not ESamp's own sampling
probability (the behaviour policy after reweighting): explore_batch does not return that.

Failures never take the server down: an exception in the exploration step samples the batch stock
and counts it in `ESampSampler.failures`. On CUDA a fault inside a kernel (e.g. an out-of-range
index in an index_select/gather) is not an exception at launch: it surfaces asynchronously at a later
sync, outside any `except` here, and leaves the CUDA context unusable. So before launching anything,
everything the step indexes with or sizes its kernels by that comes from the host is checked on the
host (runtime_patch/launch_checks.py: slot ids against the bank, rule names, β ranges, the taps'
[rows, H] and the scores' [rows, V] shapes, dtypes and devices); a failed check samples the batch
stock, counted and logged with its reason. Not checkable before launch: faults on values computed on
the device inside kernels (a library kernel's illegal access, ids drawn from corrupted
probabilities). Those still surface at the next sync and fail the scheduler process, as the same
fault in SGLang's own kernels would.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import torch
from sglang.srt.layers.logits_processor import SamplingMaskStatus
from sglang.srt.layers.sampler import Sampler
from sglang.srt.runtime_context import get_exec, get_platform

from esamp_sgl.core.plan import StepPlan
from esamp_sgl.core.step import HeadInput, StepBatch, explore_batch
from runtime_patch.launch_checks import check_scores, check_step
from runtime_patch.rows import rows_of
from runtime_patch.runtime import SchedulerState

logger = logging.getLogger("esamp_sgl.sampler")

STEP_ATTR = "_esamp_step"  # on a LogitsProcessorOutput whose forward mixed before the LM head


def stock_backend_name() -> str:
    """What SGLang would have picked without `esamp` (its `_sampling_backend_default`)."""
    return "flashinfer" if get_platform().has_flashinfer else "pytorch"


@dataclass
class StepContext:
    plan: StepPlan
    source: torch.Tensor
    target: torch.Tensor
    head: HeadInput | None = None  # the latent mixing done before the LM head (head_mix.py), if any
    # Under TP: [rows] bool, the rows another rank explores (their tokens come from it: combine)
    foreign: torch.Tensor | None = None


def step_context(runtime: SchedulerState | None, sampling_info, hidden_states,
                 plan: StepPlan | None = None) -> StepContext | None:
    """The step's row plan and taps, or None when no row of the batch explores. `hidden_states`: the
    captured [rows, width] streams (Taps.split); `plan`: the step's plan if made already (beside.py)."""
    rows = rows_of(sampling_info)
    if runtime is None or rows is None or not rows.any_requested:
        return None
    if hidden_states is None or hidden_states.shape[0] != len(rows.rids):
        return None  # e.g. an idle/dummy batch: nothing captured for these rows
    plan = plan if plan is not None else runtime.step_plan(rows, hidden_states.device)
    foreign = None if runtime.ownership is None else runtime.ownership.foreign_rows(
        runtime.row_slots(rows), hidden_states.device)
    if not plan.any_active and foreign is None:
        return None
    source, target = runtime.taps.split(hidden_states)
    return StepContext(plan, source, target, foreign=foreign)


def step_batch(step: StepContext, sampling_info, logits, probs) -> StepBatch:
    """The core's view of the step (esamp_sgl.core.step.StepBatch); logits and probs are None inside
    the forward, before the LM head."""
    return StepBatch(
        logits=logits,
        temperatures=sampling_info.temperatures.view(-1),
        top_k=sampling_info.top_ks,
        top_p=sampling_info.top_ps,
        min_p=sampling_info.min_ps,
        is_greedy=sampling_info.top_ks <= 1,  # SGLang turns temperature 0 into top_k = 1
        plan=step.plan,
        source=step.source,
        target=step.target,
        probs=probs,
        h_hat=None if step.head is None else step.head.h_hat,
        premixed=None if step.head is None else step.head.mixed,
        unfiltered=batch_unfiltered(sampling_info),
    )


def batch_unfiltered(sampling_info) -> bool:
    """Host: no row of the batch has top-k, top-p or min-p, by SGLang's batch flags (top-k 1, i.e.
    greedy, sets the first)."""
    return not (sampling_info.need_top_k_sampling or sampling_info.need_top_p_sampling
                or sampling_info.need_min_p_sampling)


class StockDraw:
    """SGLang's own draw for the whole batch, run at most once (it advances the engine's RNG) and only
    when asked: `()` returns its token ids; `mask` is the sampling mask it captured (None until run,
    or when SGLang captures none)."""

    def __init__(self, draw: Callable[[], tuple[torch.Tensor, object]]) -> None:
        self._draw = draw
        self.ids: torch.Tensor | None = None
        self.mask = None

    def __call__(self) -> torch.Tensor:
        if self.ids is None:
            self.ids, self.mask = self._draw()
        return self.ids


class ESampSampler(Sampler):
    def __init__(self) -> None:
        super().__init__()
        self.runtime: SchedulerState | None = None  # bound after the model is loaded (plugin hook)
        self.stock_backend = stock_backend_name()
        self.failures = 0
        self._step: StepContext | None = None

    # capture -> (SGLang: temperature, softmax) -> predict -> reweight -> sample -> train
    def forward(self, logits_output, sampling_info, return_logprob, top_logprobs_nums, token_ids_logprobs,
                positions, **kwargs):
        # The forward's head-mix hook built the step already when it mixed before the LM head.
        self._step = (getattr(logits_output, STEP_ATTR, None)
                      or self._step_context(sampling_info, logits_output.hidden_states))
        try:
            ids = super().forward(logits_output, sampling_info, return_logprob, top_logprobs_nums,
                                  token_ids_logprobs, positions, **kwargs)
            if self._step is not None and sampling_info.is_all_greedy:
                # SGLang's all-greedy path takes argmax and never calls _sample_from_probs; the logits
                # are untouched there (no temperature, no softmax), i.e. scaled logits at T = 1.
                stock_ids = ids
                ids = self._explore(self._step, logits_output.next_token_logits, None, sampling_info,
                                    StockDraw(lambda: (stock_ids, None))).to(stock_ids.dtype)
                _mark_greedy_mask(logits_output, sampling_info, stock_ids, ids)
            if self.runtime is not None:
                self.runtime.steps += 1
            return ids
        finally:
            self._step = None

    def _sample_from_probs(self, probs, sampling_info, positions, simple_sampling_case):
        def sglang_draw():
            with get_exec().kernel.override(sampling_backend=self.stock_backend):
                return Sampler._sample_from_probs(self, probs, sampling_info, positions, simple_sampling_case)

        stock = StockDraw(sglang_draw)
        if self._step is None:
            return stock(), stock.mask
        if sampling_info.sampling_mask_batch_indices is not None or self._step.foreign is not None:
            # Run SGLang's draw now, even if ESamp redraws every row (step.with_stock_rows would
            # then skip it): it captures the sampling mask, and under TP every rank must advance
            # the engine's generator alike (tensor_parallel.py).
            stock()
        # `probs` is softmax(logits / T) after SGLang's processors; log(probs) equals the scaled
        # logits up to a per-row constant, which every rule and softmax over candidates ignores,
        # so the core takes log(p) of the candidates only (logits=None).
        ids = self._explore(self._step, None, probs, sampling_info, stock)
        mask = stock.mask
        if mask is not None:
            # The captured selected_weight is the stock token's; SGLang's mask builder looks up the
            # weight of the token actually emitted when it is None (bit-identical for stock rows).
            mask = mask._replace(selected_weight=None)
        return ids.to(torch.int32), mask  # SGLang's draws (torch and FlashInfer) are int32

    def _count_failure(self, reason: str) -> None:
        """A batch sampled stock because a check before launch failed: counted and logged with its
        reason (the first time, then every 1000th, as for an exception in the step)."""
        self.failures += 1
        if self.failures == 1 or self.failures % 1000 == 0:
            logger.warning("esamp: exploration step not launched (%d failures so far): %s; sampling stock",
                           self.failures, reason)

    def _step_context(self, sampling_info, hidden_states) -> StepContext | None:
        """step_context, but a plan or taps that cannot be built (e.g. captured streams of the wrong
        width) samples the batch stock instead of raising out of the forward."""
        try:
            return step_context(self.runtime, sampling_info, hidden_states)
        except Exception as exc:
            self._count_failure(f"{type(exc).__name__}: {exc}")
            return None

    def _explore(self, step: StepContext, logits, probs, sampling_info, stock: StockDraw) -> torch.Tensor:
        """ESamp's one entry: the step's tokens, or the stock draw's when a check or the step fails.
        Under TP every rank then exchanges its rows' tokens, whatever happened here (tensor_parallel.py)."""
        ids = self._explored_ids(step, logits, probs, sampling_info, stock)
        if step.foreign is not None:
            ids = self.runtime.ownership.combine(ids, step.foreign)
        return ids

    def _explored_ids(self, step: StepContext, logits, probs, sampling_info, stock: StockDraw) -> torch.Tensor:
        reason = launch_check(self.runtime, step, sampling_info, probs if probs is not None else logits)
        if reason is not None:
            self._count_failure(reason)
            return stock()
        batch = step_batch(step, sampling_info, logits, probs)
        try:
            return explore_batch(self.runtime.explorer, batch, stock)
        except Exception:  # a sampler plugin must never take the server down
            self.failures += 1
            if self.failures == 1 or self.failures % 1000 == 0:
                logger.exception("esamp: exploration step failed (%d so far); sampling stock", self.failures)
            return stock()


def launch_check(runtime: SchedulerState, step: StepContext, sampling_info, scores) -> str | None:
    """The host-side checks of launch_checks.py on this step; None when it may launch. `scores` None:
    before the LM head (head_mix.py). A step mixed there had its plan, taps and filters checked then;
    only its scores are new here."""
    plan = step.plan
    reason = None
    if step.head is None or scores is None:
        filters = {"temperatures": sampling_info.temperatures.reshape(-1), "top_ks": sampling_info.top_ks,
                   "top_ps": sampling_info.top_ps, "min_ps": sampling_info.min_ps}
        reason = check_step(runtime.explorer, plan.host_slots, plan.host_betas, plan.rules,
                            {"slots": plan.slots, "betas": plan.betas, "train": plan.train}, step.source,
                            step.target, filters)
    if reason is None and scores is not None:
        reason = check_scores(runtime.explorer, scores, len(plan.host_slots))
    return reason


def _mark_greedy_mask(logits_output, sampling_info, stock_ids: torch.Tensor, ids: torch.Tensor) -> None:
    """SGLang built the all-greedy mask from its argmax: support {argmax}, log-probability 0. A row
    whose token ESamp changed (apply_to_greedy) left that support: report it INVALID, as SGLang's own
    builder does for a token outside the captured support."""
    mask = getattr(logits_output, "sampling_mask_output", None)
    rows = sampling_info.sampling_mask_batch_indices
    if mask is None or rows is None:
        return
    changed = ids.index_select(0, rows) != stock_ids.index_select(0, rows)
    mask.statuses = torch.where(changed, torch.full_like(mask.statuses, int(SamplingMaskStatus.INVALID)),
                                mask.statuses)
