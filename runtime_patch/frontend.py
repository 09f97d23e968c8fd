"""A generic `custom_params` pass-through for SGLang's frontend language (`sglang.lang`, 0.5.23).

The server side of SGLang accepts `sampling_params.custom_params`, but the frontend cannot send it:
`SglSamplingParams.to_srt_kwargs` emits a fixed list of keys and `StreamExecutor._resolve_sampling_params`
copies a fixed list of 20 names (docs/sglang-0.5.23-notes.md §10). This module adds, and only adds:

* `SglSamplingParams.custom_params`: a flat dict, or a callable `(StreamExecutor) -> dict | None`
  that is evaluated when the generation executes (so a value may depend on the executing program
  state, e.g. its fork lineage). It is merged over the program default (gen wins), copied by
  `clone()`, and emitted by `to_srt_kwargs()` when non-empty (RuntimeEndpoint's `/generate` body,
  streaming included).
* Fork lineage on the children of `StreamExecutor.fork` (SGLang records none): `fork_parent` (the
  forking executor), `fork_ordinal` (0 for the parent's first fork call, 1 for its second, ...),
  `fork_index` (the child's position) and `fork_size`. Root executors have `fork_parent = None`.

Nothing here knows about ESamp. SGLang's HookRegistry only runs in server processes, so client code
applies this explicitly (`esamp_sgl.lang` does on import). `apply()` is idempotent; `remove()`
restores the originals (for tests).
"""

from __future__ import annotations

import functools
import pkgutil
import threading
from typing import Any, Callable, Mapping

from runtime_patch.touch_points import Kind, hooks_of_kinds

CUSTOM_PARAMS = "custom_params"
_MARK = "_custom_params_passthrough"  # set on the patched functions
_lock = threading.Lock()
_originals: dict[tuple[type, str], Callable[..., Any]] = {}


def _targets() -> tuple[type, type]:
    try:
        from sglang.lang.interpreter import StreamExecutor
        from sglang.lang.ir import SglSamplingParams
    except ImportError as exc:  # pragma: no cover - depends on the installed SGLang
        raise ImportError(f"runtime_patch.frontend needs sglang.lang (SGLang 0.5.23): {exc}") from exc
    for owner, name, _wrap in _wrapped_methods():
        if not callable(getattr(owner, name, None)):
            raise ImportError(f"runtime_patch.frontend: {owner.__module__}.{owner.__name__}.{name} is missing; "
                              "this patch supports SGLang 0.5.23")
    return SglSamplingParams, StreamExecutor


def _wrapped_methods() -> list[tuple[type, str, Callable[[Callable[..., Any]], Callable[..., Any]]]]:
    """(class, method name, wrapper factory) for the frontend rows of runtime_patch/touch_points.py."""
    methods = []
    for target, hook in hooks_of_kinds(Kind.FRONTEND):
        owner, name = target.rsplit(".", 1)
        methods.append((pkgutil.resolve_name(owner), name, pkgutil.resolve_name(hook.handler)))
    return methods


def materialize_custom_params(value: Any, executor: Any) -> dict[str, Any] | None:
    """A dict (copied), a callable evaluated against `executor`, or None."""
    if value is None:
        return None
    if callable(value):
        value = value(executor)
        if value is None:
            return None
    if not isinstance(value, Mapping):
        raise TypeError(f"custom_params must be a dict (or a callable returning one), got {type(value).__name__}")
    return dict(value)


def wrap_to_srt_kwargs(original: Callable[..., dict]) -> Callable[..., dict]:
    @functools.wraps(original)
    def to_srt_kwargs(self) -> dict:
        out = original(self)
        params = getattr(self, CUSTOM_PARAMS, None)
        if params:
            if callable(params):  # only _resolve_sampling_params has an executor to evaluate it against
                raise TypeError("custom_params is still a callable: it is evaluated when the generation executes")
            out[CUSTOM_PARAMS] = dict(params)
        return out

    return to_srt_kwargs


def wrap_clone(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def clone(self):
        copy = original(self)
        params = getattr(self, CUSTOM_PARAMS, None)
        if params is not None:
            setattr(copy, CUSTOM_PARAMS, dict(params) if isinstance(params, Mapping) else params)
        return copy

    return clone


def wrap_resolve_sampling_params(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def resolve(self, sampling_params):
        resolved = original(self, sampling_params)
        base = materialize_custom_params(getattr(self.default_sampling_para, CUSTOM_PARAMS, None), self)
        override = materialize_custom_params(getattr(sampling_params, CUSTOM_PARAMS, None), self)
        merged = {**(base or {}), **(override or {})}
        setattr(resolved, CUSTOM_PARAMS, merged or None)
        return resolved

    return resolve


def wrap_fork(original: Callable[..., list]) -> Callable[..., list]:
    @functools.wraps(original)
    def fork(self, size: int = 1, position_ids_offset=None):
        children = original(self, size, position_ids_offset)
        with _lock:  # a program may fork one state from several threads
            ordinal = getattr(self, "fork_count", 0)
            self.fork_count = ordinal + 1
        for index, child in enumerate(children):
            child.fork_parent = self
            child.fork_ordinal = ordinal
            child.fork_index = index
            child.fork_size = len(children)
        return children

    return fork


def is_applied() -> bool:
    params_cls, executor_cls = _targets()
    return getattr(executor_cls.fork, _MARK, False)


def apply() -> None:
    """Patch `sglang.lang` once per process (idempotent, thread-safe)."""
    params_cls, executor_cls = _targets()
    with _lock:
        if getattr(executor_cls.fork, _MARK, False):
            return
        # Root executors: a class default, so `getattr(executor, "fork_parent")` is always defined.
        for name, default in (("fork_parent", None), ("fork_ordinal", None), ("fork_index", None),
                              ("fork_size", None)):
            setattr(executor_cls, name, default)
        setattr(params_cls, CUSTOM_PARAMS, None)  # class default: instances without it have none
        for owner, name, wrap in _wrapped_methods():
            if name not in vars(owner):
                continue
            original = vars(owner)[name]
            _originals[(owner, name)] = original
            patched = wrap(original)
            setattr(patched, _MARK, True)
            setattr(owner, name, patched)


def remove() -> None:
    """Restore SGLang's original functions (the class-level defaults stay; they are inert)."""
    with _lock:
        for (owner, name), original in _originals.items():
            setattr(owner, name, original)
        _originals.clear()
