"""`gen`: SGLang's `sgl.gen` plus exploration keywords.

`gen(name, ..., explore=True, beta=None, group=None, rule=None)` returns the same IR node as
`sgl.gen`. Generations explore by default (that is what this module is for); `explore=False` is
plain `sgl.gen`. Exploring generations carry a `custom_params` resolver that, when the generation executes,
becomes ``{"esamp": true, "esamp_group": <group>, "esamp_beta": beta, "esamp_rule": rule}`` (unset
options are left to the server's defaults). The group is the executing state's fork group
(`esamp_sgl.lang.lineage`) unless `group=` names one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Mapping, Optional, Union

from sglang.lang.api import gen as sgl_gen
from sglang.lang.choices import ChoicesSamplingMethod
from sglang.lang.ir import SglExpr, SglGen

from esamp_sgl.core.config import check_field
from esamp_sgl.lang.lineage import check_group_id, group_of

_SCALARS = (str, int, float, bool, type(None))


@dataclass(frozen=True)
class ExploreParams:
    """The custom_params of one exploring generation, resolved against the executing state."""

    beta: float | None = None
    group: str | None = None
    rule: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)  # the caller's own custom_params

    def __call__(self, executor: Any) -> dict[str, Any]:
        params: dict[str, Any] = {**self.extra, "esamp": True,
                                  "esamp_group": self.group if self.group is not None else group_of(executor)}
        if self.beta is not None:
            params["esamp_beta"] = self.beta
        if self.rule is not None:
            params["esamp_rule"] = self.rule
        return params


def _check_custom_params(custom_params: Any) -> dict[str, Any]:
    if not isinstance(custom_params, Mapping):
        raise TypeError(f"gen(custom_params=...) must be a dict, got {type(custom_params).__name__}")
    for key, value in custom_params.items():
        if not isinstance(key, str):
            raise TypeError(f"gen(custom_params=...) keys must be strings, got {key!r}")
        if key.startswith("esamp"):
            raise ValueError(f"gen(custom_params=...) must not set {key!r}; use explore=, beta=, group=, rule=")
        if not isinstance(value, _SCALARS):
            raise TypeError(f"gen(custom_params={{{key!r}: ...}}) must be a JSON scalar (str, number, bool, "
                            f"None), got {type(value).__name__}")
    return dict(custom_params)


def explore_params(*, explore: Any, beta: Any, group: Any, rule: Any,
                   custom_params: Any) -> ExploreParams | dict[str, Any] | None:
    """Validate the exploration keywords; the custom_params to attach (None: plain sgl.gen)."""
    if not isinstance(explore, bool):
        raise TypeError(f"gen(explore=...) must be True or False, got {explore!r}")
    if not explore:
        given = [name for name, value in (("beta", beta), ("group", group), ("rule", rule)) if value is not None]
        if given:
            raise ValueError(f"gen({given[0]}=...) only applies with explore=True")
    extra = _check_custom_params(custom_params) if custom_params is not None else {}
    if not explore:
        return extra or None
    rule = check_field("rule", rule, name="gen(rule=...)") if rule is not None else None
    return ExploreParams(
        beta=float(check_field("beta", beta, name="gen(beta=...)")) if beta is not None else None,
        group=check_group_id("gen(group=...)", group) if group is not None else None,
        rule=rule,
        extra=extra,
    )


def gen(
    name: Optional[str] = None,
    max_tokens: Optional[int] = None,
    min_tokens: Optional[int] = None,
    n: Optional[int] = None,
    stop: Optional[Union[str, List[str]]] = None,
    stop_token_ids: Optional[List[int]] = None,
    stop_regex: Optional[Union[str, List[str]]] = None,
    temperature: Optional[float] = None,
    top_p: Optional[float] = None,
    top_k: Optional[int] = None,
    min_p: Optional[float] = None,
    frequency_penalty: Optional[float] = None,
    presence_penalty: Optional[float] = None,
    ignore_eos: Optional[bool] = None,
    return_logprob: Optional[bool] = None,
    logprob_start_len: Optional[int] = None,
    top_logprobs_num: Optional[int] = None,
    return_text_in_logprobs: Optional[bool] = None,
    dtype: Optional[Union[type, str]] = None,
    choices: Optional[List[str]] = None,
    choices_method: Optional[ChoicesSamplingMethod] = None,
    regex: Optional[str] = None,
    json_schema: Optional[str] = None,
    *,
    explore: bool = True,
    beta: Optional[float] = None,
    group: Optional[str] = None,
    rule: Optional[str] = None,
    custom_params: Optional[Mapping[str, Any]] = None,
) -> SglExpr:
    """`sgl.gen` (same parameters, same meaning) plus, keyword-only:

    explore: sample this generation with ESamp (default; needs a server/engine with
        `--sampling-backend esamp`). explore=False is exactly `sgl.gen`.
    beta: exploration strength in [0, 10] (default: the server's).
    group: an explicit ESamp group id (default: the executing state's fork group, see lineage.py).
    rule: a name in the rule registry, `esamp_sgl.core.rules.RULES` (the ESamp rules, their controls
        and baselines; the config's `rule` field accepts the same names). Default: the server's.
    custom_params: other plugins' flat custom_params, passed through unchanged.

    With `choices=` this is `sgl.select`, which scores the choices instead of sampling: `explore`
    has no effect there, and beta=, group=, rule= and custom_params= are errors.
    """
    if not isinstance(explore, bool):
        raise TypeError(f"gen(explore=...) must be True or False, got {explore!r}")
    if choices:
        given = [k for k, v in (("beta", beta), ("group", group), ("rule", rule), ("custom_params", custom_params))
                 if v is not None]
        if given:
            raise ValueError(f"gen(choices=...) scores the choices, it does not sample: {given[0]}= does not apply")
        explore = False
    params = explore_params(explore=explore, beta=beta, group=group, rule=rule, custom_params=custom_params)
    expr = sgl_gen(
        name=name, max_tokens=max_tokens, min_tokens=min_tokens, n=n, stop=stop, stop_token_ids=stop_token_ids,
        stop_regex=stop_regex, temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p,
        frequency_penalty=frequency_penalty, presence_penalty=presence_penalty, ignore_eos=ignore_eos,
        return_logprob=return_logprob, logprob_start_len=logprob_start_len, top_logprobs_num=top_logprobs_num,
        return_text_in_logprobs=return_text_in_logprobs, dtype=dtype, choices=choices,
        choices_method=choices_method, regex=regex, json_schema=json_schema,
    )
    if params is not None:
        assert isinstance(expr, SglGen)
        expr.sampling_params.custom_params = params
    return expr
