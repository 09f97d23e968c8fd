"""One decode step of ESamp, as one recipe: capture → plan → predict → candidates → tilt → sample → learn.

`explore_batch` is what the engine calls (the CPU row restriction around the recipe); `explore_step`
is the recipe, each line a named call defined below it in the order it runs. `mix_before_head` is the
engine's second entry, inside its forward: the paper's latent mixing before the LM head.
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, fields, replace
from typing import Callable, Sequence

import torch
from torch import Tensor

from esamp_sgl.core.candidates import CandidateSet, candidate_set, effective_top_k
from esamp_sgl.core.dlogits import candidate_distiller_logits
from esamp_sgl.core.explorer import Explorer
from esamp_sgl.core.fit import row_fit
from esamp_sgl.core.layout import SlotLayout, layout_from_device
from esamp_sgl.core.latent import error_noise, latent_scores
from esamp_sgl.core.plan import StepPlan
from esamp_sgl.core.reweight import draw_tokens, host_mask, reweighted_logits
from esamp_sgl.core.rules import GATED_SIGNALS, LATENT_VECTOR, RULE_SIGNAL, signals_needed
from esamp_sgl.core.telemetry import candidate_corr
from esamp_sgl.core.trainer import TestTimeTrainer


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
    plan: StepPlan  # each row's slot, β, rule, training and layout, planned on the host (plan.py)
    source: Tensor  # [R, H] shallow tap (any dtype)
    target: Tensor  # [R, H] deep tap (any dtype)
    probs: Tensor | None = None  # [R, V] the engine's probabilities, if it has them
    # Set when the engine mixed in latent space before its LM head (mix_before_head): the prediction
    # it made there [R, H] fp32, and the rows [R] bool whose logits — and the engine's draw — already
    # carry the mix (the stock token of such a row is ESamp's).
    h_hat: Tensor | None = None
    premixed: Tensor | None = None
    # host: no row has top-k, top-p or min-p and none is greedy (the engine's batch flags say so
    # without a device read); then latent mixing needs no candidate set for any row
    unfiltered: bool = False

    # The plan's per-row values, read as the batch's own.
    @property
    def slots(self) -> Tensor:
        return self.plan.slots  # [R] int64, -1 = no ESamp for this row (stock sampling)

    @property
    def betas(self) -> Tensor:
        return self.plan.betas

    @property
    def rules(self) -> str | Sequence[str]:
        return self.plan.rules

    @property
    def train(self) -> Tensor | None:
        return self.plan.train

    @property
    def layout(self) -> SlotLayout | None:
        return self.plan.layout

    @property
    def any_active(self) -> bool:
        return self.plan.any_active

    def take(self, rows: Tensor) -> "StepBatch":
        """The batch restricted to `rows` (a host read of `rows` for per-row rule names; the layout
        is dropped and rebuilt for the restricted rows: this is the CPU path)."""
        per_row = {f.name: getattr(self, f.name) for f in fields(self)
                   if isinstance(getattr(self, f.name), Tensor)}
        return replace(self, plan=self.plan.take(rows), **{k: t.index_select(0, rows) for k, t in per_row.items()})


def explore_batch(ex: Explorer, batch: StepBatch, stock_sample: Callable[[], Tensor]) -> Tensor:
    """The engine's entry for one decode step: token ids [R]. `stock_sample` is the engine's own draw
    for the whole batch, with the engine's RNG: a row that ESamp leaves alone (no slot, β·g = 0,
    greedy without apply_to_greedy) gets exactly the stock token. Where host reads are free (CPU) the
    recipe runs on the exploring rows only, once per path (explored_row_sets)."""
    if not batch.any_active:
        return stock_sample()
    row_sets = explored_row_sets(ex, batch) if ex.host_reads.free else None
    if row_sets is None:
        return explore_step(ex, batch, stock_sample)
    tokens = stock_sample().clone()
    for rows in row_sets:
        tokens[rows] = explore_step(ex, batch.take(rows), lambda: tokens.index_select(0, rows)).to(tokens.dtype)
    return tokens


def explore_step(ex: Explorer, batch: StepBatch, stock_sample: Callable[[], Tensor]) -> Tensor:
    """The recipe, for a batch with exploring rows."""
    # 1. Capture: done by the engine inside its forward -> batch.source (shallow), batch.target (deep).
    # 2. Plan: the rows grouped per slot (the engine's host plan, or one made here where reads are free).
    batch = planned(ex, batch)
    has_slot = batch.slots >= 0
    # 3. Predict the deep state from the shallow one (parameters trained through step t−1), unless the
    #    engine did before its LM head (mix_before_head).
    h_hat = batch.h_hat if batch.h_hat is not None else predict(ex, batch)
    # 4-6. Candidates, tilt, sample (latent mixing for unfiltered rows): ESamp's draw, stock's elsewhere.
    explored = sample_explored(ex, batch, h_hat)
    tokens = with_stock_rows(ex, explored, stock_sample)
    # 7. Learn: what was drawn, the held-out fit of ĥ, then training on this step's pairs (after
    #    sampling; may run asynchronously).
    record_draw(ex, batch, has_slot, tokens, explored)
    learn_from_step(ex, batch.plan, batch.source, batch.target, h_hat, has_slot)
    ex.mark_step()  # CUDA: where this step's work ends (non-stalling telemetry reads)
    return tokens


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


def filtered_candidates(ex: Explorer, batch: StepBatch, f: RowFilters) -> CandidateSet:
    """The survivors of each row's top-k / top-p / min-p on the unmodified scaled distribution. Where host
    reads are free K is cut to the largest kept count; else it is the width the data asked for a few
    steps before (width.py), and rows with more survivors keep their stock token."""
    if ex.host_reads.free:
        return candidate_set(batch.logits, f.top_k, f.top_p, f.min_p, ex.config.max_candidates,
                             probs=batch.probs, trim=True)
    width = ex.candidate_width.current()
    cand = candidate_set(batch.logits, f.top_k, f.top_p, f.min_p, width, probs=batch.probs)
    ex.candidate_width.observe(cand)
    return replace(cand, partial=cand.truncated) if width < ex.candidate_width.cap else cand


@dataclass
class Tilted:
    """The candidates and their tilt: what ESamp would sample from, row by row."""

    cand: CandidateSet
    scores: Tensor  # [R, K] reweighted scaled logits over cand.ids (-inf off the candidates)
    applied: Tensor  # [R] bool: rows whose token is drawn from `scores` (else stock's)
    h_hat: Tensor  # [R, H] the Distiller's prediction
    d: Tensor  # [R, K] raw distiller logits on the candidates


def planned(ex: Explorer, batch: StepBatch) -> StepBatch:
    """The batch with its rows grouped per slot: the engine's host plan, or one made here from a host
    read of the slots where host reads are free (CPU); on CUDA without a plan, each row gathers."""
    if batch.layout is None and ex.host_reads.free:
        return replace(batch, plan=replace(batch.plan, layout=layout_from_device(batch.slots, batch.train)))
    return batch


def predict(ex: Explorer, batch: StepBatch) -> Tensor:
    """ĥ [R, H] fp32: the deep state from the shallow one, with parameters trained through step t−1."""
    ex.trainer.wait(raise_failure=True)  # a failed training step fails this step (the sampler's guard)
    return ex.bank(batch.source, batch.slots, layout=batch.layout)


@dataclass
class PredictionBeside:
    """ĥ being computed on the training worker while the engine's thread goes on (predict_beside)."""

    future: Future
    trainer: TestTimeTrainer

    def result(self) -> Tensor:
        """ĥ [R, H] fp32, as predict() gives it: joins the worker; a failed training step fails this step."""
        self.trainer.wait(raise_failure=True)
        return self.future.result()


def predict_beside(ex: Explorer, source: Tensor, plan: StepPlan) -> PredictionBeside | None:
    """The paper's prediction beside layers 2…L (Alg. 1): as soon as the engine has the shallow
    tap, start predict()'s ĥ for `plan`'s rows on the CPU's training worker (train_mode cpu_thread),
    after the training step in flight there, so it runs while the engine computes the rest of its
    forward. Same inputs, parameters and ops as predict(). None where there is no worker."""
    layout = plan.layout if plan.layout is not None else layout_from_device(plan.slots, plan.train)
    future = ex.trainer.run_beside(lambda: ex.bank(source, plan.slots, layout=layout))
    return None if future is None else PredictionBeside(future, ex.trainer)


def reads_distiller(rule: str) -> bool:
    """The rule reads the group's Distiller (its d, or the size of its error): the fit gate scales it."""
    return RULE_SIGNAL[rule] in GATED_SIGNALS


def gated_betas(ex: Explorer, batch: StepBatch) -> Tensor:
    """β per row, times the group's fit gate for the rules that read the Distiller."""
    if isinstance(batch.rules, str):  # one rule: decided on the host (no device scalar to copy)
        return batch.betas * ex.gate.factor(batch.slots) if reads_distiller(batch.rules) else batch.betas
    gated = rule_rows(batch.rules, reads_distiller, batch.betas.device)
    return batch.betas if gated is None else torch.where(gated, batch.betas * ex.gate.factor(batch.slots),
                                                         batch.betas)


def tilted_candidates(ex: Explorer, batch: StepBatch, h_hat: Tensor) -> Tilted:
    """Candidates and tilt for the prediction `h_hat` (the exact check calls this too)."""
    cfg = ex.config
    f = row_filters(batch, cfg.greedy_min_p)
    cand = filtered_candidates(ex, batch, f)
    # Tilt the candidates only: d = ĥ·W_U[v] (with tilt_bound: its spread bounded by the model's
    #    own, reweight.bounded_tilt), at strength β·g where g is the group's fit (gate.py; 1 without
    #    fit_gate). The noise control reads W_U·ε (ε: Gaussian of the error's norm), gated like d; the
    #    other controls read a random prior or the group's token counts instead of d, ungated.
    d = candidate_distiller_logits(h_hat, ex.lm_head_weight, cand.ids, ex.d_method, ex.d_machine)
    signals = {"distiller": d}
    needed = signals_needed(batch.rules)
    if "noise" in needed:
        eps = error_noise(batch.target, h_hat, ex.generator)
        signals["noise"] = candidate_distiller_logits(eps, ex.lm_head_weight, cand.ids, ex.d_method, ex.d_machine)
    if "random" in needed:
        signals["random"] = ex.random_prior_on(cand.ids)
    if needed & {"presence", "frequency"}:
        counts = ex.group_counts_on(batch.slots, cand.ids)
        signals.update(presence=(counts > 0).float(), frequency=counts)
    betas = gated_betas(ex, batch)
    scores = reweighted_logits(cand.logits, signals, f.temperature, betas, batch.rules,
                               cfg.tilt_bound)
    applied = applies(ex, batch, betas, h_hat)
    if cand.partial is not None:
        applied = applied & ~cand.partial
    return Tilted(cand, scores, applied, h_hat, d)


def applies(ex: Explorer, batch: StepBatch, betas: Tensor, h_hat: Tensor) -> Tensor:
    """[R] bool: rows whose token ESamp draws (else the stock draw's)."""
    return ((batch.slots >= 0) & (betas > 0) & torch.isfinite(h_hat).all(-1)
            & (~batch.is_greedy | ex.config.apply_to_greedy))


def rule_rows(rules: str | Sequence[str], which: Callable[[str], bool], device: torch.device) -> Tensor | None:
    """The rows whose rule satisfies `which`: a 0-d bool for one rule, [R] for one per row; None when
    no row's does (decided on the host)."""
    names = [rules] if isinstance(rules, str) else list(rules)
    if not any(which(r) for r in names):
        return None
    if isinstance(rules, str):
        return torch.tensor(True, device=device)
    return host_mask([which(r) for r in names], device)


def latent_rows(ex: Explorer, batch: StepBatch) -> Tensor | None:
    """[R] bool: exploring rows mixed in latent space — latent_mixing on, a rule of the form
    ℓ + β·W_U·v, no top-k/top-p/min-p, not greedy. None when no row of the batch can be (host-side)."""
    latent_rule = rule_rows(batch.rules, lambda r: r in LATENT_VECTOR, batch.slots.device)
    if not ex.config.latent_mixing or latent_rule is None:
        return None
    vocab = ex.lm_head_weight.shape[0]
    return ((effective_top_k(batch.top_k, vocab) >= vocab) & (batch.top_p >= 1.0) & (batch.min_p <= 0.0)
            & ~batch.is_greedy & (batch.slots >= 0) & latent_rule)


def latent_vector(ex: Explorer, batch: StepBatch, h_hat: Tensor) -> Tensor:
    """v [R, H] fp32, the direction latent mixing adds: h − ĥ (contrastive), ε (the noise control)."""
    vector = batch.target.float() - h_hat
    noise_rows = rule_rows(batch.rules, lambda r: LATENT_VECTOR.get(r) == "noise", vector.device)
    if noise_rows is not None:
        vector = torch.where(noise_rows.reshape(-1, 1), error_noise(batch.target, h_hat, ex.generator), vector)
    return vector


def mix_latent(ex: Explorer, batch: StepBatch, h_hat: Tensor) -> tuple[Tensor, Tensor]:
    """The paper's latent mixing for unfiltered rows, after the engine's LM head: scores over the whole
    vocabulary ℓ' = ℓ + β·W_U·v/T (v = h − ĥ for the contrastive rule, i.e. (1+β)·ℓ − β·W_U·ĥ when
    ℓ = W_U·h/T; v = ε for the noise control), one more projection, no candidate set. The fallback of
    mix_before_head (a forward it could not enter). Returns (scores [R, V], applied [R])."""
    vector = latent_vector(ex, batch, h_hat)
    logp = batch.logits if batch.logits is not None else batch.probs.float().log()
    betas = gated_betas(ex, batch)
    scores = latent_scores(logp, ex.lm_head_weight, vector, batch.temperatures, betas)
    return scores, applies(ex, batch, betas, h_hat)


@dataclass
class HeadInput:
    """What mix_before_head hands back to the engine's forward."""

    hidden: Tensor  # [R, H] the states the LM head projects: h + β·g·v on the mixed rows, h elsewhere
    h_hat: Tensor  # [R, H] fp32 the prediction (explore_step reuses it: StepBatch.h_hat)
    mixed: Tensor  # [R] bool the rows mixed (StepBatch.premixed)


def mix_before_head(ex: Explorer, batch: StepBatch) -> HeadInput | None:
    """The paper's latent mixing where the paper does it (Alg. 1, App. E.2): on the final state, before
    the LM head. The engine calls it inside its forward with `batch.target` = the states its LM head is
    about to project (no logits yet). For the rows latent_rows selects that ESamp applies to, h becomes
    h_mix = h + β·g·v = (1+β)·h − β·g·ĥ (contrastive), so the engine's one LM-head pass, its logit
    processors and its own draw give exactly mix_latent's ℓ + β·W_U·v/T: no second projection, no
    candidate set, no redraw. None when no row of the batch can mix (decided on the host)."""
    latent = latent_rows(ex, batch)
    if latent is None:
        return None
    batch = planned(ex, batch)
    h_hat = batch.h_hat if batch.h_hat is not None else predict(ex, batch)  # given: predict_beside's
    betas = gated_betas(ex, batch)
    mixed = latent & applies(ex, batch, betas, h_hat)
    h = batch.target
    # where, not a 0-scaled sum: a row with a non-finite ĥ is not mixed and must stay finite
    hidden = torch.where(mixed.unsqueeze(-1), h.float() + betas.float().unsqueeze(-1)
                         * latent_vector(ex, batch, h_hat), h.float()).to(h.dtype)
    return HeadInput(hidden, h_hat, mixed)


def explored_row_sets(ex: Explorer, batch: StepBatch) -> list[Tensor] | None:
    """CPU (host reads are free): the exploring rows, split into latent-mixed and candidate rows when
    the batch has both, so that each path works on its own rows only; None when every row explores
    by one path. (A group whose samples have different filters then trains once per path.)"""
    exploring = batch.slots >= 0
    latent = latent_rows(ex, batch)
    if latent is not None and bool(latent.any()) and not bool((latent == exploring).all()):
        return [latent.nonzero().squeeze(1), (exploring & ~latent).nonzero().squeeze(1)]
    if bool(exploring.all()):
        return None
    return [exploring.nonzero().squeeze(1)]


@dataclass
class Explored:
    """ESamp's draw for a batch: its tokens and which rows follow ESamp's distribution."""

    tokens: Tensor | None  # [R] ESamp's own draws (None: the engine drew every exploring row)
    drawn: Tensor  # [R] bool rows whose token is `tokens`
    applied: Tensor  # [R] bool rows sampled from ESamp's distribution (`drawn` and the premixed rows)
    rw: Tilted | None  # the candidate path, if it ran


def every_row_latent(ex: Explorer, batch: StepBatch) -> bool:
    """Host-side: every exploring row of the batch mixes in latent space (no filter in the batch by
    the engine's flags, and every row's rule mixes), so no row needs the candidate path."""
    return mixes_every_row(ex, batch.rules, batch.unfiltered)


def mixes_every_row(ex: Explorer, rules: str | Sequence[str], unfiltered: bool) -> bool:
    """every_row_latent from the plan's rules and the engine's batch flags alone (no tensors)."""
    names = [rules] if isinstance(rules, str) else rules
    return ex.config.latent_mixing and unfiltered and all(r in LATENT_VECTOR for r in names)


def sample_explored(ex: Explorer, batch: StepBatch, h_hat: Tensor) -> Explored:
    """Candidates and tilt (or latent mixing for unfiltered rows), then the draw with ESamp's
    own generator (greedy: argmax). Rows the engine mixed before its LM head (`batch.premixed`) are
    not drawn again: the engine's draw from W_U·h_mix is theirs."""
    latent = latent_rows(ex, batch)
    premixed = batch.premixed if latent is not None else None
    all_latent = latent is not None and (every_row_latent(ex, batch)
                                         or (ex.host_reads.free and bool(latent.all())))  # host read: CPU only
    rw = tokens = drawn = None
    if not all_latent:
        rw = tilted_candidates(ex, batch, h_hat)
        tokens = draw_tokens(rw.scores, rw.cand.ids, batch.is_greedy, ex.generator, ex.backend)
        drawn = rw.applied
    if latent is not None and (all_latent or not ex.host_reads.free):
        if premixed is not None:
            latent_drawn = torch.zeros_like(latent)
        else:
            scores, latent_drawn = mix_latent(ex, batch, h_hat)
            vocab_ids = torch.arange(scores.shape[1], device=scores.device).expand_as(scores)
            latent_tokens = draw_tokens(scores, vocab_ids, batch.is_greedy, ex.generator, ex.backend)
            tokens = latent_tokens if tokens is None else torch.where(latent, latent_tokens, tokens)
        drawn = latent_drawn if drawn is None else torch.where(latent, latent_drawn, drawn)
    applied = drawn if premixed is None else drawn | premixed
    return Explored(tokens, drawn, applied, rw)


def with_stock_rows(ex: Explorer, explored: Explored, stock_sample: Callable[[], Tensor]) -> Tensor:
    """ESamp's tokens where it drew, the engine's stock draw elsewhere. The stock draw is skipped when
    ESamp redrew every row and host reads are free (CPU): it would be discarded whole, and on CPU it is
    SGLang's full-vocabulary sort per row, ~26 % of a SmolLM2 decode step (docs/performance.md).
    Skipping it leaves SGLang's CPU generator unadvanced for that step, so stock rows of later batches
    are not draw-for-draw those of a stock server (each is still a stock draw, from the same
    distribution)."""
    if explored.tokens is not None and ex.host_reads.free and bool(explored.drawn.all()):  # host read: CPU
        return explored.tokens
    stock_tokens = stock_sample()
    if explored.tokens is None:
        return stock_tokens
    return torch.where(explored.drawn, explored.tokens.to(stock_tokens.dtype), stock_tokens)


def record_draw(ex: Explorer, batch: StepBatch, has_slot: Tensor, tokens: Tensor, explored: Explored) -> None:
    """Telemetry of the draw: the group's token counts (baseline rules), which rows ESamp sampled,
    truncation and the correlation of d with the model's logits on the candidates."""
    ex.count_group_tokens(batch.slots, tokens, has_slot)
    rw = explored.rw
    if rw is not None:
        corr, corr_ok = candidate_corr(rw.d, rw.cand.logits, rw.cand.keep)
        truncated = rw.cand.truncated
    else:  # latent mixing: no candidate set, nothing truncated
        corr = truncated = corr_ok = torch.zeros_like(has_slot)
    ex.telemetry.record_candidates(batch.slots, has_slot, explored.applied, truncated, corr, corr_ok)


def record_fit(ex: Explorer, slots: Tensor, has_slot: Tensor, h_hat: Tensor, target: Tensor) -> None:
    """The held-out fit of the prediction made before training: telemetry and the group's fit gate."""
    fit = row_fit(slots, has_slot, h_hat, target, ex.telemetry.sink)  # computed once for both
    ex.telemetry.record_fit(fit)
    ex.gate.update_fit(fit)


def learn_from_step(ex: Explorer, plan: StepPlan, source: Tensor, target: Tensor, h_hat: Tensor,
                    has_slot: Tensor) -> None:
    """After the draw: the fit of ĥ (record_fit), then a training step on this step's (source, target)
    pairs for the rows whose group trains (the trainer's cadence decides when it runs). The exact
    check replays a branch's decode steps through this too."""
    record_fit(ex, plan.slots, has_slot, h_hat, target)
    if ex.config.training and (plan.layout is None or plan.layout.train is not None):
        trains = has_slot if plan.train is None else has_slot & plan.train
        ex.trainer.schedule(source, target, plan.slots, trains,
                            layout=None if plan.layout is None else plan.layout.train)
