"""Which Distiller an `explore=True` generation trains and uses: its ESamp group id.

The id is resolved when the generation executes, from the fork lineage that
`runtime_patch.frontend` records on every forked executor (`fork_parent`, `fork_ordinal` = the
parent's k-th fork call, `fork_index` = the child's position i).

Rule (each executor E has a *lineage* string, used only to derive ids):

* lineage(root) = its pinned group (`set_group`) or ``"sgl-" + sid[:16]``;
  lineage(child) = ``lineage(parent) + "/k.i"``.
* group(root) = lineage(root): successive explore gens of one unforked program share this id.
* group(child) = ``lineage(parent) + "/k"`` by default (**split**): the n children of one fork call
  share one group, each fork call gets its own, so a nested fork in child i is a new group
  ``.../k.i/j`` that its siblings' nested forks do not share;
  with ``fork(state, n, group="share")`` the children use group(parent) instead;
  with ``fork(state, n, group="<id>")`` or ``set_group(state, "<id>")`` the id is pinned.
* gen(..., group="<id>") overrides all of this for one generation.

Ids longer than the server's 128 characters (deep trees) are shortened to an 80-character prefix
plus a SHA-256 digest, which keeps them unique and deterministic.

A group's Distiller lives on the server while at least one of its requests is in flight; a group id
used again after all its requests finished starts a fresh Distiller. Fork children run concurrently
(one thread each), so they overlap and share it.
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal, Union

from esamp_sgl.core.config import GROUP_KEY_MAX_CHARS, check_group_key

GROUP_PREFIX = "sgl-"
ForkGroupRule = Union[Literal["split", "share"], str]

_PINNED = "esamp_group"  # executor attribute: an explicit group id
_SHARE = "esamp_share_parent_group"  # executor attribute: use the parent's group
_LINEAGE = "_esamp_lineage"  # cache


def check_group_id(argument: str, value: Any) -> str:
    """A valid ESamp group id, or a ValueError naming `argument` (e.g. "gen(group=...)")."""
    try:
        return check_group_key(value)
    except ValueError as exc:
        raise ValueError(f"{argument}: {exc}") from None


def executor_of(state: Any) -> Any:
    """The StreamExecutor behind a ProgramState (or the executor itself)."""
    return getattr(state, "stream_executor", state)


def compact_group_id(raw: str) -> str:
    if len(raw) <= GROUP_KEY_MAX_CHARS:
        return raw
    return f"{raw[:80]}~{hashlib.sha256(raw.encode()).hexdigest()[:32]}"


def lineage(executor: Any) -> str:
    cached = executor.__dict__.get(_LINEAGE)
    if cached is not None:
        return cached
    parent = getattr(executor, "fork_parent", None)
    if parent is None:
        value = executor.__dict__.get(_PINNED) or f"{GROUP_PREFIX}{executor.sid[:16]}"
    else:
        value = f"{lineage(parent)}/{executor.fork_ordinal}.{executor.fork_index}"
    executor.__dict__[_LINEAGE] = value
    return value


def _raw_group(executor: Any) -> str:
    pinned = executor.__dict__.get(_PINNED)
    if pinned is not None:
        return pinned
    parent = getattr(executor, "fork_parent", None)
    if parent is None:
        return lineage(executor)
    if executor.__dict__.get(_SHARE):
        return _raw_group(parent)
    return f"{lineage(parent)}/{executor.fork_ordinal}"


def group_of(state: Any) -> str:
    """The group id an `explore=True` gen without `group=` would use in this program state."""
    return compact_group_id(_raw_group(executor_of(state)))


def set_group(state: Any, group: str) -> None:
    """Pin a state's explore group (before its explore gens execute); forks below derive from it."""
    executor = executor_of(state)
    executor.__dict__[_PINNED] = check_group_id("set_group(group=...)", group)
    executor.__dict__.pop(_LINEAGE, None)


def fork(state: Any, size: int = 1, *, group: ForkGroupRule = "split", position_ids_offset=None):
    """`state.fork(size)` with an explicit group rule for the children.

    group="split" (what plain `s.fork(n)` does): the children share one new group of their own;
    "share": they use the parent's group (one Distiller with the parent and, for a nested fork, with
    the parent's siblings); any other string: that group id, pinned on every child.
    """
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValueError(f"fork size must be a positive integer, got {size!r}")
    if group not in ("split", "share"):
        check_group_id("fork(group=...) must be 'split', 'share' or a group id", group)
    children = state.fork(size, position_ids_offset)
    for child in getattr(children, "states", ()):  # a tracer (run_batch prefix caching) has no executors
        executor = getattr(child, "stream_executor", None)
        if executor is None:
            continue
        if group == "share":
            executor.__dict__[_SHARE] = True
        elif group != "split":
            executor.__dict__[_PINNED] = group
    return children
