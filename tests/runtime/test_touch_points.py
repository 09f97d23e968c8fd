"""The touch-point table (runtime_patch/touch_points.py) against the code and the installed SGLang.

Every SGLang target path is written once, in the table; every target resolves, every handler is
importable; and what the plugin registered with SGLang (HookRegistry, resolution steps, sampler
backends) is exactly the table's hooks, in the table's order.
"""

from __future__ import annotations

import ast
import pkgutil
import re
from collections import Counter
from pathlib import Path

from runtime_patch.touch_points import HOOK_REGISTRY_KINDS, TOUCH_POINTS, Kind, hooks_of_kinds, plugin_hooks

REPO = Path(__file__).resolve().parents[2]
TABLE = REPO / "runtime_patch" / "touch_points.py"
# The sgl_kernel stand-in is imported at interpreter start-up and keeps its own (checked) list.
STANDIN = REPO / "runtime_patch" / "cpu_compat" / "__init__.py"
DOTTED_SGLANG = re.compile(r"sglang\.(srt|lang)(\.\w+)+")


def _sources() -> list[Path]:
    return [p for package in ("runtime_patch", "esamp_sgl") for p in sorted((REPO / package).rglob("*.py"))]


def _sglang_path_literals(path: Path) -> list[str]:
    """String constants (f-string parts included) that are dotted SGLang paths."""
    return [node.value for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and DOTTED_SGLANG.fullmatch(node.value)]


def test_every_sglang_target_path_is_written_once_in_the_table():
    literals = {path: _sglang_path_literals(path) for path in _sources() if path != STANDIN}
    outside = {str(path.relative_to(REPO)): found for path, found in literals.items() if found and path != TABLE}
    assert not outside, f"SGLang target paths outside runtime_patch/touch_points.py: {outside}"
    repeated = [text for text, count in Counter(literals[TABLE]).items() if count > 1]
    assert not repeated, f"written more than once in the table: {repeated}"
    targets = [point.target for point in TOUCH_POINTS]
    assert len(targets) == len(set(targets)), "one row per target"
    for path in _sources():
        if path != TABLE:
            text = path.read_text()
            assert not [t for t in targets if t in text], f"{path.relative_to(REPO)} spells out a table target"


def test_every_target_resolves_and_every_handler_is_callable():
    from sglang.srt.arg_groups.resolution_hooks import _OVERRIDABLE_HOOKS

    for point in TOUCH_POINTS:
        pkgutil.resolve_name(point.target)
        assert point.why
        for hook in point.hooks:
            assert callable(pkgutil.resolve_name(hook.handler)), hook
            named = hook.kind in (Kind.RESOLUTION, Kind.SAMPLER_BACKEND)
            assert (hook.name is not None) == named, hook
            if hook.kind is Kind.RESOLUTION:
                assert hook.name in _OVERRIDABLE_HOOKS, hook


def test_compat_checks_every_table_target():
    from runtime_patch.compat import TOUCH_POINTS as CHECKED, self_check

    self_check()
    assert {point.target for point in TOUCH_POINTS} <= set(CHECKED)


def test_the_hook_registry_holds_exactly_the_table_hooks_in_order(sglang_with_plugin):
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    expected: dict[str, list] = {}
    for target, hook in hooks_of_kinds(*HOOK_REGISTRY_KINDS):
        expected.setdefault(target, []).append((HookType[hook.kind.name], pkgutil.resolve_name(hook.handler)))
    registered = {target: [(kind, fn) for kind, fn, _source in hooks
                           if getattr(fn, "__module__", "").startswith("runtime_patch")]
                  for target, hooks in HookRegistry._hooks.items()}
    assert {t: h for t, h in registered.items() if h} == expected
    # route_group_to_dp_rank reads the group id stamp_group wrote: AFTER hooks run in registration order
    create = expected["sglang.srt.managers.tokenizer_manager.TokenizerManager._create_tokenized_object"]
    assert [fn.__name__ for _, fn in create] == ["stamp_group", "route_group_to_dp_rank"]


def test_the_resolution_steps_and_the_backend_come_from_the_table(sglang_with_plugin):
    from sglang.srt.arg_groups import resolution_hooks
    from sglang.srt.layers import sampler

    for _target, hook in hooks_of_kinds(Kind.RESOLUTION):
        assert pkgutil.resolve_name(hook.handler) in resolution_hooks._HOOKS[hook.name]
    ours = {name: [fn for fn in fns if fn.__module__.startswith("runtime_patch")]
            for name, fns in resolution_hooks._HOOKS.items()}
    assert sorted(name for name, fns in ours.items() if fns) == sorted(h.name for _, h in hooks_of_kinds(Kind.RESOLUTION))
    (_target, backend), = hooks_of_kinds(Kind.SAMPLER_BACKEND)
    assert sampler._CUSTOM_SAMPLER_FACTORIES[backend.name] is pkgutil.resolve_name(backend.handler)


def test_the_plugin_registers_every_kind_but_the_frontend():
    kinds = {hook.kind for _, hook in plugin_hooks()}
    assert kinds == set(Kind) - {Kind.FRONTEND}


def test_frontend_apply_wraps_the_table_frontend_targets():
    from runtime_patch import frontend

    was_applied = frontend.is_applied()
    frontend.apply()
    try:
        for target, _hook in hooks_of_kinds(Kind.FRONTEND):
            assert getattr(pkgutil.resolve_name(target), "_custom_params_passthrough", False), target
    finally:
        if not was_applied:
            frontend.remove()
