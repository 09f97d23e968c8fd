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

With `--passes N` the plan runs N times on the same server (seeds seed, seed+1, ...), each pass
checked as above, and the scheduler RSS after each pass is reported: the first passes raise the
allocator's high-water mark, so steady growth is judged from the second pass on (the least-squares
slope of the RSS per pass from it must stay within `--max-pass-growth-mib`, default 16 MiB; single
passes swing by ±40 MiB on CPU, so use 8 passes or more).

Output: one summary line per pass on stdout, the full report as `soak.json` in `--output`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from esamp_sgl.bench.memory import rss_bytes
from esamp_sgl.bench.soak_checks import FAILED_STEP_LOG, healthy, scheduler_pids, wait_until_freed
from esamp_sgl.bench.soak_client import Outcome, run_call, warm_up
from esamp_sgl.bench.soak_plan import Call, make_plan

MIB = 1 << 20


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


def memory_over_passes(reports: list[dict[str, Any]], max_pass_growth_mib: float) -> dict[str, Any]:
    """Scheduler RSS after each pass; the steady growth is the least-squares slope of the RSS after the
    second pass on (the first passes raise the allocator's high-water mark and first touch the KV
    pool). A violation if it exceeds the bound."""
    after = [r["rss_after_mib"] for r in reports]
    out: dict[str, Any] = {"rss_baseline_mib": reports[0]["rss_before_mib"], "rss_after_pass_mib": after,
                           "growth_per_pass_mib": None, "steady_growth_mib_per_pass": None,
                           "max_pass_growth_mib": max_pass_growth_mib, "violations": []}
    if any(a is None for a in after):
        return out
    out["growth_per_pass_mib"] = [round(b - a, 1) for a, b in zip([reports[0]["rss_before_mib"], *after], after)]
    if len(after) >= 3:
        # least squares over the passes from the second on: single passes swing by tens of MiB
        steady = float(np.polyfit(np.arange(len(after) - 1), after[1:], 1)[0])
        out["steady_growth_mib_per_pass"] = round(steady, 2)
        if steady > max_pass_growth_mib:
            out["violations"].append(f"scheduler RSS grew {steady:.1f} MiB per pass after the second "
                                     f"(bound {max_pass_growth_mib:g})")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="esamp-sgl bench soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="an already running esamp server (default: start one on loopback)")
    parser.add_argument("--server-pid", type=int, help="with --url: the server's pid, for the RSS check")
    from esamp_sgl.launch.registry import add_model_arguments

    add_model_arguments(parser, "model folder for the server this starts (default: the prepared one)")
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
    parser.add_argument("--passes", type=int, default=1, help="run the plan this many times on one server")
    parser.add_argument("--max-pass-growth-mib", type=float, default=16,
                        help="bound on the RSS growth per pass from the second on, a least-squares slope (default 16)")
    parser.add_argument("--max-groups", type=int, help="ESAMP_SGL_MAX_GROUPS for the server this starts")
    parser.add_argument("--output", default="soak-results", help="folder for soak.json (and server.log)")
    args = parser.parse_args(argv)
    if not 1 <= args.passes <= 100:
        parser.error(f"--passes must be in [1, 100], got {args.passes}")

    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    options = dict(requests_total=args.requests, groups=args.groups, concurrency=args.concurrency,
                   max_tokens=args.max_tokens, abort_fraction=args.abort_fraction,
                   explore_fraction=args.explore_fraction, seed=args.seed, time_limit_s=args.time_limit,
                   max_rss_growth_mib=args.max_rss_growth_mib)
    started = time.monotonic()
    from esamp_sgl.launch.registry import resolve_args
    from esamp_sgl.launch.server import server_or_url

    env = None
    if args.max_groups is not None:
        env = {**os.environ, "ESAMP_SGL_MAX_GROUPS": str(args.max_groups)}
    log = output / "server.log"
    with server_or_url(args.url, lambda: resolve_args(args), log_path=log, env=env,
                       extra_args=["--random-seed", str(args.seed)]) as (url, server):
        where = (dict(server_pid=args.server_pid) if server is None
                 else dict(server_pid=server.process.pid, server_log=log))
        reports = []
        for i in range(args.passes):
            reports.append(soak(url.rstrip("/"), **{**options, "seed": args.seed + i}, **where))
            if args.passes > 1:
                print(f"pass {i + 1}/{args.passes}: {summary_line(reports[-1])}", flush=True)
        if args.passes == 1:
            report = reports[0]
        else:
            memory = memory_over_passes(reports, args.max_pass_growth_mib)
            report = {"passes": reports, "memory": memory, "violations": [
                f"pass {i + 1}: {v}" for i, r in enumerate(reports) for v in r["violations"]] + memory["violations"]}
        if server is not None:
            report["server_startup_s"] = round(server.startup_seconds or 0, 1)
    report["wall_s"] = round(time.monotonic() - started, 1)
    (output / "soak.json").write_text(json.dumps(report, indent=2))
    if args.passes == 1:
        print(summary_line(report))
    else:
        m = report["memory"]
        print(f"scheduler RSS {m['rss_baseline_mib']} MiB, after each pass {m['rss_after_pass_mib']} "
              f"(growth {m['growth_per_pass_mib']}); steady growth after the second pass: "
              f"{m['steady_growth_mib_per_pass']} MiB/pass (bound {m['max_pass_growth_mib']:g})")
    for violation in report["violations"][:20]:
        print("  violation:", violation, file=sys.stderr)
    return 0 if not report["violations"] else 1


if __name__ == "__main__":
    sys.exit(main())
