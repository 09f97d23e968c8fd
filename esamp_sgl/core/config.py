"""ESamp configuration (server-wide) and per-request options.

Every field is validated by hand so that an error names the field as users spell it
(`esamp_<field>`, the CLI / custom_params name) and the allowed values, e.g.
``esamp_beta must be a finite number in [0, 10], got nan``. pydantic's ValidationError is a
ValueError, so callers can catch ValueError.

Defaults and why:
* rule = 'compensated', beta = 1.0: chosen from the evaluation in docs/results.md (SmolLM2-135M, CPU,
  12 creative prompts x n=8 x 32 tokens x 2 replicates, min-p 0.05, T=1; `esamp-sgl eval diversity`).
  Vendi gain at matched NLL over the stock min-p temperature curve: compensated β=1 +0.74 ± 0.17
  (wins 92 % of prompts), compensated β=3 +0.89 ± 0.15 (100 %), contrastive β=1 +0.84 ± 0.16 (100 %)
  — within noise of each other — but compensated β=1 has half the within-sample 3-gram repetition
  of the other two (0.034 vs 0.071/0.074), the highest distinct-2 and on-topic similarity of the
  three, and, not sharpening, leaves the user's temperature meaning what it says. The contrastive
  rule's sharpening also cost the most answer diversity in pass@k (distinct answers 3.7 vs 8.4 for
  stock). The earlier default (contrastive β=0.5) came from the probes, before this evaluation.
* source_layer = 2: the residual stream entering layer 2 (= output of decoder layer 1). It depends
  on the context, unlike the reference's first-layer input-norm output, which for RoPE models is a
  function of the current token id alone; it is what the probes used ("layer-1 source"), and
  the probes found the embedding-level source worse.
* target_site = 'final_norm': the normalised state that feeds the LM head, so d = W_U·ĥ is on the
  same scale as the model's logits. 'last_input_norm' reproduces the reference.
* optimizer Adam, lr 1e-3, one step per decode step: the reference's and the probes' setting.
* prefill / SVD warm starts off: probe 2 found that a warm start makes d more accurate but does not
  improve diversity (mixed sign, not significant); they stay one flag away.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Literal, Mapping

from pydantic import BaseModel, ConfigDict, field_validator

# The rule names come from the rule registry (esamp_sgl/core/rules.py: the ESamp rules contrastive and
# compensated, and the evaluation's controls and baselines); a rule registered there is accepted here.
from esamp_sgl.core.rules import rule_names

OPTIMIZERS = ("adam", "adamw", "sgd")
SOURCE_SITES = ("residual", "first_input_norm")
TARGET_SITES = ("final_norm", "last_input_norm")
BACKENDS = ("auto", "torch", "flashinfer")
TRAIN_MODES = ("auto", "sync", "cuda_stream")
# request: a request is its own fork group (its n samples share it); prompt: concurrent exploring requests
# with identical prompt token ids share one group (runtime_patch/grouping.py). An explicit esamp_group wins.
GROUP_BY_POLICIES = ("request", "prompt")

BETA_MAX = 10.0
DEFAULT_RULE = "compensated"
# Where each exploring request's telemetry appears: meta_info["esamp"] (and OpenAI metadata["esamp"]).
TELEMETRY_KEY = "esamp"
GROUP_KEY_MAX_CHARS = 128


def _show(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def check_number(name: str, value: Any, lo: float, hi: float, *, lo_open: bool = False,
                 allow_str: bool = False) -> float:
    """A finite real in [lo, hi] (or (lo, hi]); bools are rejected."""
    left = "(" if lo_open else "["
    what = f"{name} must be a finite number in {left}{lo:g}, {hi:g}]"
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"{what}, got {_show(value)}")
    if isinstance(value, str):
        if not allow_str:
            raise ValueError(f"{what}, got {_show(value)}")
        try:
            value = float(value)
        except ValueError:
            raise ValueError(f"{what}, got {_show(value)}") from None
    try:
        x = float(value)
    except OverflowError:  # an int beyond float range (Python callers; JSON parsers reject it earlier)
        x = math.inf if value > 0 else -math.inf
    if not math.isfinite(x) or x > hi or x < lo or (lo_open and x == lo):
        raise ValueError(f"{what}, got {x:g}" if math.isfinite(x) else f"{what}, got {x}")
    return x


def check_int(name: str, value: Any, lo: int, hi: int, *, allow_str: bool = False) -> int:
    """An integer in [lo, hi]; bools and non-integral floats are rejected."""
    what = f"{name} must be an integer in [{lo}, {hi}]"
    if isinstance(value, str) and allow_str:
        try:
            value = int(value.strip())
        except ValueError:
            raise ValueError(f"{what}, got {_show(value)}") from None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what}, got {_show(value)}")
    if not lo <= value <= hi:
        raise ValueError(f"{what}, got {value}")
    return value


def check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in allowed:
        listed = ", ".join(repr(a) for a in allowed)
        raise ValueError(f"{name} must be one of {listed}, got {_show(value)}")
    return value


def check_bool(name: str, value: Any, *, allow_str: bool = False) -> bool:
    if isinstance(value, bool):
        return value
    if allow_str and isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ValueError(f"{name} must be a boolean (true or false), got {_show(value)}")


@dataclass(frozen=True)
class FieldRule:
    """What a field accepts: kind 'float' ([lo, hi], or (lo, hi] with lo_open), 'int' ([lo, hi]),
    'choice' (one of `choices()`) or 'bool'; `doc` says what it does (docs/operations.md's table)."""

    kind: Literal["float", "int", "choice", "bool"]
    lo: float = 0.0
    hi: float = 0.0
    lo_open: bool = False
    choices: Callable[[], tuple[str, ...]] = tuple
    doc: str = ""

    def accepts(self) -> str:
        """The allowed values in words, as the validation errors state them."""
        if self.kind == "float":
            return f"{'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}]"
        if self.kind == "int":
            return f"integer in [{int(self.lo)}, {int(self.hi)}]"
        if self.kind == "choice":
            return ", ".join(f"`{c}`" for c in self.choices())
        return "true or false"

    def check(self, name: str, value: Any, *, allow_str: bool = False) -> Any:
        """The value as its type, or ValueError naming `name` and what is allowed."""
        if self.kind == "float":
            return check_number(name, value, self.lo, self.hi, lo_open=self.lo_open, allow_str=allow_str)
        if self.kind == "int":
            return check_int(name, value, int(self.lo), int(self.hi), allow_str=allow_str)
        if self.kind == "choice":
            return check_choice(name, value, self.choices())
        return check_bool(name, value, allow_str=allow_str)


def _one_of(*allowed: str, doc: str) -> FieldRule:
    return FieldRule("choice", choices=lambda: allowed, doc=doc)


# The one table of what each ESampConfig field accepts: the config, the per-request options, the DSL's
# gen() and the core's own constructors all validate through it (errors name the field as esamp_<field>).
FIELDS: dict[str, FieldRule] = {
    "beta": FieldRule("float", 0.0, BETA_MAX, doc="strength β (requests may override it)"),
    "rule": FieldRule("choice", choices=rule_names,
                      doc="the reweighting rule (requests may override it; esamp_sgl/core/rules.py)"),
    "rank": FieldRule("int", 1, 8192, doc="the Distiller's rank (at most the model's hidden size)"),
    "lr": FieldRule("float", 0.0, 1.0, lo_open=True, doc="learning rate of decode-time training"),
    "optimizer": _one_of(*OPTIMIZERS, doc="the Distiller's optimiser"),
    "weight_decay": FieldRule("float", 0.0, 1.0, doc="weight decay (adamw, sgd)"),
    "train_steps_per_decode": FieldRule("int", 1, 64, doc="optimiser steps per decode step"),
    "training": FieldRule("bool", doc="false: frozen Distillers (predict only; warm starts still apply)"),
    "tilt_bound": FieldRule("float", 0.0, 10.0, lo_open=True,
                            doc="a signal's spread over the candidates is at most this x the model's own"),
    "fit_gate": FieldRule("bool", doc="scale β by the group's measured fit (an unmeasured Distiller leaves tokens stock)"),
    "gate_r2_full": FieldRule("float", 0.0, 1.0, lo_open=True, doc="held-out R² at which the gate is fully open"),
    "gate_window": FieldRule("int", 1, 100_000, doc="steps over which the gate's fit is measured"),
    "source_layer": FieldRule("int", 0, 1023, doc="the layer whose input residual stream is the source"),
    "source_site": _one_of(*SOURCE_SITES, doc="where the source is tapped (`first_input_norm`: the paper's)"),
    "target_site": _one_of(*TARGET_SITES, doc="where the target is tapped (`last_input_norm`: the paper's)"),
    "max_groups": FieldRule("int", 1, 1 << 16, doc="bank slots: live fork groups that explore at once"),
    "apply_to_greedy": FieldRule("bool", doc="explore greedy rows too (over the tokens within greedy_min_p of the best)"),
    "greedy_min_p": FieldRule("float", 0.0, 1.0, lo_open=True, doc="the candidate filter of greedy rows"),
    "prefill_warm_start": FieldRule("bool", doc="train each group on its prompt's own positions first"),
    "warm_start_steps": FieldRule("int", 1, 10_000, doc="full-batch steps of the prefill warm start"),
    "warm_start_lr": FieldRule("float", 0.0, 1.0, lo_open=True, doc="learning rate of the prefill warm start"),
    "warm_start_max_positions": FieldRule("int", 1, 1 << 20, doc="last prompt positions used (and kept per prompt)"),
    "warm_start_prompts": FieldRule("int", 1, 1 << 16, doc="prompts whose pairs are kept for cached prompts"),
    "svd_warm_start": FieldRule("bool", doc="initialise Distillers from the model's FFN (rank-r SVD)"),
    "max_candidates": FieldRule("int", 1, 1 << 20, doc="cap on candidates per row (the most likely are kept)"),
    "backend": _one_of(*BACKENDS, doc="sampling kernels (`auto`: FlashInfer on CUDA when installed)"),
    "train_mode": _one_of(*TRAIN_MODES, doc="where training runs (`auto`: a CUDA side stream on GPU, inline on CPU)"),
    "seed": FieldRule("int", 0, (1 << 63) - 1, doc="seed of ESamp's own generator and the initial Distillers"),
    "group_by": _one_of(*GROUP_BY_POLICIES, doc="`prompt`: concurrent requests with identical prompts share a group"),
    "group_window_s": FieldRule("float", 0.0, 86_400.0, lo_open=True, doc="how long a prompt group stays open"),
    "group_max_members": FieldRule("int", 1, 1 << 16, doc="samples per prompt group"),
    "explore_all": FieldRule("bool", doc='explore every request that does not say `"esamp": false`'),
}


def check_field(field: str, value: Any, *, name: str | None = None, allow_str: bool = False) -> Any:
    """Validate one ESampConfig field's value; the error names it `name` (default esamp_<field>)."""
    return FIELDS[field].check(name or f"esamp_{field}", value, allow_str=allow_str)


def check_rank(rank: Any, hidden_size: int, why: str = "") -> int:
    """The Distiller's rank fits the model: an integer in [1, hidden_size] (`why` explains the bound)."""
    if isinstance(rank, int) and not isinstance(rank, bool) and 1 <= rank <= hidden_size:
        return rank
    raise ValueError(f"esamp_rank must be an integer in [1, {hidden_size}]{why}, got {rank}")


class ESampConfig(BaseModel):
    """Server-wide ESamp settings. Per-request options (ExploreRequest) override beta/rule."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # -- the rule --------------------------------------------------------------------------------
    beta: float = 1.0
    rule: str = DEFAULT_RULE  # a name in the rule registry (rules.py)
    # -- the distiller and its optimiser ----------------------------------------------------------
    rank: int = 64
    lr: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    train_steps_per_decode: int = 1
    training: bool = True  # False = frozen distiller (predict only; warm starts still apply)
    # -- how far the Distiller may steer (reweight.py: the bounded tilt; gate.py: the fit gate) ------
    # A Distiller signal's spread over a row's candidates is at most tilt_bound x the model's own.
    tilt_bound: float = 1.0
    # β_eff = β·g, g = clamp(R̄²/gate_r2_full, 0, 1) from the group's held-out fit over ~gate_window
    # steps; an unmeasured (fresh) Distiller has g = 0 and leaves every token stock.
    fit_gate: bool = True
    gate_r2_full: float = 0.5
    gate_window: int = 16
    # -- taps (the engine captures them; the core only receives [rows, H] tensors) ----------------
    source_layer: int = 2  # index of the layer whose *input* residual stream is the source
    source_site: str = "residual"
    target_site: str = "final_norm"
    # -- the bank ---------------------------------------------------------------------------------
    # A group that finds the bank full is sampled by the stock sampler (no ESamp) for its whole life
    # and is counted in GroupTable.refusals (Explorer.bank_full_count); it never evicts a live group.
    max_groups: int = 64
    # -- greedy rows ------------------------------------------------------------------------------
    # SGLang turns greedy into top_k=1, so a greedy row's own filter leaves one candidate. With
    # apply_to_greedy the candidate set is {v : p_v >= greedy_min_p * p_max} at T=1 and the token
    # is the argmax of the reweighted logits over it.
    apply_to_greedy: bool = False
    greedy_min_p: float = 0.1
    # -- warm starts ------------------------------------------------------------------------------
    # Train each group's Distiller on its prompt's own (source, target) pairs before its first token.
    prefill_warm_start: bool = True
    warm_start_steps: int = 50  # probe 2: 50 full-batch steps at lr 3e-3 was the best of its grid
    warm_start_lr: float = 3e-3
    # The last this-many prompt positions are used (and kept per prompt for requests whose prompt
    # comes from the radix cache); pairs of the `warm_start_prompts` most recent prompts are kept.
    warm_start_max_positions: int = 512
    warm_start_prompts: int = 8
    svd_warm_start: bool = False
    # -- execution --------------------------------------------------------------------------------
    # Static cap K on candidates per row. If more than K tokens survive top-k/top-p/min-p, only
    # the K most likely are candidates (an approximation; rows where it happened are counted).
    max_candidates: int = 1024
    backend: str = "auto"
    train_mode: str = "auto"
    seed: int = 0
    # -- which requests explore, and which share a Distiller (read in the tokenizer process) ---------
    # group_by 'prompt': exploring requests without esamp_group whose prompts have identical token ids
    # share one group while it is open: at most group_window_s seconds after its first member arrived
    # and at most group_max_members samples; then the next such request opens a new group. For clients
    # that send one request per sample (RL rollouts: verl, OpenRLHF; plain OpenAI loops).
    group_by: str = "request"
    group_window_s: float = 30.0
    group_max_members: int = 64
    # Explore every generate request that does not say `"esamp": false` in its custom_params.
    explore_all: bool = False

    @field_validator(*FIELDS, mode="before")
    @classmethod
    def _check(cls, v: Any, info: Any) -> Any:
        return check_field(info.field_name, v, allow_str=True)

    def validate_for_model(self, hidden_size: int, num_layers: int | None = None) -> None:
        """Checks that need the model's shape; raises ValueError naming the field."""
        hidden_size = check_int("hidden_size", hidden_size, 1, 1 << 20)
        check_rank(self.rank, hidden_size, " (the model's hidden size)")
        if num_layers is not None and self.source_site == "residual":
            num_layers = check_int("num_layers", num_layers, 1, 1 << 16)
            if self.source_layer >= num_layers:
                raise ValueError(
                    f"esamp_source_layer must be an integer in [0, {num_layers - 1}] (the model "
                    f"has {num_layers} layers), got {self.source_layer}")


class ExploreRequest(BaseModel):
    """Per-request ESamp options, parsed from SGLang's flat `custom_params` dict."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    beta: float | None = None
    group: str | None = None
    rule: str | None = None  # checked against the rule registry
    train: bool | None = None  # False: the group's Distiller is frozen (the evaluation's control)

    KEYS: ClassVar[tuple[str, ...]] = ("esamp", "esamp_beta", "esamp_group", "esamp_rule", "esamp_train")

    @field_validator("rule", mode="before")
    @classmethod
    def _check_rule(cls, v: Any) -> str | None:
        return None if v is None else check_field("rule", v)

    @classmethod
    def from_custom_params(cls, params: Mapping[str, Any] | None) -> "ExploreRequest | None":
        """None when `esamp` is absent or false. Keys not starting with 'esamp' are ignored (other
        plugins share custom_params); unknown esamp_* keys and ill-typed values raise ValueError.
        The esamp_* keys are validated even when esamp is false, so typos surface early."""
        if params is None:
            return None
        if not isinstance(params, Mapping):
            raise ValueError(f"custom_params must be a JSON object, got {_show(params)}")
        ours = {k: v for k, v in params.items() if isinstance(k, str) and k.startswith("esamp")}
        unknown = sorted(set(ours) - set(cls.KEYS))
        if unknown:
            raise ValueError(f"unknown custom_params key {unknown[0]!r}; allowed esamp keys: "
                             + ", ".join(cls.KEYS))
        enabled = check_bool("esamp", ours["esamp"]) if "esamp" in ours else False
        beta = group = rule = train = None
        if ours.get("esamp_beta") is not None:
            beta = check_field("beta", ours["esamp_beta"])
        if ours.get("esamp_group") is not None:
            group = check_group_key(ours["esamp_group"])
        if ours.get("esamp_rule") is not None:
            rule = check_field("rule", ours["esamp_rule"])
        if ours.get("esamp_train") is not None:
            train = check_bool("esamp_train", ours["esamp_train"])
        if not enabled:
            return None
        return cls(beta=beta, group=group, rule=rule, train=train)


def check_group_key(value: Any) -> str:
    what = (f"esamp_group must be a non-empty printable string of at most "
            f"{GROUP_KEY_MAX_CHARS} characters")
    if not isinstance(value, str):
        raise ValueError(f"{what}, got {_show(value)}")
    if not value or len(value) > GROUP_KEY_MAX_CHARS or not value.isprintable():
        shown = value if len(value) <= 40 else value[:37] + "..."
        raise ValueError(f"{what}, got {shown!r} (length {len(value)})")
    return value


def fields_markdown() -> str:
    """The server-wide settings as a markdown table (docs/operations.md embeds it; a test compares)."""
    rows = ["| field (`ESAMP_SGL_<FIELD>`) | default | accepts | what |", "|---|---|---|---|"]
    for name, rule in FIELDS.items():
        default = ESampConfig.model_fields[name].default
        shown = str(default).lower() if isinstance(default, bool) else default
        rows.append(f"| `{name}` | `{shown}` | {rule.accepts()} | {rule.doc} |")
    return "\n".join(rows) + "\n"
