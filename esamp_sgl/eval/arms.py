"""What an evaluation compares. An arm is one sampling configuration, written as a spec string

    KIND[:key=value,...]     e.g.  stock:T=0.7,min_p=0.05   esamp:rule=compensated,beta=3   tat:Tp=2,min_p=0.05

KIND: `stock` (no ESamp), `esamp` (the Distiller rules), `frozen` (the Distiller is warm-started on
the prompt but never trained during decode: the control that isolates test-time learning), `random`
(the compensated rule with d replaced by a fixed random per-token vector of the same bounded spread:
the control that isolates the Distiller's information from a mere tilt), `sharpen` (contrastive with
d = 0: the control that isolates the Distiller), `tat` (temperature after truncation: the survivors of
the filters at T are sampled at T' = Tp ≥ T, no Distiller: the cheap baseline ESamp must beat),
`presence` / `frequency` (the sibling-aware baseline without a Distiller: a penalty on the tokens the
fork group already generated). Keys: T (temperature), top_p, min_p, beta, rule (esamp/frozen only),
Tp (tat only, instead of beta). Arms of one *family* differ only in T (stock), Tp (tat) or β (the
others), so each family traces a curve.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from esamp_sgl.core.config import BETA_MAX, check_choice, check_number

KINDS = ("stock", "esamp", "frozen", "random", "sharpen", "tat", "presence", "frequency")
_RULE_OF_KIND = {"random": "random_prior", "sharpen": "sharpen", "tat": "temperature_after_truncation",
                 "presence": "group_presence", "frequency": "group_frequency"}
# Nothing learned during decode is used by these kinds: skip the training cost.
_UNTRAINED_KINDS = ("frozen", "random", "sharpen", "tat", "presence", "frequency")
_KEYS = ("T", "top_p", "min_p", "beta", "rule", "Tp")
_RANGES = {"T": (0.05, 5.0), "top_p": (0.01, 1.0), "min_p": (0.0, 1.0), "beta": (0.0, BETA_MAX),
           "Tp": (0.05, 5.0 * (1 + BETA_MAX))}
_FIELD_OF_KEY = {"T": "temperature", "Tp": "tp"}
# The pre-registered default ESamp arm (the primary contrast of both evaluations; `--primary` overrides).
PRIMARY_ARM = "esamp:rule=compensated,beta=1,min_p=0.05"


class Arm(BaseModel):
    model_config = ConfigDict(frozen=True)

    kind: Literal["stock", "esamp", "frozen", "random", "sharpen", "tat", "presence", "frequency"]
    temperature: float = 1.0
    top_p: float = 1.0
    min_p: float = 0.0
    beta: float = 0.0
    rule: Literal["contrastive", "compensated"] = "contrastive"
    tp: float | None = None  # tat only: the temperature applied after truncation, T' >= T

    @model_validator(mode="after")
    def _tp_only_for_tat(self) -> "Arm":
        if (self.kind == "tat") != (self.tp is not None):
            raise ValueError(f"Tp is required for a tat arm and only for it (kind {self.kind!r}, Tp {self.tp!r})")
        if self.tp is not None and not self.temperature <= self.tp <= self.temperature * (1 + BETA_MAX):
            raise ValueError(f"Tp must be in [T, (1+{BETA_MAX:g})·T] = [{self.temperature:g}, "
                             f"{self.temperature * (1 + BETA_MAX):g}] (truncation happens at T, sampling at "
                             f"Tp = (1+β)·T with β in [0, {BETA_MAX:g}]), got {self.tp:g}")
        return self

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
        return f"{self.kind}{sep}{self.rule}" if self.kind in ("esamp", "frozen") else self.kind

    def sampling_params(self) -> dict[str, Any]:
        params: dict[str, Any] = {"temperature": self.temperature, "top_p": self.top_p, "min_p": self.min_p}
        if self.kind != "stock":
            custom = {"esamp": True, "esamp_beta": self.server_beta,
                      "esamp_rule": _RULE_OF_KIND.get(self.kind, self.rule)}
            if self.kind in _UNTRAINED_KINDS:
                custom["esamp_train"] = False
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


def parse_arms(value: str) -> list[Arm]:
    """A preset name (diversity, passk, quick) or ';'-separated arm specs."""
    if value in PRESETS:
        arms = _grid(PRESETS[value])
    else:
        arms = [parse_arm(s) for s in value.split(";") if s.strip()]
    names = [a.name for a in arms]
    if len(set(names)) != len(names):
        raise ValueError(f"--arms has duplicate arms: {sorted(n for n in names if names.count(n) > 1)}")
    if not arms:
        raise ValueError("--arms is empty")
    return arms
