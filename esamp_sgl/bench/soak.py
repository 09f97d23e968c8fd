"""Soak test of the `esamp` backend on one real server (`esamp-sgl bench soak`).

What it does: `--groups` fork groups with `--requests` samples in all (200 in 50 by default), sent as
/generate calls of mixed shape (one call with n=4, two calls with n=2 sharing an `esamp_group`, or
four n=1 calls sharing one), mixed explore on/off, greedy/sampled with different filters and
mixed max-tokens, at most `--concurrency` calls in flight. About `--abort-fraction` of the calls are
aborted by the client at a random point: a streamed call closed after a random number of chunks, or
a call cancelled through `/abort_request` after a random delay (possibly before it was scheduled,
possibly after it finished). Loopback only; bounded in count (the plan is fixed up front) and in
time (`--time-limit`; calls not started by then are counted as skipped, which is a violation).

Checks afterwards (each failure is a violation → exit 1):
* every call that was not aborted returned HTTP 200, and no call failed at the transport level;
* every completed exploring sample (non-streamed) carries valid telemetry for *its* group
  (`meta_info.esamp[0]`: group id, a known status, finite numbers, predictions >= its tokens);
  stock samples carry none;
* the server is healthy (`/health_generate`);
* every group was freed: a final one-token exploring probe reports, after leaving its own group,
  `slots_in_use == members == stock_groups == 0` (retried while aborted calls drain);
* the scheduler processes' RSS (children of the server pid whose title names the scheduler) grew
  by at most `--max-rss-growth-mib` (default 256 MiB) over its level after a warm-up round. Why that
  bound: the warm-up runs small batches, and the first full run raises the allocator's high-water mark
  (measured here: +150 MiB in the first 200-request pass, +49 MiB in a second pass on the same server);
  a leak of ~1.3 MiB per request or more would cross it within one run;
* the server log (when this command started the server) has no failed ESamp step.

Output: one summary line on stdout, the full report as `soak.json` in `--output`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import requests

from esamp_sgl.bench.memory import rss_bytes
from esamp_sgl.launch.prompts import chatml

PROMPTS = [
    "Invent a board game.", "Describe a city at night.", "Give one tip for a new gardener.",
    "Write a two-line poem about rain.", "Name a color and a fruit.", "Suggest a name for a cafe.",
    "What is a good hobby?", "Tell a very short story about a fox.",
]
# Group shapes: the samples of one fork group as per-call `n` (calls after the first share the group
# through `esamp_group`; a single call's n samples share it automatically).
SHAPES = {"n4": (4,), "n2x2": (2, 2), "n1x4": (1, 1, 1, 1)}
SAMPLE_SETTINGS = [
    {"temperature": 0.0},
    {"temperature": 1.0, "min_p": 0.05},
    {"temperature": 0.8, "top_k": 20},
    {"temperature": 0.9, "top_p": 0.9},
]
STATUSES = {"ok", "bank_full", "nonfinite_reset", "nonfinite_prediction"}
TELEMETRY_NUMBERS = ("steps_trained", "predictions", "tokens_reweighted", "mean_loss", "mean_novelty",
                     "r2", "corr_d_z", "nonfinite_resets")
FAILED_STEP_LOG = "esamp: exploration step failed"
MIB = 1 << 20


@dataclass
class Call:
    """One /generate call of the plan."""

    index: int
    group: int  # fork-group index in the plan
    group_id: str | None  # the esamp_group sent (None: stock, or one call whose n samples share one)
    n: int
    explore: bool
    sampling: dict[str, Any]
    max_tokens: int
    abort: str | None = None  # None | "stream_close" | "abort_request"
    abort_point: float = 0.0  # seconds before /abort_request, or chunks read before closing
    stream: bool = False
    rid: str = field(default_factory=lambda: uuid.uuid4().hex)

    def body(self, prompt: str) -> dict[str, Any]:
        params: dict[str, Any] = {"max_new_tokens": self.max_tokens, "n": self.n, **self.sampling}
        if self.abort:  # long enough that the abort lands mid-generation more often than not
            params["ignore_eos"] = True
        if self.explore:
            custom: dict[str, Any] = {"esamp": True}
            if self.group_id is not None:
                custom["esamp_group"] = self.group_id
            params["custom_params"] = custom
        elif self.group % 2:
            params["custom_params"] = {"esamp": False}  # explicit opt-out is stock too
        body: dict[str, Any] = {"text": prompt, "sampling_params": params, "stream": self.stream}
        if self.n == 1:  # /abort_request matches the rid; SGLang renames the n>1 samples' rids
            body["rid"] = self.rid
        return body


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


def make_plan(groups: int, samples: int, max_tokens: int, abort_fraction: float, explore_fraction: float,
              seed: int) -> list[Call]:
    """A fixed plan of calls: `groups` fork groups holding `samples` samples in all."""
    if samples < groups:
        raise ValueError(f"--requests must be >= --groups, got {samples} < {groups}")
    rng = random.Random(seed)
    per_group = [samples // groups + (1 if g < samples % groups else 0) for g in range(groups)]
    calls: list[Call] = []
    for g, size in enumerate(per_group):
        shape = SHAPES[rng.choice(sorted(SHAPES))] if size == 4 else (size,)
        explore = rng.random() < explore_fraction
        sampling = dict(rng.choice(SAMPLE_SETTINGS))
        group_id = f"soak-{seed}-{g}-{uuid.uuid4().hex[:8]}" if explore and len(shape) > 1 else None
        for n in shape:
            call = Call(len(calls), g, group_id, n, explore, sampling, rng.randint(2, max_tokens))
            if rng.random() < abort_fraction:
                call.abort = "abort_request" if n == 1 and rng.random() < 0.5 else "stream_close"
                call.stream = call.abort == "stream_close"
                call.abort_point = rng.uniform(0.0, 3.0) if call.abort == "abort_request" else rng.randint(0, 4)
                call.max_tokens = max_tokens * 4
            else:
                call.stream = rng.random() < 0.1  # some completed calls streamed too (no telemetry there)
            calls.append(call)
    return calls


# -- checks on one response ------------------------------------------------------------------------
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


def warm_up(url: str) -> None:
    """Exercise every path once (explore n>1, stock, stream, abort) before the RSS baseline."""
    plan = make_plan(4, 10, 6, 0.3, 0.75, seed=99)
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda c: run_call(url, c, 300, 0), plan))
    wait_until_freed(url, 60)


# -- the run ---------------------------------------------------------------------------------------
def soak(url: str, *, requests_total: int = 200, groups: int = 50, concurrency: int = 32, max_tokens: int = 12,
         abort_fraction: float = 0.2, explore_fraction: float = 0.7, seed: int = 0, time_limit_s: float = 900,
         request_timeout_s: float = 300, drain_s: float = 60, server_pid: int | None = None,
         max_rss_growth_mib: float = 256, server_log: Path | None = None) -> dict[str, Any]:
    """Run the soak against `url` and return the report (`report["violations"]` empty = pass)."""
    plan = make_plan(groups, requests_total, max_tokens, abort_fraction, explore_fraction, seed)
    pids = scheduler_pids(server_pid) if server_pid else []
    warm_up(url)
    rss_before = rss_bytes(pids) if pids else None
    log_offset = server_log.stat().st_size if server_log and server_log.exists() else 0

    started = time.monotonic()
    deadline = started + time_limit_s
    outcomes: dict[int, Outcome] = {}

    def guarded(call: Call) -> Outcome:
        if time.monotonic() > deadline:
            return Outcome(call.index, error="skipped: time limit reached before the call started")
        timeout = max(5.0, min(request_timeout_s, deadline - time.monotonic()))
        return run_call(url, call, timeout, seed)

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        for outcome in pool.map(guarded, plan):
            outcomes[outcome.index] = outcome
    run_s = time.monotonic() - started

    violations: list[str] = []
    for call in plan:
        outcome = outcomes[call.index]
        if outcome.error:
            violations.append(f"call {call.index} ({call.abort or 'complete'}): {outcome.error}")
        elif outcome.status not in (200, None):
            violations.append(f"call {call.index}: HTTP {outcome.status}")
        for problem in outcome.telemetry_errors:
            violations.append(f"call {call.index} telemetry: {problem}")
        if not call.abort and outcome.error is None and not call.stream and outcome.completed != call.n:
            violations.append(f"call {call.index}: {outcome.completed}/{call.n} samples completed without abort")
    is_healthy = healthy(url)
    if not is_healthy:
        violations.append("server unhealthy after the run (/health_generate)")
    summary, drained_s = wait_until_freed(url, drain_s) if is_healthy else ({}, 0.0)
    leaked = {k: summary.get(k) for k in ("slots_in_use", "members", "stock_groups", "groups")}
    if is_healthy and any(v != 0 for v in leaked.values()):
        violations.append(f"group state left after {drained_s:.0f} s: {leaked}")
    rss_after = rss_bytes(pids) if pids else None
    rss_delta_mib = None if rss_before is None else (rss_after - rss_before) / MIB
    if rss_delta_mib is not None and rss_delta_mib > max_rss_growth_mib:
        violations.append(f"scheduler RSS grew by {rss_delta_mib:.0f} MiB (bound {max_rss_growth_mib:g} MiB)")
    failed_steps = None
    if server_log and server_log.exists():
        with server_log.open("rb") as f:
            f.seek(log_offset)
            failed_steps = f.read().decode(errors="replace").count(FAILED_STEP_LOG)
        if failed_steps:
            violations.append(f"{failed_steps} failed ESamp steps in the server log")
    if run_s > time_limit_s:
        violations.append(f"run took {run_s:.0f} s, over the {time_limit_s:g} s limit")

    aborted_calls = [c for c in plan if c.abort]
    counts = {
        "requests": sum(c.n for c in plan),
        "calls": len(plan),
        "groups": groups,
        "exploring_requests": sum(c.n for c in plan if c.explore),
        "aborted_requests": sum(c.n for c in aborted_calls),
        "aborted_calls": len(aborted_calls),
        "stream_closes": sum(c.abort == "stream_close" for c in plan),
        "abort_requests": sum(c.abort == "abort_request" for c in plan),
        "aborted_by_server": sum(o.aborted_by_server for o in outcomes.values()),
        "completed": sum(o.completed for o in outcomes.values()),
        "telemetry_checked": sum(o.telemetry_checked for o in outcomes.values()),
        "errors": sum(o.error is not None for o in outcomes.values()),
        "skipped": sum((o.error or "").startswith("skipped") for o in outcomes.values()),
        "telemetry_statuses": dict(Counter(s for o in outcomes.values() for s in o.statuses)),
    }
    return {
        "settings": {"url": url, "requests": requests_total, "groups": groups, "concurrency": concurrency,
                     "max_tokens": max_tokens, "abort_fraction": abort_fraction,
                     "explore_fraction": explore_fraction, "seed": seed, "time_limit_s": time_limit_s,
                     "max_rss_growth_mib": max_rss_growth_mib},
        "counts": counts,
        "run_s": round(run_s, 1),
        "drain_s": round(drained_s, 1),
        "healthy": is_healthy,
        "server_after": summary,
        "slots_leaked": leaked.get("slots_in_use"),
        "scheduler_pids": pids,
        "rss_before_mib": None if rss_before is None else round(rss_before / MIB, 1),
        "rss_after_mib": None if rss_after is None else round(rss_after / MIB, 1),
        "rss_delta_mib": None if rss_delta_mib is None else round(rss_delta_mib, 1),
        "failed_steps_logged": failed_steps,
        "violations": violations,
        "calls": [{**asdict(c), **asdict(outcomes[c.index])} for c in plan],
    }


def summary_line(report: dict[str, Any]) -> str:
    c = report["counts"]
    rss = ("RSS not measured (no server pid)" if report["rss_delta_mib"] is None else
           f"scheduler RSS {report['rss_before_mib']:.0f} -> {report['rss_after_mib']:.0f} MiB "
           f"({report['rss_delta_mib']:+.0f}, bound {report['settings']['max_rss_growth_mib']:g})")
    verdict = "PASS" if not report["violations"] else f"FAIL ({len(report['violations'])} violations)"
    return (f"soak: {c['requests']} requests ({c['calls']} calls) in {c['groups']} groups, "
            f"{c['exploring_requests']} exploring; {c['aborted_requests']} aborted by the client "
            f"({c['stream_closes']} stream closes, {c['abort_requests']} /abort_request); "
            f"{c['completed']} completed, telemetry valid on {c['telemetry_checked']}; {c['errors']} errors; "
            f"slots leaked {report['slots_leaked']}; {rss}; {report['run_s']:.0f} s — {verdict}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="esamp-sgl bench soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="an already running esamp server (default: start one on loopback)")
    parser.add_argument("--server-pid", type=int, help="with --url: the server's pid, for the RSS check")
    parser.add_argument("--model-path", help="model for the server this starts (default: the prepared one)")
    parser.add_argument("--requests", type=int, default=200, help="samples in all (default 200)")
    parser.add_argument("--groups", type=int, default=50, help="fork groups (default 50)")
    parser.add_argument("--concurrency", type=int, default=32, help="calls in flight at most (default 32)")
    parser.add_argument("--max-tokens", type=int, default=12,
                        help="max new tokens of completed calls is drawn from [2, this]; aborted calls get 4x")
    parser.add_argument("--abort-fraction", type=float, default=0.2)
    parser.add_argument("--explore-fraction", type=float, default=0.7)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--time-limit", type=float, default=900, help="seconds for the whole plan (default 900)")
    parser.add_argument("--max-rss-growth-mib", type=float, default=256)
    parser.add_argument("--max-groups", type=int, help="ESAMP_SGL_MAX_GROUPS for the server this starts")
    parser.add_argument("--output", default="soak-results", help="folder for soak.json (and server.log)")
    args = parser.parse_args(argv)

    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    options = dict(requests_total=args.requests, groups=args.groups, concurrency=args.concurrency,
                   max_tokens=args.max_tokens, abort_fraction=args.abort_fraction,
                   explore_fraction=args.explore_fraction, seed=args.seed, time_limit_s=args.time_limit,
                   max_rss_growth_mib=args.max_rss_growth_mib)
    started = time.monotonic()
    from esamp_sgl.launch.models import prepare_model
    from esamp_sgl.launch.server import server_or_url

    env = None
    if args.max_groups is not None:
        env = {**os.environ, "ESAMP_SGL_MAX_GROUPS": str(args.max_groups)}
    log = output / "server.log"
    with server_or_url(args.url, lambda: args.model_path or prepare_model(), log_path=log, env=env,
                       extra_args=["--random-seed", str(args.seed)]) as (url, server):
        if server is None:
            report = soak(url.rstrip("/"), server_pid=args.server_pid, **options)
        else:
            report = soak(url, server_pid=server.process.pid, server_log=log, **options)
            report["server_startup_s"] = round(server.startup_seconds or 0, 1)
    report["wall_s"] = round(time.monotonic() - started, 1)
    (output / "soak.json").write_text(json.dumps(report, indent=2))
    print(summary_line(report))
    for violation in report["violations"][:20]:
        print("  violation:", violation, file=sys.stderr)
    return 0 if not report["violations"] else 1


if __name__ == "__main__":
    sys.exit(main())
