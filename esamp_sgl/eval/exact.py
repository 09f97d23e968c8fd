"""Exact pass@n and distinct answers: enumerate the sampler's whole candidate tree, no sampling noise.

A sampled pass@k comparison on 20-40 tasks is dominated by sampling noise. For short answers (the
arithmetic tasks: " 1", "2", "\\n") the tree of everything the sampler can produce under min-p is small
enough to enumerate, so every number here is an exact expectation:

* each tree node is one decode position; its children are the candidates that survive the row's
  filters (min-p at T), each with the probability the sampler would give it under each arm;
* an answer is the integer at the start of the text up to the first newline ("none" if there is
  none); a path ends at a newline token or EOS, or is scored as it is at `depth` tokens;
* per task and arm: the answer distribution p_a, pass@1 = p_correct, pass@n = 1 − (1 − p_correct)^n,
  E[distinct answers among n] = Σ_a 1 − (1 − p_a)^n, P(1-digit answer); then mean ± s.e. over tasks
  and paired differences vs the stock arm.

The ESamp arms call the server's own code: `esamp_sgl.core.step.tilted_candidates` gives what the server samples
from at a node, and the decode steps of a node's ancestors are replayed with the server's per-step
recipe after sampling (telemetry, the fit gate's held-out update, then training), starting from the
group's state after its prefill warm start. Approximations (those of
shared/reference/exact-passk-analysis.py):

* a branch's Distiller has seen that branch's own path only. In the server the n samples of a
  request share one Distiller trained on all n rows; here the n draws are independent given the
  distribution, which is what makes pass@n = 1 − (1 − p)^n exact for the tree;
* children whose path probability is below `prune` under every arm are dropped (the dropped mass is
  reported per arm, and the kept answer mass is renormalised, as the reference does);
* group_presence / group_frequency (they read the sibling samples' tokens) and svd_warm_start (not
  wired into the server) are not supported.

Arms: `stock`, or `esamp[:field=value,...]` where every field is an `ESampConfig` field (validated by
ESampConfig itself). `esamp` alone is the server's default ESampConfig(). Each ESamp arm gets its own
Explorer; the model's forward is shared by all arms (one tree expansion per task).
"""

from __future__ import annotations

import argparse
import functools
import itertools
import math
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
from pydantic import ValidationError
from torch import Tensor

from esamp_sgl.core.candidates import candidate_set
from esamp_sgl.core.config import ESampConfig
from esamp_sgl.core.explorer import Explorer
from esamp_sgl.core.rules import RULE_SIGNAL
from esamp_sgl.core.plan import StepPlan
from esamp_sgl.core.step import StepBatch, learn_from_step, predict, tilted_candidates

STOCK = "stock"
# Rules whose signal is the sibling samples' tokens: not a function of one branch's path.
UNSUPPORTED_RULES = ("group_presence", "group_frequency")
# Execution-only settings, fixed for the replay: one group per Explorer, inline training on the CPU.
RUN_OVERRIDES = {"max_groups": 1, "train_mode": "sync", "backend": "torch"}
NONE_ANSWER = "none"
_ANSWER = re.compile(r"\s*(-?\d+)")
_ONE_DIGIT = re.compile(r"-?\d")

METRICS = ("pass_at_1", "pass_at_n", "distinct", "one_digit")


# -- arms -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ExactArm:
    """One arm: a name (its normalised spec) and an ESampConfig, or None for stock sampling."""

    name: str
    config: ESampConfig | None = None

    @property
    def is_stock(self) -> bool:
        return self.config is None

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "config": None if self.config is None else self.config.model_dump()}


def parse_arm(spec: str) -> ExactArm:
    """`stock` or `esamp[:field=value,...]`; raises ValueError naming the arm and the field."""
    text = spec.strip()
    kind, colon, rest = text.partition(":")
    kind = kind.strip()
    if kind == STOCK:
        if rest.strip():
            raise ValueError(f"arm {text!r}: 'stock' takes no settings (temperature and min-p are "
                             "--temperature and --min-p, shared by every arm)")
        return ExactArm(STOCK)
    if kind != "esamp":
        raise ValueError(f"arm {text!r} must be 'stock' or 'esamp[:field=value,...]' with ESampConfig "
                         "fields, e.g. 'esamp:beta=3,rule=compensated,tilt_bound=1'")
    fields: dict[str, str] = {}
    for item in (s.strip() for s in rest.split(",")):
        if not item:
            continue
        key, eq, value = (s.strip() for s in item.partition("="))
        if not eq or not key or not value:
            raise ValueError(f"arm {text!r}: {item!r} is not field=value")
        if key not in ESampConfig.model_fields:
            raise ValueError(f"arm {text!r}: unknown ESampConfig field {key!r}; fields: "
                             + ", ".join(ESampConfig.model_fields))
        if key in fields:
            raise ValueError(f"arm {text!r}: field {key!r} is given twice")
        fields[key] = value
    try:
        config = ESampConfig(**fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        message = str(first["msg"]).removeprefix("Value error, ")
        raise ValueError(f"arm {text!r}: {message}") from None
    if config.rule in UNSUPPORTED_RULES:
        raise ValueError(f"arm {text!r}: esamp_rule {config.rule!r} reads the sibling samples' tokens, "
                         "which the exact tree (independent branches) cannot represent")
    if config.svd_warm_start:
        raise ValueError(f"arm {text!r}: esamp_svd_warm_start is not wired into the server; leave it false")
    name = "esamp" + (":" + ",".join(f"{k}={v}" for k, v in fields.items()) if fields else "")
    return ExactArm(name, config)


# The levers of the server-wide config, each moved alone from the β=3 arm (whose other fields are the
# defaults: source_layer 2, residual source, 50 warm-start steps, 1 train step, tilt_bound 1, gate_r2_full
# 0.5, fit gate on), plus the two controls that read no Distiller.
_B3 = "esamp:beta=3"
PRESETS: dict[str, list[str]] = {
    "defaults": [
        STOCK,
        "esamp",
        _B3,
        # the raw, ungated tilt of the analysis (shared/reference/esamp-signal-analysis.md: pass@16 0.50)
        f"{_B3},tilt_bound=10,fit_gate=false,prefill_warm_start=false",
        "esamp:rule=random_prior,beta=3",
        "esamp:rule=temperature_after_truncation,beta=0.5",
        "esamp:rule=temperature_after_truncation,beta=1",
    ],
    "levers": [
        STOCK,
        "esamp:rule=temperature_after_truncation,beta=0.3",
        "esamp:rule=temperature_after_truncation,beta=1",
        "esamp",
        _B3,
        *(f"{_B3},source_layer={layer}" for layer in (1, 4, 8)),
        f"{_B3},source_site=first_input_norm",
        *(f"{_B3},warm_start_steps={steps}" for steps in (20, 150)),
        f"{_B3},prefill_warm_start=false",
        f"{_B3},train_steps_per_decode=3",
        *(f"{_B3},tilt_bound={bound}" for bound in (0.5, 2)),
        f"{_B3},fit_gate=false",
        *(f"{_B3},gate_r2_full={r2}" for r2 in (0.25, 1.0)),
        "esamp:rule=random_prior,beta=3",
    ],
}


# The paper's method (issue 20), run with --min-p 0.1 --temperature 1 (the tree needs a filter): its rule,
# its noise control, and the sharpening the rule contains — `sharpen` at β 0.25 is (1+β)·ℓ over the same
# candidates, i.e. stock at T = 1/(1+β) = 0.8 after truncation at T 1 — and today's default.
PRESETS["paper"] = [
    STOCK,
    "esamp:profile=paper",
    "esamp:profile=paper,rule=noise",
    "esamp:rule=sharpen,beta=0.25",
    "esamp:profile=bounded",
]

PRESET_NOTES: dict[str, list[str]] = {
    "paper": ["Run at --min-p 0.1 --temperature 1. `esamp:rule=sharpen,beta=0.25` is stock at T 0.8 over the "
              "T-1 candidates (what (1+β)·ℓ − β·d becomes when d carries nothing); the noise arm draws one "
              "Gaussian vector per node (an expectation over that noise is not enumerated)."],
    "defaults": ["`esamp:beta=3,tilt_bound=10,fit_gate=false,prefill_warm_start=false` is the raw, ungated "
                 "tilt of shared/reference/esamp-signal-analysis.md (its compensated β=3: pass@16 0.503, "
                 "E[distinct] 5.11)."],
    "levers": ["Each lever is moved alone from `esamp:beta=3`, which is also the row of each lever's default "
               "value (source_layer 2, residual source, warm_start_steps 50, train_steps_per_decode 1, "
               "tilt_bound 1, gate_r2_full 0.5, fit gate on)."],
}


def parse_arms(text: str) -> list[ExactArm]:
    """A preset name or ';'-separated arm specs; names must be distinct."""
    specs = PRESETS.get(text.strip()) or [s for s in text.split(";") if s.strip()]
    if not specs:
        raise ValueError(f"no arms given; use a preset ({', '.join(PRESETS)}) or ';'-separated specs")
    arms = [parse_arm(s) for s in specs]
    names = [a.name for a in arms]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup:
        raise ValueError(f"arm {dup!r} is given twice")
    return arms


# -- metrics of one answer distribution ---------------------------------------------------------------------
def answer_of(text: str) -> str:
    """The integer at the start of the first line (what the arithmetic tasks grade), else 'none'."""
    m = _ANSWER.match(text.split("\n")[0])
    return m.group(1) if m else NONE_ANSWER


def pass_at_n(p_correct: float, n: int) -> float:
    """P(at least one of n independent draws is correct)."""
    return 1.0 - (1.0 - p_correct) ** n


def expected_distinct(dist: dict[str, float], n: int) -> float:
    """E[number of distinct answers among n independent draws] = Σ_a P(a drawn at least once)."""
    return sum(1.0 - (1.0 - p) ** n for p in dist.values())


def one_digit_mass(dist: dict[str, float]) -> float:
    return sum(p for a, p in dist.items() if _ONE_DIGIT.fullmatch(a))


def normalised(answers: dict[str, float]) -> dict[str, float]:
    total = sum(answers.values())
    return {a: p / total for a, p in answers.items()} if total > 0 else {}


def task_metrics(dist: dict[str, float], correct: str, n: int) -> dict[str, float]:
    p = dist.get(correct, 0.0)
    return {"pass_at_1": p, "pass_at_n": pass_at_n(p, n), "distinct": expected_distinct(dist, n),
            "one_digit": one_digit_mass(dist)}


def mean_sem(values: Sequence[float]) -> dict[str, Any]:
    """Mean and standard error over tasks (sem None below two tasks)."""
    k = len(values)
    mean = sum(values) / k if k else float("nan")
    if k < 2:
        return {"mean": mean, "sem": None, "tasks": k}
    var = sum((v - mean) ** 2 for v in values) / (k - 1)
    return {"mean": mean, "sem": math.sqrt(var / k), "tasks": k}


# -- the model's side: taps and the tree's forward passes -----------------------------------------------------
def source_key(config: ESampConfig) -> tuple:
    return ("first_input_norm",) if config.source_site == "first_input_norm" else ("residual", config.source_layer)


def target_key(config: ESampConfig) -> tuple:
    return (config.target_site,)


def tap(model: Any, hidden_states: Sequence[Tensor], key: tuple) -> Tensor:
    """A tap as the server takes it, from HF's output_hidden_states (hs[0] = embeddings, hs[i] = the
    residual entering layer i, hs[-1] = after the final norm); same shape as one hidden state."""
    layers = model.model.layers
    if key[0] == "residual":
        return hidden_states[key[1]]
    if key[0] == "first_input_norm":
        return layers[0].input_layernorm(hidden_states[0])
    if key[0] == "final_norm":
        return hidden_states[-1]
    if key[0] == "last_input_norm":
        return layers[-1].input_layernorm(hidden_states[len(layers) - 1])
    raise ValueError(f"unknown tap {key!r}")


@dataclass(eq=False)
class Node:
    """One decode position of the tree: the path so far, its probability under each arm, and the
    model's outputs there (scaled logits, the taps any arm reads)."""

    tokens: tuple[int, ...]
    parent: "Node | None"
    prob: dict[str, float]
    row: int = -1  # row in its level's forward (and KV cache)
    logits: Tensor | None = None  # [V] z / T (dropped once the node is expanded)
    taps: dict[tuple, Tensor] = field(default_factory=dict)  # [H] each

    def lineage(self) -> list["Node"]:
        """[root, ..., self]."""
        chain, node = [], self
        while node is not None:
            chain.append(node)
            node = node.parent
        return chain[::-1]


def _forward(model: Any, input_ids: Tensor, cache: Any) -> tuple[Tensor, tuple[Tensor, ...], Any]:
    out = model(input_ids=input_ids, past_key_values=cache, use_cache=True, output_hidden_states=True)
    return out.logits.float(), out.hidden_states, out.past_key_values


def _fill(model: Any, nodes: Sequence[Node], logits: Tensor, hidden: Sequence[Tensor], keys: Iterable[tuple],
          temperature: float) -> None:
    """Store each node's last-position outputs (row r of the batch)."""
    last = logits[:, -1] / temperature
    taps = {k: tap(model, hidden, k)[:, -1].float() for k in keys}
    for r, node in enumerate(nodes):
        node.row, node.logits = r, last[r]
        node.taps = {k: t[r] for k, t in taps.items()}


# -- what each arm samples from at a node ---------------------------------------------------------------------
@dataclass(frozen=True)
class Filters:
    temperature: float
    min_p: float
    top_k: int = 0
    top_p: float = 1.0


def _row_tensors(nodes: Sequence[Node], f: Filters) -> dict[str, Tensor]:
    r = len(nodes)
    return {"logits": torch.stack([n.logits for n in nodes]), "temperatures": torch.full((r,), f.temperature),
            "top_k": torch.full((r,), f.top_k, dtype=torch.int64), "top_p": torch.full((r,), f.top_p),
            "min_p": torch.full((r,), f.min_p)}


def candidate_probs(ids: Tensor, scores: Tensor) -> dict[int, float]:
    """One row: what the sampler draws from, softmax over the finite scores (in float64, so that equal
    inputs give equal outputs and tiny path probabilities keep their precision)."""
    ok = torch.isfinite(scores)
    p = torch.softmax(scores[ok].double(), -1)
    return dict(zip(ids[ok].tolist(), p.tolist()))


class StockArm:
    """Stock sampling: the softmax over the candidates at T, the same candidate_set call as reweight's."""

    def __init__(self, arm: ExactArm, filters: Filters) -> None:
        self.arm, self.filters = arm, filters
        self.max_candidates = ESampConfig().max_candidates

    def start_task(self, key: str, prompt_taps: dict[tuple, Tensor]) -> dict[str, Any]:
        return {}

    def probs(self, parent: Node | None, nodes: Sequence[Node]) -> list[dict[int, float]]:
        t = _row_tensors(nodes, self.filters)
        cand = candidate_set(t["logits"], t["top_k"], t["top_p"], t["min_p"], self.max_candidates, trim=True)
        return [candidate_probs(cand.ids[r], cand.logits[r]) for r in range(len(nodes))]

    def close(self) -> None:
        pass


def _state_tensors(ex: Explorer) -> list[Tensor]:
    """Every tensor a decode step changes that a later step's sampling reads: the Distiller's
    parameters, the optimiser's moments and step counts, the fit gate (its EMAs, its mean target and
    the positions behind them, which open it). Telemetry is write-only for sampling and is not restored."""
    tr, g = ex.trainer, ex.gate
    return [*ex.bank.params.values(), *tr.exp_avg.values(), *tr.exp_avg_sq.values(), tr.step_count,
            g.mean_target, g.stats]


def snapshot(ex: Explorer) -> list[Tensor]:
    return [t.clone() for t in _state_tensors(ex)]


def restore(ex: Explorer, state: list[Tensor]) -> None:
    for t, s in zip(_state_tensors(ex), state, strict=True):
        t.copy_(s)


class ESampArm:
    """One ESamp arm on the current task: its own Explorer with one group.

    The state after the prefill warm start is kept; a node is reweighted in the state its branch would
    have there, i.e. after replaying the decode steps of its ancestors from that state. Siblings share
    it, and the frontier is in depth-first order, so a stack of (ancestor, state after its step) makes
    each ancestor's step run once per level instead of once per node."""

    def __init__(self, arm: ExactArm, filters: Filters, hidden: int, num_layers: int, lm_head: Tensor) -> None:
        assert arm.config is not None
        self.arm, self.filters = arm, filters
        config = arm.config.model_copy(update=RUN_OVERRIDES)
        config.validate_for_model(hidden, num_layers)
        self.ex = Explorer(config, hidden, lm_head, device="cpu")
        self.source, self.target = source_key(config), target_key(config)
        # Controls that read no Distiller (temperature after truncation, the random prior) sample the
        # same whatever the group's state: skip the replay for them.
        self.reads_state = RULE_SIGNAL[config.rule] == "distiller"
        self.key: str | None = None
        self.slot = -1
        self.warm: list[Tensor] = []
        self.stack: list[tuple[Node, list[Tensor]]] = []

    def start_task(self, key: str, prompt_taps: dict[tuple, Tensor]) -> dict[str, Any]:
        """A fresh group for the task (as a request gets), warm-started on the prompt's pairs if the
        config says so (the last warm_start_max_positions positions); returns its telemetry."""
        if self.key is not None:
            self.ex.leave_group(self.key)
        slot = self.ex.join_group(key)
        assert slot is not None
        self.key, self.slot = key, slot
        keep = self.ex.config.warm_start_max_positions
        self.ex.warm_start_group(key, prompt_taps[self.source][-keep:], prompt_taps[self.target][-keep:])
        self.warm, self.stack = snapshot(self.ex), []
        t = {k: self.ex.report(key).get(k) for k in ("gate", "gate_r2", "warm_start_r2", "warm_start_steps")}
        if not self.reads_state:
            t["gate"] = None  # β is applied ungated
        return t

    def probs(self, parent: Node | None, nodes: Sequence[Node]) -> list[dict[int, float]]:
        if self.reads_state:
            self._goto(parent)
        r = len(nodes)
        t = _row_tensors(nodes, self.filters)
        batch = StepBatch(
            logits=t["logits"], temperatures=t["temperatures"], top_k=t["top_k"], top_p=t["top_p"],
            min_p=t["min_p"], is_greedy=torch.zeros(r, dtype=torch.bool),
            plan=StepPlan(slots=torch.full((r,), self.slot, dtype=torch.int64),
                          betas=torch.full((r,), self.ex.config.beta), any_active=True, rules=self.ex.config.rule),
            source=torch.stack([n.taps[self.source] for n in nodes]),
            target=torch.stack([n.taps[self.target] for n in nodes]))
        rw = tilted_candidates(self.ex, batch, predict(self.ex, batch))
        # Rows ESamp leaves alone (β·g = 0, ...) are sampled stock: softmax over the kept logits.
        return [candidate_probs(rw.cand.ids[i], rw.scores[i] if bool(rw.applied[i]) else rw.cand.logits[i])
                for i in range(r)]

    def _goto(self, node: Node | None) -> None:
        """Put the Explorer in the state after the decode steps of `node` and its ancestors."""
        chain = [] if node is None else node.lineage()
        shared = 0
        while shared < min(len(chain), len(self.stack)) and self.stack[shared][0] is chain[shared]:
            shared += 1
        del self.stack[shared:]
        restore(self.ex, self.stack[-1][1] if self.stack else self.warm)
        for step in chain[shared:]:
            self._replay(step)
            self.stack.append((step, snapshot(self.ex)))

    def _replay(self, node: Node) -> None:
        """The server's recipe after a token is sampled at `node` (step.learn_from_step): the held-out
        fit of the prediction made before training, then training on this step's pair."""
        ex = self.ex
        plan = StepPlan(slots=torch.tensor([self.slot]), betas=torch.full((1,), ex.config.beta), any_active=True)
        source, target = node.taps[self.source][None], node.taps[self.target][None]
        ex.trainer.wait()
        h_hat = ex.bank(source, plan.slots)
        learn_from_step(ex, plan, source, target, h_hat, torch.ones(1, dtype=torch.bool))

    def close(self) -> None:
        self.ex.close()


# -- one task's tree ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TreeSettings:
    filters: Filters
    depth: int
    prune: float


def _sibling_groups(frontier: Sequence[Node]) -> Iterable[tuple[Node | None, list[Node]]]:
    for parent, group in itertools.groupby(frontier, key=lambda n: n.parent):
        yield parent, list(group)


def expand_task(model: Any, is_stop: Callable[[int], bool], decode: Callable[[Sequence[int]], str],
                prompt_ids: list[int], runners: dict[str, Any], tap_keys: set[tuple], key: str,
                s: TreeSettings) -> dict[str, Any]:
    """Enumerate one prompt's tree level by level (one batched forward per level, shared by the arms).
    Returns per arm the unnormalised answer mass and the pruned mass, the warm-start telemetry, and the
    number of nodes expanded."""
    names = list(runners)
    logits, hidden, cache = _forward(model, torch.tensor([prompt_ids]), None)
    prompt_taps = {k: tap(model, hidden, k)[0].float() for k in tap_keys}
    telemetry = {name: run.start_task(key, prompt_taps) for name, run in runners.items()}
    root = Node((), None, {name: 1.0 for name in names})
    _fill(model, [root], logits, hidden, tap_keys, s.filters.temperature)
    answers: dict[str, dict[str, float]] = {name: {} for name in names}
    pruned = {name: 0.0 for name in names}
    frontier, nodes = [root], 0
    for level in range(s.depth):
        dists: dict[str, list[dict[int, float]]] = {name: [] for name in names}
        for parent, group in _sibling_groups(frontier):
            for name, run in runners.items():
                dists[name] += run.probs(parent, group)
        nodes += len(frontier)
        children: list[Node] = []
        for i, node in enumerate(frontier):
            ids = list(dict.fromkeys(t for name in names for t in dists[name][i]))  # stock's order first
            for tok in ids:
                prob = {name: node.prob[name] * dists[name][i].get(tok, 0.0) for name in names}
                if max(prob.values()) < s.prune:
                    for name in names:
                        pruned[name] += prob[name]
                    continue
                tokens = node.tokens + (tok,)
                if is_stop(tok) or level == s.depth - 1:
                    answer = answer_of(decode(tokens))
                    for name in names:
                        answers[name][answer] = answers[name].get(answer, 0.0) + prob[name]
                else:
                    children.append(Node(tokens, node, prob))
            node.logits = None
        if not children:
            break
        cache.reorder_cache(torch.tensor([c.parent.row for c in children]))
        logits, hidden, cache = _forward(model, torch.tensor([[c.tokens[-1]] for c in children]), cache)
        _fill(model, children, logits, hidden, tap_keys, s.filters.temperature)
        frontier = children
    return {"answers": answers, "pruned": pruned, "telemetry": telemetry, "nodes": nodes}


# -- the whole computation ------------------------------------------------------------------------------------
def _stop_predicate(tokenizer: Any) -> Callable[[int], bool]:
    eos = tokenizer.eos_token_id

    @functools.lru_cache(maxsize=None)
    def is_stop(token: int) -> bool:
        return token == eos or "\n" in tokenizer.decode([token])
    return is_stop


def _check_settings(n: int, min_p: float, temperature: float, depth: int, prune: float) -> None:
    if not (isinstance(n, int) and 1 <= n <= 1_000_000):
        raise ValueError(f"n must be an integer in [1, 1000000], got {n!r}")
    if not 0.0 < min_p <= 1.0:
        raise ValueError(f"min_p must be in (0, 1] (min-p keeps the tree finite), got {min_p!r}")
    if not 0.0 < temperature <= 100.0:
        raise ValueError(f"temperature must be in (0, 100], got {temperature!r}")
    if not (isinstance(depth, int) and 1 <= depth <= 16):
        raise ValueError(f"depth must be an integer in [1, 16], got {depth!r}")
    if not 0.0 <= prune < 1.0:
        raise ValueError(f"prune must be in [0, 1), got {prune!r}")


@torch.no_grad()
def exact_passk(model: Any, tokenizer: Any, tasks: Sequence[dict[str, Any]],
                arms: Sequence[ExactArm | str], *, n: int = 16, min_p: float = 0.05, temperature: float = 1.0,
                depth: int = 4, prune: float = 1e-4,
                progress: Callable[[int, int, float], None] | None = None) -> dict[str, Any]:
    """Exact answer distributions and their pass@1, pass@n, E[distinct], P(1-digit) per arm and task
    (tasks: {"prompt", "answer"}; completion prompts, tokenized without a chat template), summarised
    as mean ± s.e. over tasks and paired differences vs the stock arm (when there is one)."""
    _check_settings(n, min_p, temperature, depth, prune)
    arms = [parse_arm(a) if isinstance(a, str) else a for a in arms]
    names = [a.name for a in arms]
    if len(set(names)) != len(names):
        raise ValueError(f"arm names must be distinct, got {names}")
    filters = Filters(temperature=temperature, min_p=min_p)
    settings = TreeSettings(filters, depth, prune)
    lm_head = model.lm_head.weight.detach().float()
    hidden, num_layers = lm_head.shape[1], len(model.model.layers)
    runners = {a.name: StockArm(a, filters) if a.is_stock
               else ESampArm(a, filters, hidden, num_layers, lm_head) for a in arms}
    tap_keys = {k for a in arms if not a.is_stock for k in (source_key(a.config), target_key(a.config))}
    is_stop = _stop_predicate(tokenizer)
    per_task = []
    started = time.time()
    try:
        for i, task in enumerate(tasks):
            tree = expand_task(model, is_stop, tokenizer.decode, tokenizer.encode(task["prompt"]), runners,
                               tap_keys, f"task-{i}", settings)
            row: dict[str, Any] = {"answer": str(task["answer"]), "prompt": task["prompt"],
                                   "nodes": tree["nodes"], "arms": {}}
            for name in names:
                dist = normalised(tree["answers"][name])
                row["arms"][name] = {**task_metrics(dist, row["answer"], n),
                                     "answers": dict(sorted(dist.items(), key=lambda kv: -kv[1])),
                                     "pruned_mass": tree["pruned"][name], "telemetry": tree["telemetry"][name]}
            per_task.append(row)
            if progress:
                progress(i + 1, len(tasks), time.time() - started)
    finally:
        for run in runners.values():
            run.close()
    return {"config": {"n": n, "min_p": min_p, "temperature": temperature, "depth": depth, "prune": prune,
                       "tasks": len(tasks), "arms": [a.describe() for a in arms],
                       "run_overrides": RUN_OVERRIDES, "wall_s": time.time() - started},
            **summarize(per_task, names), "per_task": per_task}


def summarize(per_task: Sequence[dict[str, Any]], names: Sequence[str]) -> dict[str, Any]:
    """Mean ± s.e. over tasks per arm, and paired (per task) differences vs the stock arm."""
    summary = {name: {m: mean_sem([t["arms"][name][m] for t in per_task]) for m in METRICS} for name in names}
    for name in names:  # None where the rule is not gated (stock, the controls that read no Distiller)
        gates = [t["arms"][name]["telemetry"].get("gate") for t in per_task]
        summary[name]["gate_at_first_token"] = None if None in gates else mean_sem(gates)
    vs_stock = None
    if STOCK in names:
        vs_stock = {name: {m: mean_sem([t["arms"][name][m] - t["arms"][STOCK][m] for t in per_task])
                           for m in METRICS} for name in names if name != STOCK}
    return {"summary": summary, "vs_stock": vs_stock}


# -- outputs and the command line -----------------------------------------------------------------------------
def _fmt(stat: dict[str, Any] | None, digits: int = 3, signed: bool = False) -> str:
    if not stat or stat["mean"] is None or math.isnan(stat["mean"]):
        return "—"
    spec = f"{'+' if signed else ''}.{digits}f"
    return format(stat["mean"], spec) + ("" if stat["sem"] is None else f" ± {stat['sem']:.{digits}f}")


def markdown(result: dict[str, Any], command: str) -> str:
    from esamp_sgl.eval.report import markdown_table

    c = result["config"]
    n = c["n"]
    rows = []
    for arm in c["arms"]:
        name = arm["name"]
        s = result["summary"][name]
        d = (result["vs_stock"] or {}).get(name)
        rows.append([name, _fmt(s["pass_at_1"]), _fmt(s["pass_at_n"]), _fmt(s["distinct"], 2),
                     _fmt(s["one_digit"]), _fmt(d and d["pass_at_n"], signed=True),
                     _fmt(d and d["distinct"], 2, signed=True), _fmt(s["gate_at_first_token"], 2)])
    header = ["arm", "pass@1", f"pass@{n} ± s.e.", "E[distinct] ± s.e.", "P(1-digit)",
              f"Δ pass@{n} vs stock ± s.e.", "Δ E[distinct] vs stock ± s.e.", "gate at 1st token"]
    pruned = max((t["arms"][a["name"]]["pruned_mass"] for t in result["per_task"] for a in c["arms"]), default=0.0)
    return "\n".join([
        "# Exact pass@n over the min-p candidate tree", "", f"`{command}`", "",
        f"{c['tasks']} tasks; T {c['temperature']:g}, min-p {c['min_p']:g}; every path to a newline/EOS or "
        f"{c['depth']} tokens enumerated (branches below {c['prune']:g} under every arm pruned; the most mass "
        f"pruned for any arm and task: {pruned:.2g}); exact expectations over n = {n} independent draws. "
        "Mean ± s.e. over tasks; Δ = paired per-task difference vs stock. ESamp arms run the server's "
        "reweighting (esamp_sgl.core.step.tilted_candidates) with each branch's Distiller, optimiser and fit gate replayed "
        "along its own path from the group's state after the prefill warm start. `esamp` = the server "
        "default ESampConfig(); the other fields of an arm are the defaults too. gate = the fit gate "
        "β_eff/β at the first generated token.", "",
        markdown_table(header, rows), "", *(f"* {note}" for note in c.get("notes", [])),
        "* The n draws are independent given the distribution: the sibling samples' shared Distiller (the "
        "server trains one per request on all n rows) is not modelled; each branch's Distiller has seen only "
        "its own path.", ""])


def write_outputs(out: Path, result: dict[str, Any], command: str) -> None:
    from esamp_sgl.eval.report import write_json

    result = {**result, "config": {**result["config"], "command": command}}
    write_json(out / "exact.json", result)
    (out / "exact.md").write_text(markdown(result, command))


def main(argv: list[str]) -> int:
    """`esamp-sgl eval exact` (see --help)."""
    parser = argparse.ArgumentParser(
        prog="esamp-sgl eval exact",
        description="Exact pass@n, E[distinct answers] and P(1-digit answer) of stock and ESamp arms on the "
                    "generated arithmetic tasks, by enumerating the whole min-p candidate tree of the "
                    "answers (no server, no sampling noise; runs the model with transformers on the CPU).")
    parser.add_argument("--count", type=int, default=20, help="number of tasks (default 20)")
    parser.add_argument("--difficulty", type=int, default=1, help="arithmetic difficulty 1-5 (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="task generator seed (default 0)")
    parser.add_argument("--depth", type=int, default=4, help="tokens per answer path, 1-16 (default 4)")
    parser.add_argument("--n", type=int, default=16, help="draws per task for pass@n and E[distinct] (default 16)")
    parser.add_argument("--min-p", type=float, default=0.05, help="min-p, in (0, 1] (default 0.05)")
    parser.add_argument("--temperature", type=float, default=1.0, help="temperature, in (0, 100] (default 1)")
    parser.add_argument("--prune", type=float, default=1e-4,
                        help="drop branches below this probability under every arm, in [0, 1) (default 1e-4)")
    parser.add_argument("--arms", default="defaults",
                        help=f"a preset ({', '.join(PRESETS)}) or ';'-separated specs 'stock' / "
                             "'esamp:field=value,...' with ESampConfig fields (default: defaults)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--model-path", help="HF model folder (default: the bundled SmolLM2-135M-Instruct)")
    parser.add_argument("--output", required=True, help="directory for exact.json and exact.md")
    args = parser.parse_args(argv)
    bounds = {"count": (1, 10_000), "difficulty": (1, 5), "depth": (1, 16), "n": (1, 1_000_000),
              "threads": (1, 256), "seed": (0, 2**31 - 1)}
    for name, (lo, hi) in bounds.items():
        if not lo <= getattr(args, name) <= hi:
            parser.error(f"--{name} must be an integer in [{lo}, {hi}], got {getattr(args, name)}")
    for flag, value, ok, allowed in (("--min-p", args.min_p, 0 < args.min_p <= 1, "(0, 1]"),
                                     ("--temperature", args.temperature, 0 < args.temperature <= 100, "(0, 100]"),
                                     ("--prune", args.prune, 0 <= args.prune < 1, "[0, 1)")):
        if not ok:
            parser.error(f"{flag} must be in {allowed}, got {value:g}")
    try:
        arms = parse_arms(args.arms)
    except ValueError as exc:
        parser.error(f"--arms: {exc}")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from esamp_sgl.eval.tasks import arithmetic_tasks
    from esamp_sgl.launch.models import resolve_model_path

    torch.set_num_threads(args.threads)
    path = resolve_model_path(args.model_path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    for arm in arms:  # shape checks (source_layer < the model's layers) before the long run
        try:
            arm.config and arm.config.validate_for_model(model.config.hidden_size, model.config.num_hidden_layers)
        except ValueError as exc:
            parser.error(f"--arms: arm {arm.name!r}: {exc}")
    tasks = arithmetic_tasks(args.count, args.difficulty, args.seed)

    def progress(done: int, total: int, seconds: float) -> None:
        print(f"[exact] task {done}/{total}, {seconds:.0f} s", file=sys.stderr, flush=True)

    result = exact_passk(model, tokenizer, tasks, arms, n=args.n, min_p=args.min_p,
                         temperature=args.temperature, depth=args.depth, prune=args.prune, progress=progress)
    result["config"].update(model=str(path), count=args.count, difficulty=args.difficulty, seed=args.seed,
                            threads=args.threads, notes=PRESET_NOTES.get(args.arms.strip(), []))
    command = "esamp-sgl eval " + " ".join(["exact"] + argv)
    out = Path(args.output)
    write_outputs(out, result, command)
    print(Path(out / "exact.md").read_text(), file=sys.stderr)
    print(f"wrote {out}/exact.json, exact.md", file=sys.stderr)
    return 0
