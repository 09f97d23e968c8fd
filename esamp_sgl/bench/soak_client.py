"""The soak's client: one planned /generate call, aborted as planned, and what came back."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import requests

from esamp_sgl.bench.soak_checks import check_telemetry, wait_until_freed
from esamp_sgl.bench.soak_plan import PROMPTS, Call, make_plan
from esamp_sgl.launch.prompts import chatml


@dataclass
class Outcome:
    index: int
    status: int | None = None
    error: str | None = None
    samples: int = 0  # samples returned (non-streamed) or streamed to the end
    completed: int = 0  # samples that finished normally (not aborted)
    aborted_by_server: int = 0  # samples whose finish reason is "abort"
    telemetry_checked: int = 0
    telemetry_errors: list[str] = field(default_factory=list)
    statuses: list[str] = field(default_factory=list)  # telemetry status of each completed exploring sample
    seconds: float = 0.0


def _is_abort(out: dict[str, Any]) -> bool:
    reason = (out.get("meta_info") or {}).get("finish_reason") or {}
    return isinstance(reason, dict) and reason.get("type") == "abort"


def run_call(url: str, call: Call, request_timeout: float, rng_seed: int) -> Outcome:
    outcome = Outcome(call.index)
    started = time.monotonic()
    prompt = chatml(PROMPTS[(call.group + rng_seed) % len(PROMPTS)])
    timer = None
    if call.abort == "abort_request":
        def cancel() -> None:
            try:
                requests.post(url + "/abort_request", json={"rid": call.rid}, timeout=30)
            except requests.RequestException as exc:  # reported, not fatal: the call itself is checked
                outcome.error = f"/abort_request failed: {exc}"
        timer = threading.Timer(call.abort_point, cancel)
        timer.start()
    try:
        response = requests.post(url + "/generate", json=call.body(prompt), timeout=request_timeout,
                                 stream=call.stream)
        outcome.status = response.status_code
        if call.stream:
            chunks = 0
            finished_ids: set[int] = set()
            for line in response.iter_lines():
                if not line.startswith(b"data:"):
                    continue
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    break
                chunks += 1
                if call.abort == "stream_close" and chunks > call.abort_point:
                    break  # the client goes away mid-stream; SGLang must abort the request
                item = json.loads(payload)
                if (item.get("meta_info") or {}).get("finish_reason"):
                    finished_ids.add(int(item.get("index", 0)))
                    outcome.aborted_by_server += _is_abort(item)
            response.close()
            outcome.samples = len(finished_ids)
            outcome.completed = len(finished_ids) - outcome.aborted_by_server
        elif response.status_code == 200:
            outs = response.json()
            outs = outs if isinstance(outs, list) else [outs]
            outcome.samples = len(outs)
            groups = set()
            for out in outs:
                if _is_abort(out):
                    outcome.aborted_by_server += 1
                    continue
                outcome.completed += 1
                problems = check_telemetry(call, out)
                outcome.telemetry_checked += call.explore
                outcome.telemetry_errors += problems
                reports = [r for r in (out.get("meta_info") or {}).get("esamp") or [] if isinstance(r, dict)]
                groups.update(r.get("group") for r in reports)
                outcome.statuses += [str(r.get("status")) for r in reports]
            if call.explore and len(groups) > 1:  # the n samples of one call share one group
                outcome.telemetry_errors.append(f"samples of one call report groups {sorted(map(str, groups))}")
        else:
            outcome.error = f"HTTP {response.status_code}: {response.text[:200]}"
    except (requests.RequestException, ValueError) as exc:
        outcome.error = f"{type(exc).__name__}: {exc}"
    finally:
        if timer is not None:
            timer.join()
    outcome.seconds = round(time.monotonic() - started, 3)
    return outcome


def warm_up(url: str) -> None:
    """Exercise every path once (explore n>1, stock, stream, abort) before the RSS baseline."""
    plan = make_plan(4, 10, 6, 0.3, 0.75, seed=99)
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda c: run_call(url, c, 300, 0), plan))
    wait_until_freed(url, 60)
