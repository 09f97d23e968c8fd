"""The soak's checks: one response's ESamp telemetry, and the server's state after the run."""

from __future__ import annotations

import math
import time
import uuid
from typing import Any

import requests

from esamp_sgl.bench.soak_plan import Call
from esamp_sgl.launch.prompts import chatml

STATUSES = {"ok", "bank_full", "nonfinite_reset", "nonfinite_prediction"}
TELEMETRY_NUMBERS = ("steps_trained", "predictions", "tokens_reweighted", "mean_loss", "mean_novelty",
                     "r2", "corr_d_z", "nonfinite_resets")
FAILED_STEP_LOG = "esamp: exploration step failed"


def check_telemetry(call: Call, out: dict[str, Any]) -> list[str]:
    """Problems with one completed sample's ESamp report (empty list: valid)."""
    meta = out.get("meta_info") or {}
    reports = meta.get("esamp")
    if not call.explore:
        return [] if not reports else [f"stock sample has telemetry {reports!r}"]
    if not isinstance(reports, list) or len(reports) != 1 or not isinstance(reports[0], dict):
        return [f"exploring sample without one telemetry report: {reports!r}"]
    t = reports[0]
    problems = []
    if call.group_id is not None and t.get("group") != call.group_id:
        problems.append(f"telemetry of group {t.get('group')!r}, expected {call.group_id!r}")
    if t.get("status") not in STATUSES:
        problems.append(f"unknown status {t.get('status')!r}")
    if t.get("status") in ("ok", "nonfinite_reset", "nonfinite_prediction"):
        for name in TELEMETRY_NUMBERS:
            value = t.get(name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not math.isfinite(value)):
                problems.append(f"{name} = {value!r} is not a finite number")
        if not isinstance(t.get("predictions"), int) or t["predictions"] < meta.get("completion_tokens", 0):
            problems.append(f"predictions {t.get('predictions')!r} < completion_tokens "
                            f"{meta.get('completion_tokens')}")
    server = t.get("server")
    if not isinstance(server, dict) or not all(isinstance(server.get(k), int) for k in ("slots_in_use", "capacity")):
        problems.append(f"no server summary in telemetry: {server!r}")
    return problems


# -- server-side observations ----------------------------------------------------------------------
def scheduler_pids(server_pid: int) -> list[int]:
    """Descendants of the server whose process title names the scheduler (SGLang sets
    `sglang::scheduler...`); all descendants if none does (then the bound covers all of them)."""
    import psutil

    children = psutil.Process(server_pid).children(recursive=True)
    named = []
    for child in children:
        try:
            title = " ".join(child.cmdline()) or child.name()
        except psutil.Error:
            continue
        if "scheduler" in title.lower():
            named.append(child.pid)
    return named or [c.pid for c in children]


def probe_summary(url: str) -> dict[str, Any]:
    """Server counters as reported by a one-token exploring request after it left its own group."""
    body = {"text": chatml("Hi"), "sampling_params": {
        "max_new_tokens": 1, "custom_params": {"esamp": True, "esamp_group": f"soak-probe-{uuid.uuid4().hex}"}}}
    response = requests.post(url + "/generate", json=body, timeout=120)
    response.raise_for_status()
    return response.json()["meta_info"]["esamp"][0]["server"]


def wait_until_freed(url: str, drain_s: float) -> tuple[dict[str, Any], float]:
    """Poll until no group state is left (aborted calls may still be draining)."""
    started = time.monotonic()
    while True:
        summary = probe_summary(url)
        freed = summary["slots_in_use"] == 0 and summary["members"] == 0 and summary["stock_groups"] == 0
        if freed or time.monotonic() - started > drain_s:
            return summary, time.monotonic() - started
        time.sleep(2.0)


def healthy(url: str) -> bool:
    try:
        return requests.get(url + "/health_generate", timeout=120).status_code == 200
    except requests.RequestException:
        return False
