"""Reading a generation's ESamp telemetry from a finished program state."""

from __future__ import annotations

from typing import Any

from esamp_sgl.core.config import TELEMETRY_KEY


def report_from_meta_info(meta_info: Any) -> dict[str, Any] | None:
    """The ESamp report in one sample's meta info (None when the request did not explore)."""
    reports = (meta_info or {}).get(TELEMETRY_KEY) if isinstance(meta_info, dict) else None
    return reports[0] if reports else None


def explore_report(state: Any, name: str) -> dict[str, Any] | None:
    """The group telemetry the server attached to generation `name` (None: it did not explore, or it
    streamed). Values are as of the moment that request finished. For gen(n>1), the first sample's."""
    meta_info = state.get_meta_info(name)
    if isinstance(meta_info, list):
        meta_info = meta_info[0] if meta_info else None
    return report_from_meta_info(meta_info)


def explore_reports(state: Any, name: str) -> list[dict[str, Any] | None]:
    """One report per sample of generation `name` (one element unless it was gen(n>1))."""
    meta_info = state.get_meta_info(name)
    return [report_from_meta_info(m) for m in meta_info] if isinstance(meta_info, list) \
        else [report_from_meta_info(meta_info)]
