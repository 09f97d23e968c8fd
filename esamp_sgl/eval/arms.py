"""What an evaluation compares. An arm is one sampling configuration, written as a spec string

    KIND[:key=value,...]     e.g.  stock:T=0.7,min_p=0.05   esamp:rule=compensated,beta=3   tat:Tp=2,min_p=0.05

KIND: `stock` (no ESamp), `esamp` (the Distiller rules), `frozen` (the Distiller is warm-started on
the prompt but never trained during decode: the control that isolates test-time learning), `random`
(the compensated rule with d replaced by a fixed random per-token vector of the same bounded spread:
the control that isolates the Distiller's information from a mere tilt), `sharpen` (contrastive with
d = 0: the control that isolates the Distiller), `tat` (temperature after truncation: the survivors of
the filters at T are sampled at T' = Tp ≥ T, no Distiller: the cheap baseline ESamp must beat),
`presence` / `frequency` (the sibling-aware baseline without a Distiller: a penalty on the tokens the
fork group already generated), `noise` (the paper's own control: the error h − ĥ replaced by Gaussian
noise of the same per-row norm; the Distiller trains as usual, since the norm needs it). Keys: T
(temperature), top_p, min_p, beta, rule (esamp/frozen only), Tp (tat only, instead of beta), profile
(the Distiller kinds only: the server profile the arm runs on, default `bounded`; the harness starts
one server per profile). Arms of one *family* differ only in T (stock), Tp (tat) or β (the others), so
each family traces a curve. No filter at all (`stock:T=1`) is the paper's vanilla sampling.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from esamp_sgl.core.config import BETA_MAX, check_choice, check_number
from esamp_sgl.core.profiles import profile_names

KINDS = ("stock", "esamp", "frozen", "random", "sharpen", "tat", "presence", "frequency", "noise")
_RULE_OF_KIND = {"random": "random_prior", "sharpen": "sharpen", "tat": "temperature_after_truncation",
                 "presence": "group_presence", "frequency": "group_frequency", "noise": "noise"}
# The kinds whose result depends on the server's profile (the Distiller's architecture, layers,
# optimiser, bound, gate, latent mixing): each runs on a server started with its profile. The others
# (stock, tat, presence, frequency) use no Distiller and run on whichever server comes first.
PROFILE_KINDS = ("esamp", "frozen", "random", "sharpen", "noise")
# The server profiles (esamp_sgl/core/profiles.py); `bounded` is the settings every arm ran with before
# profiles existed, so an arm spec without profile= means what it always meant.
PROFILES = profile_names()
DEFAULT_ARM_PROFILE = "bounded"
# Nothing learned during decode is used by these kinds: skip the training cost.
_UNTRAINED_KINDS = ("frozen", "random", "sharpen", "tat", "presence", "frequency")
_KEYS = ("T", "top_p", "min_p", "beta", "rule", "Tp", "profile")
_RANGES = {"T": (0.05, 5.0), "top_p": (0.01, 1.0), "min_p": (0.0, 1.0), "beta": (0.0, BETA_MAX),
           "Tp": (0.05, 5.0 * (1 + BETA_MAX))}
_FIELD_OF_KEY = {"T": "temperature", "Tp": "tp"}
# The pre-registered default ESamp arm (the primary contrast of both evaluations; `--primary` overrides).
PRIMARY_ARM = "esamp:rule=compensated,beta=1,min_p=0.05"


class Arm(BaseModel):
    model_config = ConfigDict(frozen=True)

    kind: Literal["stock", "esamp", "frozen", "random", "sharpen", "tat", "presence", "frequency", "noise"]
    temperature: float = 1.0
    top_p: float = 1.0
    min_p: float = 0.0
    beta: float = 0.0
    # The arm always names its rule: contrastive is the paper's (and the reference profile's) rule, and
    # the default an esamp arm spec without rule= always had, also under `bounded`.
    rule: Literal["contrastive", "compensated"] = "contrastive"
    tp: float | None = None  # tat only: the temperature applied after truncation, T' >= T
    profile: str = DEFAULT_ARM_PROFILE  # a server profile (core/profiles.py); PROFILE_KINDS only

    @model_validator(mode="after")
    def _tp_only_for_tat(self) -> "Arm":
        if (self.kind == "tat") != (self.tp is not None):
            raise ValueError(f"Tp is required for a tat arm and only for it (kind {self.kind!r}, Tp {self.tp!r})")
        if self.tp is not None and not self.temperature <= self.tp <= self.temperature * (1 + BETA_MAX):
            raise ValueError(f"Tp must be in [T, (1+{BETA_MAX:g})·T] = [{self.temperature:g}, "
                             f"{self.temperature * (1 + BETA_MAX):g}] (truncation happens at T, sampling at "
                             f"Tp = (1+β)·T with β in [0, {BETA_MAX:g}]), got {self.tp:g}")
        check_choice("arm profile", self.profile, PROFILES)
        if self.profile != DEFAULT_ARM_PROFILE and not self.needs_profile:
            raise ValueError(f"profile applies to the Distiller kinds {', '.join(PROFILE_KINDS)} only "
                             f"(a {self.kind} arm runs on any server), got profile {self.profile!r}")
        return self

    @property
    def needs_profile(self) -> bool:
        """True when the arm's result depends on the server's profile (it must run on a server of it)."""
        return self.kind in PROFILE_KINDS

    @property
    def server_beta(self) -> float:
        """The esamp_beta sent to the server: β itself, or for tat the β with (1+β)·T = Tp."""
        if self.tp is not None:
            return round(self.tp / self.temperature - 1.0, 12)  # no 1e-16 noise in the request
        return self.beta

    def _filters(self) -> list[str]:
        return ([f"minp{self.min_p:g}"] if self.min_p > 0 else []) + \
               ([f"topp{self.top_p:g}"] if self.top_p < 1 else [])

    @property
    def name(self) -> str:
        settings = "-".join([f"T{self.temperature:g}"] + self._filters())
        if self.kind == "stock":
            return f"stock-{settings}"
        if self.kind == "tat":
            return f"tat-Tp{self.tp:g}-{settings}"
        return f"{self._head('-')}-b{self.beta:g}-{settings}"

    @property
    def family(self) -> str:
        """Arms that trace one curve: same kind/rule/filters, varying T (stock), Tp (tat) or β (others)."""
        filters = (f"min-p {self.min_p:g}" if self.min_p > 0 else "") + \
                  (f" top-p {self.top_p:g}" if self.top_p < 1 else "")
        filters = filters.strip() or "no filter"
        if self.kind == "stock":
            return f"stock, {filters} (T sweep)"
        sweep = "Tp" if self.kind == "tat" else "β"
        return f"{self._head(' ')}, {filters}, T {self.temperature:g} ({sweep} sweep)"

    def _head(self, sep: str) -> str:
        # The profile is in the name unless it is `bounded`, whose arms keep the names they had before
        # profiles existed (stored results, the pre-registered PRIMARY_ARM).
        kind = self.kind if self.profile == DEFAULT_ARM_PROFILE else f"{self.kind}@{self.profile}"
        return f"{kind}{sep}{self.rule}" if self.kind in ("esamp", "frozen") else kind

    def sampling_params(self) -> dict[str, Any]:
        params: dict[str, Any] = {"temperature": self.temperature, "top_p": self.top_p, "min_p": self.min_p}
        if self.kind != "stock":
            custom = {"esamp": True, "esamp_beta": self.server_beta,
                      "esamp_rule": _RULE_OF_KIND.get(self.kind, self.rule)}
            if self.kind in _UNTRAINED_KINDS:
                custom["esamp_train"] = False
            if self.needs_profile and self.profile != DEFAULT_ARM_PROFILE:
                # The server refuses (HTTP 400) a request whose profile is not its own: an arm never runs
                # silently on the wrong server. `bounded` is not sent, so old specs run on old servers.
                custom["esamp_profile"] = self.profile
            params["custom_params"] = custom
        return params


def parse_arm(spec: str) -> Arm:
    kind, _, rest = spec.strip().partition(":")
    check_choice("arm kind", kind, KINDS)
    fields: dict[str, Any] = {"kind": kind}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"arm {spec!r}: {item!r} is not key=value")
        check_choice(f"arm {spec!r} key", key, _KEYS)
        if key == "rule":
            if kind not in ("esamp", "frozen"):
                raise ValueError(f"arm {spec!r}: rule applies to esamp and frozen arms only")
            fields["rule"] = check_choice("rule", value, ("contrastive", "compensated"))
            continue
        if key == "profile":
            if kind not in PROFILE_KINDS:
                raise ValueError(f"arm {spec!r}: profile applies to the Distiller kinds "
                                 f"{', '.join(PROFILE_KINDS)} only")
            fields["profile"] = check_choice(f"arm {spec!r} profile", value, PROFILES)
            continue
        lo, hi = _RANGES[key]
        fields[_FIELD_OF_KEY.get(key, key)] = check_number(f"arm {spec!r} {key}", value, lo, hi, allow_str=True)
    _check_strength(spec, kind, fields)
    try:
        return Arm(**fields)
    except ValidationError as exc:  # unwrap pydantic's report: keep only our message
        raise ValueError(f"arm {spec!r}: {exc.errors()[0].get('ctx', {}).get('error', exc)}") from None


def _check_strength(spec: str, kind: str, fields: dict[str, Any]) -> None:
    """Exactly one strength per kind: none for stock, Tp for tat, beta for the others."""
    wanted = {"stock": None, "tat": "Tp"}.get(kind, "beta")
    for key in ("beta", "Tp"):
        if key != wanted and _FIELD_OF_KEY.get(key, key) in fields:
            strength = f" (its strength is {wanted})" if wanted else ""
            raise ValueError(f"arm {spec!r}: a {kind} arm has no {key}{strength}")
    if wanted and _FIELD_OF_KEY.get(wanted, wanted) not in fields:
        raise ValueError(f"arm {spec!r}: a {kind} arm needs {wanted}=...")


def _grid(specs: list[str]) -> list[Arm]:
    return [parse_arm(s) for s in specs]


MINP = "min_p=0.05"
_CONTROLS = [f"frozen:rule=compensated,beta=3,{MINP}", f"random:beta=3,{MINP}"]
PRESETS: dict[str, list[str]] = {
    # Every baseline family as a curve (stock T, tat Tp, presence β), the ESamp default (β=1) and a
    # stronger β, and both controls (frozen Distiller, random prior) at the stronger β.
    "diversity": (
        [f"stock:T={t},{MINP}" for t in (0.7, 1.0, 1.3, 1.6)]
        + [f"tat:T=1,Tp={tp},{MINP}" for tp in (1.5, 2.0, 3.0)]
        + [f"esamp:rule=compensated,beta={b},{MINP}" for b in (1, 3)]
        + _CONTROLS
        + [f"presence:beta={b},{MINP}" for b in (1, 3)]
    ),
    "passk": (
        [f"stock:T={t},{MINP}" for t in (0.7, 1.0, 1.3)]
        + [f"tat:T=1,Tp={tp},{MINP}" for tp in (1.5, 2.0)]
        + [f"esamp:rule=compensated,beta={b},{MINP}" for b in (1, 3)]
        + _CONTROLS
        + [f"presence:beta=3,{MINP}"]
    ),
    "quick": [f"stock:T=1.0,{MINP}", f"stock:T=1.3,{MINP}", PRIMARY_ARM, f"presence:beta=1.5,{MINP}"],
}

# Issue 20: the paper's method at the paper's settings (T 1, no truncation) against the paper's baselines
# (vanilla, min-p 0.1), its own control (noise), the sharpening its rule contains (stock at T = 1/(1+β)),
# our strongest cheap baseline (the group presence penalty, β 1: the β of docs/results.md's runs) and
# today's default (the bounded profile's compensated rule at β 1), all without a filter unless named.
PAPER_ARM = "esamp:profile=paper,beta=0.25"
VANILLA_ARM = "stock:T=1"
SHARPENING_ARM = "stock:T=0.8"  # (1+β)ℓ − β·d with d carrying nothing: T = 1/(1+0.25)
NOISE_ARM = "noise:profile=paper,beta=0.25"
MIN_P_ARM = "stock:T=1,min_p=0.1"  # the paper's truncation baseline
BOUNDED_ARM = "esamp:profile=bounded,rule=compensated,beta=1"
PRESETS["paper"] = [VANILLA_ARM, MIN_P_ARM, PAPER_ARM, NOISE_ARM, SHARPENING_ARM, "presence:beta=1",
                    BOUNDED_ARM]
# Issue 22 (larger models, public tasks): the paper's two baselines, its method and its control; the
# other paper arms (presence, today's default) join a run later through `--resume` if time allows.
PRESETS["paper-core"] = [VANILLA_ARM, MIN_P_ARM, PAPER_ARM, NOISE_ARM]
# For `eval diversity --arms paper`: every baseline family swept far enough that its curve spans the
# compared arms' perplexity (matched-perplexity comparisons interpolate only): temperature, presence β
# at T 1, min-p at T 1 (each sweep's strength-0 point is vanilla, already in the preset).
PAPER_DIVERSITY_SWEEPS = ([f"stock:T={t}" for t in (0.7, 0.8, 0.9, 1.0, 1.15, 1.3)]
                          + [f"presence:beta={b}" for b in (0.25, 0.5, 1, 2)]
                          + [f"stock:T=1,min_p={m}" for m in (0.02, 0.05, 0.1, 0.2)])


def parse_arms(value: str, sweeps: bool = False) -> list[Arm]:
    """A preset name (diversity, passk, quick, paper) or ';'-separated arm specs. `sweeps`: the
    diversity evaluation's form of the `paper` preset, with PAPER_DIVERSITY_SWEEPS added."""
    if value in PRESETS:
        specs = PRESETS[value] + (PAPER_DIVERSITY_SWEEPS if sweeps and value == "paper" else [])
        arms = list({a.name: a for a in _grid(specs)}.values())  # the sweeps repeat preset arms
    else:
        arms = [parse_arm(s) for s in value.split(";") if s.strip()]
    names = [a.name for a in arms]
    if len(set(names)) != len(names):
        raise ValueError(f"--arms has duplicate arms: {sorted(n for n in names if names.count(n) > 1)}")
    if not arms:
        raise ValueError("--arms is empty")
    return arms
