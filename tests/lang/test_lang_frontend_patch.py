"""runtime_patch.frontend: the generic custom_params pass-through and fork lineage in sglang.lang."""

from __future__ import annotations

import pytest

import esamp_sgl.lang  # noqa: F401  (applies the patch)
from runtime_patch import frontend


def test_apply_is_idempotent_and_marks_the_patched_functions():
    from sglang.lang.interpreter import StreamExecutor
    from sglang.lang.ir import SglSamplingParams

    before = (StreamExecutor.fork, SglSamplingParams.to_srt_kwargs)
    frontend.apply()
    frontend.apply()
    assert (StreamExecutor.fork, SglSamplingParams.to_srt_kwargs) == before
    assert frontend.is_applied()


def test_to_srt_kwargs_emits_custom_params_only_when_set():
    from sglang.lang.ir import SglSamplingParams

    params = SglSamplingParams(max_new_tokens=4)
    assert "custom_params" not in params.to_srt_kwargs()
    params.custom_params = {"a": 1}
    out = params.to_srt_kwargs()
    assert out["custom_params"] == {"a": 1} and out["max_new_tokens"] == 4
    out["custom_params"]["a"] = 2  # a copy: the request body cannot alias the program's params
    assert params.custom_params == {"a": 1}
    assert params.clone().custom_params == {"a": 1}
    params.custom_params = lambda executor: {"a": 1}
    with pytest.raises(TypeError, match="evaluated when the generation executes"):
        params.to_srt_kwargs()


def test_resolve_merges_defaults_and_evaluates_callables_against_the_executor(recording_backend):
    from sglang.lang.interpreter import StreamExecutor
    from sglang.lang.ir import SglSamplingParams

    defaults = SglSamplingParams()
    defaults.custom_params = {"plugin": "x", "shared": 1}
    executor = StreamExecutor(recording_backend, {}, defaults, None, False, use_thread=False)
    override = SglSamplingParams(max_new_tokens=None)
    override.custom_params = lambda ex: {"shared": 2, "sid": ex.sid}
    resolved = executor._resolve_sampling_params(override)
    assert resolved.custom_params == {"plugin": "x", "shared": 2, "sid": executor.sid}
    plain = executor._resolve_sampling_params(SglSamplingParams(max_new_tokens=None))
    assert plain.custom_params == {"plugin": "x", "shared": 1}


def test_fork_records_parent_ordinal_and_index(recording_backend):
    from sglang.lang.interpreter import StreamExecutor
    from sglang.lang.ir import SglSamplingParams

    root = StreamExecutor(recording_backend, {}, SglSamplingParams(), None, False, use_thread=False)
    assert root.fork_parent is None
    first, second = root.fork(3), root.fork(2)
    assert [c.fork_index for c in first] == [0, 1, 2] and {c.fork_ordinal for c in first} == {0}
    assert {c.fork_ordinal for c in second} == {1} and {c.fork_size for c in second} == {2}
    assert all(c.fork_parent is root for c in first + second)
    grandchildren = first[1].fork(2)
    assert all(g.fork_parent is first[1] and g.fork_ordinal == 0 for g in grandchildren)


def test_remove_restores_the_originals_and_apply_reinstalls():
    from sglang.lang.interpreter import StreamExecutor

    frontend.remove()
    try:
        assert not getattr(StreamExecutor.fork, "_custom_params_passthrough", False)
    finally:
        frontend.apply()
    assert frontend.is_applied()
