"""gen(): SGLang's signature plus exploration keywords, validated with errors that name the argument."""

from __future__ import annotations

import inspect

import pytest
import sglang

from esamp_sgl.lang import ExploreParams, gen


def test_signature_is_sgl_gen_plus_keyword_only_explore_options():
    ours = inspect.signature(gen).parameters
    theirs = inspect.signature(sglang.gen).parameters
    assert list(ours)[:len(theirs)] == list(theirs)  # same names, same order (positional use works)
    extra = {name: p.kind for name, p in ours.items() if name not in theirs}
    assert extra == {name: inspect.Parameter.KEYWORD_ONLY
                     for name in ("explore", "beta", "group", "rule", "custom_params")}


def test_unknown_keywords_are_errors():
    with pytest.raises(TypeError, match="explor"):
        gen("x", explor=True)
    with pytest.raises(TypeError, match="max_new_tokens"):
        gen("x", max_new_tokens=3)  # sgl.gen calls it max_tokens


@pytest.mark.parametrize("kwargs, error, text", [
    ({"explore": 1}, TypeError, "explore"),
    ({"explore": "yes"}, TypeError, "explore"),
    ({"explore": True, "beta": 11}, ValueError, r"beta=\.\.\.\) must be a finite number in \[0, 10\]"),
    ({"explore": True, "beta": -0.1}, ValueError, "beta"),
    ({"explore": True, "beta": float("nan")}, ValueError, "beta"),
    ({"explore": True, "beta": True}, ValueError, "beta"),
    ({"explore": True, "beta": "1"}, ValueError, "beta"),
    ({"explore": True, "group": ""}, ValueError, "group"),
    ({"explore": True, "group": "x" * 129}, ValueError, "group"),
    ({"explore": True, "group": "tab\there"}, ValueError, "group"),
    ({"explore": True, "group": 7}, ValueError, "group"),
    ({"explore": True, "rule": "random"}, ValueError, "rule"),
    ({"explore": False, "beta": 1.0}, ValueError, r"beta=\.\.\.\) only applies with explore=True"),
    ({"explore": False, "group": "g"}, ValueError, "group"),
    ({"explore": False, "rule": "compensated"}, ValueError, "rule"),
    ({"custom_params": {"esamp_beta": 1}}, ValueError, "esamp_beta"),
    ({"explore": False, "custom_params": {"esamp": True}}, ValueError, "esamp"),
    ({"custom_params": {"k": [1, 2]}}, TypeError, "JSON scalar"),
    ({"custom_params": ["k"]}, TypeError, "dict"),
    ({"beta": 1.0, "choices": ["a", "b"]}, ValueError, "choices"),
    ({"custom_params": {"k": 1}, "choices": ["a", "b"]}, ValueError, "choices"),
])
def test_bad_exploration_arguments_name_the_argument(kwargs, error, text):
    with pytest.raises(error, match=text):
        gen("x", **kwargs)


def test_gen_explores_by_default():
    params = gen("x", max_tokens=5).sampling_params.custom_params
    assert isinstance(params, ExploreParams) and params.beta is None and params.group is None


def test_explore_false_is_exactly_sgl_gen():
    ours = gen("x", max_tokens=5, temperature=0.3, explore=False)
    theirs = sglang.gen("x", max_tokens=5, temperature=0.3)
    assert type(ours) is type(theirs)
    assert vars(ours.sampling_params) == vars(theirs.sampling_params)
    assert ours.sampling_params.custom_params is None
    for select in (gen("c", choices=["a", "b"]), gen("c", choices=["a", "b"], explore=True)):
        assert type(select).__name__ == "SglSelect"  # select scores choices: nothing to explore


def test_explore_attaches_a_resolver_with_the_options():
    expr = gen("x", explore=True, beta=2, rule="compensated", custom_params={"other_plugin": "on"})
    params = expr.sampling_params.custom_params
    assert isinstance(params, ExploreParams)
    assert params.beta == 2.0 and params.rule == "compensated" and params.group is None
    pinned = gen("x", explore=True, group="my-group").sampling_params.custom_params
    assert pinned(object()) == {"esamp": True, "esamp_group": "my-group"}  # no executor needed when pinned
    assert gen("x", custom_params={"k": 1}, explore=False).sampling_params.custom_params == {"k": 1}


def test_function_rejects_program_arguments_that_run_would_swallow():
    from esamp_sgl.lang import function

    with pytest.raises(ValueError, match="'n' has the name of a keyword of SglFunction.run"):
        @function
        def program(s, question, n):
            pass

    with pytest.raises(ValueError, match="'temperature'"):
        @function(num_api_spec_tokens=None)
        def other(s, temperature=1.0):
            pass

    @function
    def fine(s, question, count):
        pass

    assert fine.arg_names == ["question", "count"]
