"""ESamp configuration (server-wide) and per-request options.

Every field is validated by hand so that an error names the field as users spell it
(`esamp_<field>`, the CLI / custom_params name) and the allowed values, e.g.
``esamp_beta must be a finite number in [0, 10], got nan``. pydantic's ValidationError is a
ValueError, so callers can catch ValueError.

Defaults: a config starts from a named profile (esamp_sgl/core/profiles.py: `paper`, `reference`,
`bounded`; `profile`, default DEFAULT_PROFILE) and fields given explicitly override it. The class
defaults of the method fields are the default profile's values; docs/profiles.md and docs/results.md say where each
profile comes from and what it measured. `bounded`'s choices, in short: the compensated rule at β 1 (no
(1+β) sharpening; half the 3-gram repetition of the contrastive rule at equal Vendi on 12 creative
prompts), the residual stream entering layer 2 (context-dependent; the probes found the embedding-level
source worse), the final-norm target (d on the logits' scale), Adam lr 1e-3, a 50-step prefill warm start
with the tilt bounded to the model's own spread and gated by the group's measured fit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Literal, Mapping

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from esamp_sgl.core.profiles import DEFAULT_PROFILE, PROFILE_FIELDS, PROFILES, profile_names

# The rule names come from the rule registry (esamp_sgl/core/rules.py: the ESamp rules contrastive and
# compensated, and the evaluation's controls and baselines); a rule registered there is accepted here.
from esamp_sgl.core.rules import rule_names

OPTIMIZERS = ("adam", "adamw", "sgd")
# The Distiller's architecture (esamp_sgl/core/architectures.py): `lowrank` = y = LN(x + (xA ⊙ SiLU(xG + c))B),
# `swiglu` = distiller_blocks residual gated-SwiGLU blocks y = x + W_d(SiLU(W_g x) ⊙ W_u x) (the paper's, 2 blocks).
DISTILLERS = ("lowrank", "swiglu")
SOURCE_SITES = ("residual", "first_input_norm")
TARGET_SITES = ("final_norm", "last_input_norm")
# `torch` is the one candidate path: it keeps exactly the support of SGLang's torch sampler (top-k, top-p on the
# original probabilities' exclusive cumsum, min-p against p_max) at 21 launches / 0.5 GB per step at the 7B shape.
# The FlashInfer path was removed (issue 21, defect 3): its support differed from SGLang's when filters combined,
# it cost ~30 launches / ~3.5 GB (six more full-vocabulary passes) and its JIT compiled for minutes on first use.
# `auto` is kept so that existing configs still load; it resolves to `torch` everywhere.
BACKENDS = ("auto", "torch")
TRAIN_MODES = ("auto", "sync", "cuda_stream", "cpu_thread")
# request: a request is its own fork group (its n samples share it); prompt: concurrent exploring requests
# with identical prompt token ids share one group (runtime_patch/grouping.py). An explicit esamp_group wins.
GROUP_BY_POLICIES = ("request", "prompt")

BETA_MAX = 10.0
_DEFAULTS = PROFILES[DEFAULT_PROFILE]
DEFAULT_RULE = _DEFAULTS["rule"]
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
    "profile": FieldRule("choice", choices=profile_names,
                         doc="the named bundle of method settings the other fields start from (esamp_sgl/core/profiles.py)"),
    "beta": FieldRule("float", 0.0, BETA_MAX, doc="strength β (requests may override it)"),
    "rule": FieldRule("choice", choices=rule_names,
                      doc="the reweighting rule (requests may override it; esamp_sgl/core/rules.py)"),
    "distiller": _one_of(*DISTILLERS, doc="the Distiller's architecture (`swiglu`: the paper's gated SwiGLU blocks)"),
    "distiller_blocks": FieldRule("int", 1, 8, doc="residual SwiGLU blocks of a `swiglu` Distiller (the paper's: 2)"),
    "rank": FieldRule("int", 1, 8192, doc="the Distiller's inner width: `lowrank`'s rank (at most the hidden size), "
                                          "`swiglu`'s intermediate size"),
    "lr": FieldRule("float", 0.0, 1.0, lo_open=True, doc="learning rate of decode-time training"),
    "optimizer": _one_of(*OPTIMIZERS, doc="the Distiller's optimiser"),
    "adam_eps": FieldRule("float", 0.0, 1.0, lo_open=True, doc="Adam's ε (adam, adamw)"),
    "grad_clip": FieldRule("float", 0.0, 1e6, doc="clip each group's gradient to this norm per step (0: off)"),
    "weight_decay": FieldRule("float", 0.0, 1.0, doc="weight decay (adamw, sgd)"),
    "train_steps_per_decode": FieldRule("int", 1, 64, doc="optimiser steps per decode step"),
    "train_every": FieldRule("int", 1, 64, doc="decode steps per training step: the Distiller trains on "
                             "the last k steps' tokens every k-th step (a mini-batch; 1 = every token)"),
    "training": FieldRule("bool", doc="false: frozen Distillers (predict only; warm starts still apply)"),
    "tilt_bound": FieldRule("float", 0.0, 10.0,
                            doc="a signal's spread over the candidates is at most this x the model's own (0: unbounded)"),
    "latent_mixing": FieldRule("bool", doc="rows without top-k/top-p/min-p are mixed in latent space: the LM "
                                           "head projects (1+β)·h − β·ĥ, the full vocabulary, no candidate cap"),
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
    "backend": _one_of(*BACKENDS, doc="candidate and sampling kernels (`auto`: `torch`, on every device)"),
    "train_mode": _one_of(*TRAIN_MODES, doc="where training runs (`auto`: a CUDA side stream on GPU; on CPU a worker thread when torch leaves a core free, else inline)"),
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

    # The method's fields (PROFILE_FIELDS) start from this profile; fields given explicitly override it.
    # The method fields default to the default profile's values; `_from_profile` fills in the chosen one's.
    profile: str = DEFAULT_PROFILE
    # -- the rule --------------------------------------------------------------------------------
    beta: float = _DEFAULTS["beta"]
    rule: str = _DEFAULTS["rule"]  # a name in the rule registry (rules.py)
    # -- the distiller and its optimiser ----------------------------------------------------------
    distiller: str = _DEFAULTS["distiller"]
    distiller_blocks: int = _DEFAULTS["distiller_blocks"]
    rank: int = _DEFAULTS["rank"]
    lr: float = _DEFAULTS["lr"]
    optimizer: str = _DEFAULTS["optimizer"]
    adam_eps: float = _DEFAULTS["adam_eps"]
    grad_clip: float = _DEFAULTS["grad_clip"]
    weight_decay: float = _DEFAULTS["weight_decay"]
    train_steps_per_decode: int = _DEFAULTS["train_steps_per_decode"]
    train_every: int = _DEFAULTS["train_every"]
    training: bool = _DEFAULTS["training"]  # False = frozen distiller (predict only; warm starts still apply)
    # -- how far the Distiller may steer (reweight.py: the bounded tilt; gate.py: the fit gate) ------
    # A Distiller signal's spread over a row's candidates is at most tilt_bound x the model's own (0: off).
    tilt_bound: float = _DEFAULTS["tilt_bound"]
    # Rows without a filter: ℓ' = ℓ + β·W_U·(h − ĥ)/T over the whole vocabulary (= (1+β)ℓ − β·d for the
    # contrastive rule; the paper's latent mixing h_mix = (1+β)h − βĥ); for the contrastive and noise rules.
    latent_mixing: bool = _DEFAULTS["latent_mixing"]
    # β_eff = β·g, g = clamp(R̄²/gate_r2_full, 0, 1) from the group's held-out fit over ~gate_window
    # steps; an unmeasured (fresh) Distiller has g = 0 and leaves every token stock.
    fit_gate: bool = _DEFAULTS["fit_gate"]
    gate_r2_full: float = 0.5
    gate_window: int = 16
    # -- taps (the engine captures them; the core only receives [rows, H] tensors) ----------------
    source_layer: int = _DEFAULTS["source_layer"]  # index of the layer whose *input* residual stream is the source
    source_site: str = _DEFAULTS["source_site"]
    target_site: str = _DEFAULTS["target_site"]
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
    prefill_warm_start: bool = _DEFAULTS["prefill_warm_start"]
    warm_start_steps: int = 50  # probe 2: 50 full-batch steps at lr 3e-3 was the best of its grid
    warm_start_lr: float = 3e-3
    # The last this-many prompt positions are used (and kept per prompt for requests whose prompt
    # comes from the radix cache); pairs of the `warm_start_prompts` most recent prompts are kept.
    warm_start_max_positions: int = 512
    warm_start_prompts: int = 8
    svd_warm_start: bool = _DEFAULTS["svd_warm_start"]
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

    @model_validator(mode="before")
    @classmethod
    def _from_profile(cls, values: Any) -> Any:
        """The named profile's settings, then the fields given explicitly."""
        if not isinstance(values, Mapping):
            return values
        name = check_field("profile", values.get("profile", DEFAULT_PROFILE), allow_str=True)
        return {**PROFILES[name], **values, "profile": name}

    @field_validator(*FIELDS, mode="before")
    @classmethod
    def _check(cls, v: Any, info: Any) -> Any:
        return check_field(info.field_name, v, allow_str=True)

    def profile_overrides(self) -> dict[str, Any]:
        """The method fields whose value differs from the named profile's."""
        base = PROFILES[self.profile]
        return {k: getattr(self, k) for k in PROFILE_FIELDS if getattr(self, k) != base[k]}

    def method(self) -> dict[str, Any]:
        """The method's settings as resolved (PROFILE_FIELDS; telemetry, `esamp-sgl profiles`)."""
        return {k: getattr(self, k) for k in PROFILE_FIELDS}

    def validate_for_model(self, hidden_size: int, num_layers: int | None = None) -> None:
        """Checks that need the model's shape; raises ValueError naming the field."""
        hidden_size = check_int("hidden_size", hidden_size, 1, 1 << 20)
        if self.distiller == "lowrank":
            check_rank(self.rank, hidden_size, " (the model's hidden size)")
        if self.svd_warm_start and self.distiller != "lowrank":
            raise ValueError(f"esamp_svd_warm_start needs esamp_distiller 'lowrank', got {self.distiller!r}")
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
    profile: str | None = None  # the profile the client expects the server to run (checked by the server)

    KEYS: ClassVar[tuple[str, ...]] = ("esamp", "esamp_beta", "esamp_group", "esamp_rule", "esamp_train",
                                       "esamp_profile")

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
        beta = group = rule = train = profile = None
        if ours.get("esamp_beta") is not None:
            beta = check_field("beta", ours["esamp_beta"])
        if ours.get("esamp_group") is not None:
            group = check_group_key(ours["esamp_group"])
        if ours.get("esamp_rule") is not None:
            rule = check_field("rule", ours["esamp_rule"])
        if ours.get("esamp_train") is not None:
            train = check_bool("esamp_train", ours["esamp_train"])
        if ours.get("esamp_profile") is not None:
            profile = check_field("profile", ours["esamp_profile"])
        if not enabled:
            return None
        return cls(beta=beta, group=group, rule=rule, train=train, profile=profile)


def check_request_profile(request: ExploreRequest | None, config: ESampConfig) -> None:
    """A request that names a profile must be sent to a server running it: a profile fixes the
    Distiller's architecture, taps and optimiser, which are the server's (one bank, one set of taps)."""
    if request is None or request.profile is None or request.profile == config.profile:
        return
    raise ValueError(f"esamp_profile must be the server's profile {config.profile!r}, got {request.profile!r} "
                     f"(a profile fixes the Distiller and its taps; start a server with "
                     f"ESAMP_SGL_PROFILE={request.profile} for it)")


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
    defaults = ESampConfig()
    for name, rule in FIELDS.items():
        default = getattr(defaults, name)
        shown = str(default).lower() if isinstance(default, bool) else default
        rows.append(f"| `{name}` | `{shown}` | {rule.accepts()} | {rule.doc} |")
    return "\n".join(rows) + "\n"


def resolved_profiles() -> dict[str, dict[str, Any]]:
    """Every profile's method settings as ESampConfig resolves them ({profile: {field: value}})."""
    return {name: ESampConfig(profile=name).method() for name in PROFILES}


def profiles_markdown() -> str:
    """One table of every profile, generated from the code (docs/profiles.md embeds it; a test compares)."""
    table = resolved_profiles()
    names = list(table)

    def cell(value: Any) -> str:
        if isinstance(value, bool):
            return str(value).lower()
        return f"{value:g}" if isinstance(value, float) else str(value)

    rows = ["| field | " + " | ".join(f"`{n}`" + (" (default)" if n == DEFAULT_PROFILE else "") for n in names)
            + " |", "|---|" + "---|" * len(names)]
    rows += [f"| `{field}` | " + " | ".join(cell(table[n][field]) for n in names) + " |" for field in PROFILE_FIELDS]
    return "\n".join(rows) + "\n"
