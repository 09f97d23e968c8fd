"""What an evaluation compares. An arm is one sampling configuration, written as a spec string

    KIND[:key=value,...]     e.g.  stock:T=0.7,min_p=0.05   esamp:rule=compensated,beta=3

KIND: `stock` (no ESamp), `esamp` (the Distiller rules), `frozen` (ESamp with test-time training
off: the control that isolates learning), `sharpen` (contrastive with d = 0: the control that
isolates the Distiller), `presence` / `frequency` (the sibling-aware baseline without a Distiller:
a penalty on the tokens the fork group already generated). Keys: T (temperature), top_p, min_p,
beta, rule (esamp/frozen only). Arms of one *family* differ only in T (stock) or β (the others),
so each family traces a curve.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from esamp_sgl.config import BETA_MAX, check_choice, check_number

KINDS = ("stock", "esamp", "frozen", "sharpen", "presence", "frequency")
_RULE_OF_KIND = {"sharpen": "sharpen", "presence": "group_presence", "frequency": "group_frequency"}
_KEYS = ("T", "top_p", "min_p", "beta", "rule")


class Arm(BaseModel):
    model_config = ConfigDict(frozen=True)

    kind: Literal["stock", "esamp", "frozen", "sharpen", "presence", "frequency"]
    temperature: float = 1.0
    top_p: float = 1.0
    min_p: float = 0.0
    beta: float = 0.0
    rule: Literal["contrastive", "compensated"] = "contrastive"

    @property
    def name(self) -> str:
        parts = [f"T{self.temperature:g}"]
        if self.min_p > 0:
            parts.append(f"minp{self.min_p:g}")
        if self.top_p < 1:
            parts.append(f"topp{self.top_p:g}")
        if self.kind == "stock":
            return "stock-" + "-".join(parts)
        head = {"esamp": f"esamp-{self.rule}", "frozen": f"frozen-{self.rule}"}.get(self.kind, self.kind)
        return f"{head}-b{self.beta:g}-" + "-".join(parts)

    @property
    def family(self) -> str:
        """Arms that trace one curve: same kind/rule/filters, varying T (stock) or β (others)."""
        filters = (f"min-p {self.min_p:g}" if self.min_p > 0 else "") + \
                  (f" top-p {self.top_p:g}" if self.top_p < 1 else "")
        filters = filters.strip() or "no filter"
        if self.kind == "stock":
            return f"stock, {filters} (T sweep)"
        head = {"esamp": f"esamp {self.rule}", "frozen": f"frozen {self.rule}"}.get(self.kind, self.kind)
        return f"{head}, {filters}, T {self.temperature:g} (β sweep)"

    def sampling_params(self) -> dict[str, Any]:
        params: dict[str, Any] = {"temperature": self.temperature, "top_p": self.top_p, "min_p": self.min_p}
        if self.kind != "stock":
            custom = {"esamp": True, "esamp_beta": self.beta,
                      "esamp_rule": _RULE_OF_KIND.get(self.kind, self.rule)}
            if self.kind in ("frozen", "sharpen", "presence", "frequency"):
                custom["esamp_train"] = False  # nothing learned is used: skip the training cost
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
        lo, hi = {"T": (0.05, 5.0), "top_p": (0.01, 1.0), "min_p": (0.0, 1.0), "beta": (0.0, BETA_MAX)}[key]
        number = check_number(f"arm {spec!r} {key}", value, lo, hi, allow_str=True)
        fields["temperature" if key == "T" else key] = number
    if kind != "stock" and "beta" not in fields:
        raise ValueError(f"arm {spec!r}: a {kind} arm needs beta=...")
    if kind == "stock" and "beta" in fields:
        raise ValueError(f"arm {spec!r}: a stock arm has no beta")
    return Arm(**fields)


def _grid(specs: list[str]) -> list[Arm]:
    return [parse_arm(s) for s in specs]


MINP = "min_p=0.05"
PRESETS: dict[str, list[str]] = {
    # The CPU study in the README: the stock curves, every ESamp family, both controls, the baseline.
    "diversity": (
        [f"stock:T={t},{MINP}" for t in (0.7, 1.0, 1.3)]
        + [f"stock:T={t},top_p=0.95" for t in (0.8, 1.2)]
        + ["stock:T=1.0"]
        + [f"esamp:rule=contrastive,beta=1,{MINP}"]
        + [f"esamp:rule=compensated,beta={b},{MINP}" for b in (1, 3)]
        + [f"frozen:rule=compensated,beta=3,{MINP}", f"sharpen:beta=1,{MINP}"]
        + [f"presence:beta={b},{MINP}" for b in (1, 3)]
    ),
    "passk": (
        [f"stock:T={t},{MINP}" for t in (0.7, 1.0, 1.3)]
        + [f"esamp:rule=contrastive,beta=1,{MINP}"]
        + [f"esamp:rule=compensated,beta={b},{MINP}" for b in (1, 3)]
        + [f"presence:beta=3,{MINP}"]
    ),
    "quick": [f"stock:T=1.0,{MINP}", f"stock:T=1.3,{MINP}", f"esamp:rule=compensated,beta=3,{MINP}",
              f"presence:beta=1.5,{MINP}"],
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
