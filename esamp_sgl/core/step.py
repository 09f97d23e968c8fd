"""One decode step of ESamp: capture → predict → reweight → sample → train."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Callable, Sequence

import torch
from torch import Tensor

from esamp_sgl.core.candidates import CandidateSet, candidate_set, flashinfer_candidate_set
from esamp_sgl.core.config import DEFAULT_RULE
from esamp_sgl.core.dlogits import candidate_distiller_logits
from esamp_sgl.core.explorer import Explorer
from esamp_sgl.core.plan import RowGroups, plan_from_device
from esamp_sgl.core.reweight import reads_distiller, reweighted_logits, sample_candidates
from esamp_sgl.core.rules import RULE_SIGNAL, signals_needed
from esamp_sgl.core.telemetry import candidate_corr


@dataclass
class StepBatch:
    """What the engine hands over for one decode step (R rows, vocabulary V, hidden H)."""

    logits: Tensor | None  # [R, V] temperature-scaled logits or log-probs (greedy rows: at T = 1);
    # None when `probs` is given: log(p) is then taken on the candidates only
    temperatures: Tensor  # [R] (ignored for greedy rows, which use T = 1)
    top_k: Tensor  # [R] int (<= 0 or >= V: all)
    top_p: Tensor  # [R]
    min_p: Tensor  # [R]
    is_greedy: Tensor  # [R] bool
    slots: Tensor  # [R] int64, -1 = no ESamp for this row (stock sampling)
    betas: Tensor  # [R] float
    source: Tensor  # [R, H] shallow tap (any dtype)
    target: Tensor  # [R, H] deep tap (any dtype)
    any_active: bool  # host-side: does any row have a slot? (from request metadata, no sync)
    rules: str | Sequence[str] = DEFAULT_RULE  # one rule for the batch or one per row
    probs: Tensor | None = None  # [R, V] the engine's probabilities, if it has them
    train: Tensor | None = None  # [R] bool: rows whose group trains (None: every row with a slot)
    # The rows with a slot grouped per slot, planned on the host by the engine (plan.py; `.train`:
    # the rows that train). None: built from a host read of `slots` (free on CPU, a sync on CUDA).
    groups: RowGroups | None = None

    def take(self, rows: Tensor) -> "StepBatch":
        """The batch restricted to `rows` (a host read of `rows` for per-row rule names; the plan
        is dropped and rebuilt for the restricted rows: this is the CPU path)."""
        per_row = {f.name: getattr(self, f.name) for f in fields(self)
                   if isinstance(getattr(self, f.name), Tensor)}
        rules = self.rules if isinstance(self.rules, str) else [self.rules[i] for i in rows.tolist()]
        return replace(self, rules=rules, groups=None,
                       **{k: t.index_select(0, rows) for k, t in per_row.items()})


@dataclass
class RowFilters:
    temperature: Tensor
    top_k: Tensor
    top_p: Tensor
    min_p: Tensor


def row_filters(batch: StepBatch, greedy_min_p: float) -> RowFilters:
    """Each row's filters; greedy rows (SGLang: top_k = 1) use {p >= greedy_min_p · p_max} at T=1."""
    g = batch.is_greedy
    return RowFilters(
        temperature=torch.where(g, 1.0, batch.temperatures.float()),
        top_k=torch.where(g, 0, batch.top_k.to(torch.int64)),
        top_p=torch.where(g, 1.0, batch.top_p.float()),
        min_p=torch.where(g, greedy_min_p, batch.min_p.float()))


def candidates(ex: Explorer, batch: StepBatch, f: RowFilters) -> CandidateSet:
    if ex.backend == "flashinfer":
        probs = batch.probs if batch.probs is not None else torch.softmax(batch.logits.float(), -1)
        return flashinfer_candidate_set(probs, batch.logits, f.top_k, f.top_p, f.min_p,
                                        ex.config.max_candidates)
    return candidate_set(batch.logits, f.top_k, f.top_p, f.min_p, ex.config.max_candidates,
                         probs=batch.probs, trim=ex.trim_candidates)


@dataclass
class Reweighted:
    """Steps 2-4 of the recipe for a batch: what ESamp would sample from, row by row."""

    cand: CandidateSet
    scores: Tensor  # [R, K] reweighted scaled logits over cand.ids (-inf off the candidates)
    applied: Tensor  # [R] bool: rows whose token is drawn from `scores` (else stock's)
    h_hat: Tensor  # [R, H] the Distiller's prediction
    d: Tensor  # [R, K] raw distiller logits on the candidates


def reweight(ex: Explorer, batch: StepBatch) -> Reweighted:
    """Predict, take the candidates and reweight them (the exact check calls this too)."""
    cfg = ex.config
    # 2. Predict the deep state from the shallow one, with parameters trained through step t−1.
    ex.trainer.wait()
    h_hat = ex.bank(batch.source, batch.slots, groups=batch.groups)  # [R, H] fp32

    # 3. Candidates: survivors of top-k / top-p / min-p on the unmodified scaled distribution.
    f = row_filters(batch, cfg.greedy_min_p)
    cand = candidates(ex, batch, f)

    # 4. Reweight the candidates only: d = ĥ·W_U[v], its spread bounded by the model's own
    #    (reweight.bounded_tilt), at strength β·g where g is the group's fit (gate.py). The
    #    controls read a random prior or the group's token counts instead of d, ungated.
    d = candidate_distiller_logits(h_hat, ex.lm_head_weight, cand.ids, ex.d_method, ex.d_machine)
    signals = {"distiller": d}
    needed = signals_needed(batch.rules)
    if "random" in needed:
        signals["random"] = ex.random_prior_on(cand.ids)
    if needed & {"presence", "frequency"}:
        counts = ex.group_counts_on(batch.slots, cand.ids)
        signals.update(presence=(counts > 0).float(), frequency=counts)
    if isinstance(batch.rules, str):  # one rule: decided on the host (no device scalar to copy)
        gated_one = RULE_SIGNAL[batch.rules] == "distiller"
        betas = batch.betas * ex.gate.factor(batch.slots) if gated_one else batch.betas
    else:
        gated = reads_distiller(batch.rules, batch.slots.shape[0], batch.betas.device)
        betas = torch.where(gated, batch.betas * ex.gate.factor(batch.slots), batch.betas)
    scores = reweighted_logits(cand.logits, signals, f.temperature, betas, batch.rules,
                               cfg.tilt_bound)
    applied = ((batch.slots >= 0) & (betas > 0) & torch.isfinite(h_hat).all(-1)
               & (~batch.is_greedy | cfg.apply_to_greedy))
    return Reweighted(cand, scores, applied, h_hat, d)


def explore_step(ex: Explorer, batch: StepBatch, stock_sample: Callable[[], Tensor]) -> Tensor:
    """Returns this step's token ids [R]. `stock_sample` is the engine's own draw for the whole
    batch, with the engine's RNG: a row that ESamp leaves alone (no slot, β·g = 0, greedy without
    apply_to_greedy) gets exactly the stock token. It is called unless every row is redrawn and host
    reads are free (CPU): then the stock draw would be discarded whole, and on CPU it is SGLang's
    full-vocabulary sort per row, ~26 % of a SmolLM2 decode step (docs/performance.md)."""
    if not batch.any_active:
        return stock_sample()
    if ex.trim_candidates:  # CPU, where host reads are free: do the work for the exploring rows only
        rows = (batch.slots >= 0).nonzero().squeeze(1)
        if rows.numel() < batch.slots.numel():
            tokens = stock_sample().clone()
            explored = explore_step(ex, batch.take(rows), lambda: tokens.index_select(0, rows))
            tokens[rows] = explored.to(tokens.dtype)
            return tokens
    has_slot = batch.slots >= 0
    if batch.groups is None and not ex.trainer.static_shapes:  # host reads are free: plan here
        batch = replace(batch, groups=plan_from_device(batch.slots, batch.train))

    # 1. Capture: done by the engine inside the forward pass -> batch.source, batch.target.
    # 2-4. Predict, candidates, reweight.
    rw = reweight(ex, batch)

    # 5. Sample from softmax over the candidates with ESamp's own generator (greedy: argmax).
    esamp_tokens = sample_candidates(rw.scores, rw.cand.ids, batch.is_greedy, ex.generator, ex.backend)
    if ex.trim_candidates and bool(rw.applied.all()):  # host read: free on CPU
        tokens = esamp_tokens
    else:
        stock_tokens = stock_sample()
        tokens = torch.where(rw.applied, esamp_tokens.to(stock_tokens.dtype), stock_tokens)

    # 6. Telemetry and the gate's held-out fit, then train on this step's pairs (after sampling;
    #    may run asynchronously).
    ex.count_group_tokens(batch.slots, tokens, has_slot)
    ex.stats.record_prediction(batch.slots, has_slot, rw.h_hat, batch.target)
    ex.gate.update(batch.slots, has_slot, rw.h_hat, batch.target)
    corr, corr_ok = candidate_corr(rw.d, rw.cand.logits, rw.cand.keep)
    ex.stats.record_candidates(batch.slots, has_slot, rw.applied, rw.cand.truncated, corr, corr_ok)
    if ex.config.training and (batch.groups is None or batch.groups.train is not None):
        trains = has_slot if batch.train is None else has_slot & batch.train
        ex.trainer.schedule(batch.source, batch.target, batch.slots, trains,
                            groups=None if batch.groups is None else batch.groups.train)
    ex.mark_step()  # CUDA: where this step's work ends (non-stalling telemetry reads)
    return tokens
