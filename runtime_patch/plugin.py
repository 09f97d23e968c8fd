"""SGLang plugin entry point (`sglang.srt.plugins`: esamp = runtime_patch.plugin:load).

SGLang calls `load()` in the CLI before argument parsing, in `Engine.__init__`, and first thing in
every scheduler / detokenizer / DP-controller process. It registers every hook of the touch-point
table (`runtime_patch.touch_points`): the `esamp` sampler backend, the server-argument resolution
steps it needs, and the HookRegistry hooks (`hooks.py`, `serving.py` and the modules beside them).
"""

from __future__ import annotations

import logging
import pkgutil
from typing import Callable

from runtime_patch.backend import BACKEND
from runtime_patch.touch_points import HOOK_REGISTRY_KINDS, Hook, Kind, plugin_hooks

logger = logging.getLogger("esamp_sgl.plugin")

_loaded = False


# -- server-argument resolution steps (Kind.RESOLUTION rows of the table) ----------------------------
def keep_esamp_on_cpu(server_args, previous) -> None:
    """Wraps `handle_cpu_backends`: SGLang forces `pytorch` on --device cpu; our sampler wraps that
    path, so keep `esamp`."""
    from sglang.srt.arg_groups.overrides import declare_resolution, resolving_view

    requested = resolving_view(server_args).sampling_backend
    previous(server_args)
    if requested == BACKEND:
        declare_resolution(server_args, "esamp:keep_backend", sampling_backend=BACKEND)


def capture_last_hidden_states(server_args, previous):
    """Wraps `handle_return_hidden_states_mode`: the taps reach the sampler only if every forward
    captures the last position's states."""
    from sglang.srt.arg_groups.overrides import declare_resolution, resolving_view

    view = resolving_view(server_args)
    if view.sampling_backend != BACKEND:
        return previous(server_args)
    if view.return_hidden_states_mode == "full":
        raise ValueError("--sampling-backend esamp needs --return-hidden-states-mode last (or unset), got full")
    if view.enable_return_aux_hidden_states:
        raise ValueError("--sampling-backend esamp owns the aux hidden-state capture; "
                         "drop --enable-return-aux-hidden-states")
    declare_resolution(server_args, "esamp:capture_last", return_hidden_states_mode="last",
                       enable_return_hidden_states=True)


# -- one registrar per kind of hook ------------------------------------------------------------------
def _register_with_hook_registry(target: str, hook: Hook, handler: Callable) -> None:
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    HookRegistry.register(target, handler, HookType[hook.kind.name])


def _register_resolution_step(target: str, hook: Hook, handler: Callable) -> None:
    from sglang.srt.arg_groups.resolution_hooks import register_resolution_hook

    register_resolution_hook(hook.name)(handler)


def _register_sampler_backend(target: str, hook: Hook, handler: Callable) -> None:
    from sglang.srt.layers.sampler import register_sampler_backend

    register_sampler_backend(hook.name, handler)


_REGISTRARS: dict[Kind, Callable[[str, Hook, Callable], None]] = {
    **{kind: _register_with_hook_registry for kind in HOOK_REGISTRY_KINDS},
    Kind.RESOLUTION: _register_resolution_step,
    Kind.SAMPLER_BACKEND: _register_sampler_backend,
}


def register_touch_points() -> None:
    """Register every plugin hook of the touch-point table, in table order."""
    for target, hook in plugin_hooks():
        _REGISTRARS[hook.kind](target, hook, pkgutil.resolve_name(hook.handler))


def load() -> None:
    """Entry point. Raises (and SGLang logs) if the installed SGLang lacks a symbol we touch."""
    global _loaded
    if _loaded:
        return
    from runtime_patch.compat import self_check

    self_check()
    register_touch_points()
    _loaded = True
