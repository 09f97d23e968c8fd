"""The reweighting rules and their registry: the one list of rule names (config validates against it).

With z the model's raw logits, d_v = ĥ·W_U[v] and T the row's temperature, the rules are

    contrastive (the paper's):  ℓ'_v = ((1 + β)·z_v − β·d_v) / T
                                     = (z_v + β·W_U[v]·e) / T        (e = h − ĥ, when z = W_U·h)
    compensated:                ℓ'_v = (z_v − β/(1 + β)·d_v) / T   (the paper's rule / (1+β):
                                                                      no (1+β) sharpening)
    noise (the paper's control, Tables 10–11):
                                ℓ'_v = (z_v + β·W_U[v]·ε) / T       (ε: Gaussian, ‖ε‖ = ‖h − ĥ‖ per row:
                                                                      the error's size, no direction)

and, as controls and baselines for the evaluation (no Distiller involved),

    random_prior:     the compensated rule with d replaced by a fixed random per-token vector
                      (bounded like d): a tilt with the same spread and no information
    temperature_after_truncation:
                      ℓ'_v = z_v / ((1 + β)·T)       (the survivors of the row's filters at T,
                                                       sampled at T' = (1 + β)·T: what the
                                                       compensated rule becomes when d = z)
    sharpen:          ℓ'_v = (1 + β)·z_v / T        (contrastive with d = 0: isolates the Distiller)
    group_presence:   ℓ'_v = (z_v − β·[c_v > 0]) / T  (c_v = how often the fork group's samples,
    group_frequency:  ℓ'_v = (z_v − β·c_v) / T         this row's included, generated v so far)

A rule is a function (ℓ, δ, β) -> ℓ' of the scaled candidate logits ℓ = z/T (+ any per-row
constant: log-probs work as well, the constant only shifts ℓ' per row), a scaled signal δ = s/T
on the candidates and β [R, 1]. Each rule names its signal s: the distiller logits d, the group's
token presence [c > 0] or counts c, or none. Register new ones with `@register_rule(name, signal)`.
Torch-free (the rules only use tensor arithmetic), so that the config, which clients import too,
reads the names without importing torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Sequence

if TYPE_CHECKING:
    from torch import Tensor

Rule = Callable[["Tensor", "Tensor", "Tensor"], "Tensor"]
RULES: dict[str, Rule] = {}
SIGNALS = ("distiller", "noise", "random", "presence", "frequency", "none")
# Signals that are per-token logit vectors on the model's scale: bounded by the tilt (reweight.py).
BOUNDED_SIGNALS = ("distiller", "noise", "random")
# Signals that need the group's Distiller (its prediction, or the size of its error): the fit gate scales them.
GATED_SIGNALS = ("distiller", "noise")
# Rules of the form ℓ + β·W_U·v/T, with the latent vector v they project (step.py: latent mixing).
LATENT_VECTOR = {"contrastive": "error", "noise": "noise"}
RULE_SIGNAL: dict[str, str] = {}  # rule name -> the signal it reads

def register_rule(name: str, signal: str = "distiller") -> Callable[[Rule], Rule]:
    if signal not in SIGNALS:
        raise ValueError(f"signal must be one of {SIGNALS}, got {signal!r}")

    def add(fn: Rule) -> Rule:
        RULES[name] = fn
        RULE_SIGNAL[name] = signal
        return fn
    return add


@register_rule("contrastive")
def contrastive(scaled_logits: Tensor, scaled_d: Tensor, beta: Tensor) -> Tensor:
    return (1.0 + beta) * scaled_logits - beta * scaled_d


@register_rule("compensated")
def compensated(scaled_logits: Tensor, scaled_d: Tensor, beta: Tensor) -> Tensor:
    return scaled_logits - (beta / (1.0 + beta)) * scaled_d


@register_rule("noise", signal="noise")
def noise(scaled_logits: Tensor, scaled_noise: Tensor, beta: Tensor) -> Tensor:
    return scaled_logits + beta * scaled_noise


@register_rule("random_prior", signal="random")
def random_prior(scaled_logits: Tensor, scaled_prior: Tensor, beta: Tensor) -> Tensor:
    return compensated(scaled_logits, scaled_prior, beta)


@register_rule("temperature_after_truncation", signal="none")
def temperature_after_truncation(scaled_logits: Tensor, unused: Tensor, beta: Tensor) -> Tensor:
    return scaled_logits / (1.0 + beta)


@register_rule("sharpen", signal="none")
def sharpen(scaled_logits: Tensor, unused: Tensor, beta: Tensor) -> Tensor:
    return (1.0 + beta) * scaled_logits


def _penalty(scaled_logits: Tensor, scaled_signal: Tensor, beta: Tensor) -> Tensor:
    return scaled_logits - beta * scaled_signal


register_rule("group_presence", signal="presence")(_penalty)
register_rule("group_frequency", signal="frequency")(_penalty)


def signals_needed(rules: str | Sequence[str]) -> set[str]:
    return {RULE_SIGNAL[r] for r in ([rules] if isinstance(rules, str) else rules)}


def rule_names() -> tuple[str, ...]:
    """Every registered rule, in registration order (the built-ins first)."""
    return tuple(RULE_SIGNAL)
