"""Two esamp workers behind SGLang's router (`esamp-sgl bench router`; `scripts/router_demo.sh`).

The router is SGLang's model gateway, from PyPI: `smg` (its current package, the default here) or
`sglang-router` (its older name, 0.3.2), run from the directory `--router-path` it was installed into
(`pip install --target`; it is not a dependency of esamp-sgl).

Starts two CPU workers (`--sampling-backend esamp`, `ESAMP_SGL_GROUP_BY=prompt`, one OpenMP thread
each, loopback only; each answers with its own `meta_info.weight_version`, `worker-0` / `worker-1`, so
a reply says which worker served it) and then, one after the other, the router with the policy each
phase needs:

0. does the router forward `custom_params`? (`sglang-router` 0.3.2 does not: with it the workers run
   with `ESAMP_SGL_EXPLORE_ALL=true`, and the routing-key header names the group,
   runtime_patch/grouping.py)
1. `cache_aware` (the router's default): R concurrent `n = 1` requests with one prompt (an RL
   rollout) -> which workers served them, and how many groups / members the workers report.
2. `round_robin`, the same: what a group-blind policy does to a prompt group.
3. explicit `esamp_group` ids, routed by the header `X-SMG-Routing-Key: <group>`: `consistent_hashing`
   (in `sglang-router` 0.3.2 only through its Python API, not its CLI choices) and `manual` (sticky per key).
4. throughput: P prompts x R repeats, `cache_aware`, 1 worker vs 2 workers behind the router.
5. a worker dies mid-group (SIGKILL): what the in-flight members get, and where the group's next
   members go (a fresh Distiller on the surviving worker).

Writes `router.json` (every number, the commands, the load average) into `--output`. Each worker
needs ~2-4 GiB; the whole run is bounded by `--budget-s`.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from esamp_sgl.bench.overhead import PROMPTS
from esamp_sgl.launch.prompts import chatml

HOST = "127.0.0.1"
# PyPI package -> (version scripts/router_demo.sh installs, launcher module). The newest of each when
# this was written; smg is the gateway's current package, sglang-router its older name.
ROUTERS = {"smg": ("1.13.0", "smg.launch_router"), "sglang-router": ("0.3.2", "sglang_router.launch_router")}
ROUTING_KEY_HEADER = "X-SMG-Routing-Key"


def router_command(router: str, port: int, workers: list[str], policy: str, metrics_port: int) -> list[str]:
    """The router's own launcher. `sglang-router` 0.3.2 accepts `consistent_hashing` in its Python API
    (`router.policy_from_str`) but not in the CLI's `--policy` choices, so it is set after parsing."""
    detour = router == "sglang-router" and policy == "consistent_hashing"
    argv = ["--host", HOST, "--port", str(port), "--worker-urls", *workers,
            "--policy", "manual" if detour else policy,
            "--prometheus-host", HOST, "--prometheus-port", str(metrics_port),
            "--health-check-interval-secs", "2", "--health-failure-threshold", "2",
            "--retry-max-retries", "2", "--retry-initial-backoff-ms", "200", "--log-level", "warn"]
    if not detour:
        return [sys.executable, "-m", ROUTERS[router][1], *argv]
    code = ("import sys; from sglang_router.launch_router import parse_router_args, launch_router; "
            "a = parse_router_args(sys.argv[1:]); a.policy = 'consistent_hashing'; launch_router(a)")
    return [sys.executable, "-c", code, *argv]


def router_env(router_path: str | None) -> dict[str, str]:
    env = dict(os.environ)
    if router_path:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (router_path, env.get("PYTHONPATH")) if p)
    return env


class Router:
    def __init__(self, router: str, router_path: str | None, workers: list[str], policy: str, log_dir: Path) -> None:
        from esamp_sgl.launch.server import free_port

        self.port, self.policy = free_port(HOST), policy
        self.command = router_command(router, self.port, workers, policy, free_port(HOST))
        self.env = router_env(router_path)
        self.log = log_dir / f"router-{policy}-{len(workers)}w.log"
        self.process: subprocess.Popen | None = None
        self.workers = len(workers)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def __enter__(self) -> "Router":
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                            start_new_session=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"router exited ({self.process.returncode}):\n{self.log.read_text()[-3000:]}")
            try:  # workers are registered in the background: wait until every one is healthy
                ready = requests.get(self.url + "/readiness", timeout=5)
                if ready.status_code == 200 and ready.json().get("healthy_workers") == self.workers:
                    return self
            except (requests.RequestException, ValueError):
                pass
            time.sleep(0.5)
        self.__exit__()
        raise RuntimeError("router not ready (every worker healthy) after 120 s")

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)


def post(url: str, text: str, params: dict, headers: dict | None = None, timeout: float = 600) -> dict:
    """One /generate call; returns a summary (never raises on HTTP errors: phase 5 expects some)."""
    try:
        response = requests.post(url + "/generate", json={"text": text, "sampling_params": params},
                                 headers=headers or {}, timeout=timeout)
    except requests.RequestException as exc:
        return {"ok": False, "error": type(exc).__name__}
    if response.status_code != 200:
        return {"ok": False, "status": response.status_code, "error": response.text[:200]}
    meta = response.json()["meta_info"]
    t = (meta.get("esamp") or [None])[0] or {}
    return {"ok": True, "worker": meta.get("weight_version"), "group": t.get("group"),
            "members_joined": t.get("members_joined"), "predictions": t.get("predictions"),
            "steps_trained": t.get("steps_trained"), "tokens": meta["completion_tokens"]}


def concurrent(jobs: list[tuple]) -> list[dict]:
    with ThreadPoolExecutor(len(jobs)) as pool:
        return list(pool.map(lambda job: post(*job), jobs))


def params(tokens: int, **custom) -> dict:
    return {"max_new_tokens": tokens, "ignore_eos": True, "temperature": 1.0, "min_p": 0.05,
            "custom_params": {"esamp": True, **custom}}


def summarize(outs: list[dict]) -> dict:
    """Per (worker, group): requests and the members the group's last leaver reported."""
    by = collections.defaultdict(list)
    for o in outs:
        if o["ok"]:
            by[(o["worker"], o["group"])].append(o)
    groups = [{"worker": w, "group": g, "requests": len(v), "members_joined": max(x["members_joined"] or 0 for x in v)}
              for (w, g), v in sorted(by.items(), key=str)]
    return {"workers": dict(collections.Counter(o.get("worker") for o in outs if o["ok"])), "groups": groups,
            "failed": [o for o in outs if not o["ok"]]}


def rollout(url: str, repeats: int, tokens: int, tag: str) -> dict:
    text = chatml(f"Invent a name for a boat. ({tag})")
    return summarize(concurrent([(url, text, params(tokens))] * repeats))


def explicit_groups(url: str, groups: int, per_group: int, tokens: int, tag: str) -> dict:
    jobs = []
    for g in range(groups):
        group = f"demo-{tag}-{g}"
        for m in range(per_group):  # different prompts: only the header keeps a group together
            jobs.append((url, chatml(f"{PROMPTS[(g + m) % len(PROMPTS)]} ({tag}-{g}-{m})"), params(tokens, esamp_group=group),
                         {ROUTING_KEY_HEADER: group}))
    out = summarize(concurrent(jobs))
    out["groups_on_one_worker"] = sum(
        len({x["worker"] for x in out["groups"] if x["group"] == f"demo-{tag}-{g}"}) == 1 for g in range(groups))
    out["groups_sent"] = groups
    return out


def throughput(url: str, prompts: int, repeats: int, tokens: int, rounds: int, tag: str) -> dict:
    post(url, chatml("Warm up."), params(4))
    results = []
    for r in range(rounds):
        jobs = [(url, chatml(f"{PROMPTS[p % len(PROMPTS)]} ({tag}-{r}-{p})"), params(tokens))
                for p in range(prompts) for _ in range(repeats)]
        started = time.monotonic()
        outs = concurrent(jobs)
        seconds = time.monotonic() - started
        done = sum(o["tokens"] for o in outs if o["ok"])
        s = summarize(outs)
        results.append({"tokens": done, "seconds": round(seconds, 2), "tokens_per_s": round(done / seconds, 2),
                        "requests_per_worker": s["workers"], "failed": len(s["failed"]),
                        "prompt_groups_split_over_workers": prompts - sum(
                            1 for g in {x["group"] for x in s["groups"]}
                            if len({y["worker"] for y in s["groups"] if y["group"] == g}) == 1)})
    return {"rounds": results, "median_tokens_per_s": statistics.median(r["tokens_per_s"] for r in results),
            "load_avg": [round(x, 2) for x in os.getloadavg()]}


def key_owned_by(url: str, worker: str, tag: str, tries: int = 40) -> str | None:
    """A routing key that the router's ring sends to `worker` (probed with 1-token requests)."""
    for i in range(tries):
        key = f"demo-{tag}-{i}"
        out = post(url, chatml("Hi."), params(1, esamp_group=key), {ROUTING_KEY_HEADER: key})
        if out["ok"] and out["worker"] == worker:
            return key
    return None


def worker_dies(workers, url: str, tokens: int, members: int, tag: str) -> dict:
    victim = workers[1]
    key = key_owned_by(url, victim.name, tag)
    if key is None:
        return {"skipped": f"no probed key mapped to {victim.name}"}
    text = chatml(f"Tell a long story about a lighthouse. ({tag})")
    with ThreadPoolExecutor(members) as pool:
        inflight = [pool.submit(post, url, text, params(tokens, esamp_group=key), {ROUTING_KEY_HEADER: key})
                    for _ in range(members)]
        time.sleep(4.0)  # the group is generating on the victim
        killed_at = time.monotonic()
        os.killpg(victim.process.pid, signal.SIGKILL)
        lost = [f.result() for f in inflight]
    time.sleep(8.0)  # > health-check interval x failure threshold (2 s x 2)
    again = summarize(concurrent([(url, text, params(16, esamp_group=key), {ROUTING_KEY_HEADER: key})] * members))
    return {"group": key, "victim": victim.name, "inflight_results": lost,
            "inflight_done_after_kill_s": round(time.monotonic() - killed_at, 1), "after": again}


def start_worker(model_path: str, index: int, log_dir: Path, omp_threads: int, explore_all: bool):
    from esamp_sgl.launch.server import SGLangServer

    from esamp_sgl.launch.parallel import CPU_MULTI_RANK_MAX_TOKENS, CPU_MULTI_RANK_MEM_FRACTION
    from esamp_sgl.launch.server import cuda_available

    # explore_all: for a router that drops custom_params (`esamp: true` would never reach a worker)
    env = {**os.environ, "OMP_NUM_THREADS": str(omp_threads), "ESAMP_SGL_GROUP_BY": "prompt",
           "ESAMP_SGL_EXPLORE_ALL": "true" if explore_all else "false"}
    # Two workers starting at once each size their KV cache from machine-wide free memory (as DP
    # ranks do, docs/scale-out.md): the multi-rank CPU sizing, capped in tokens.
    memory = ([] if cuda_available() else ["--mem-fraction-static", str(CPU_MULTI_RANK_MEM_FRACTION),
                                           "--max-total-tokens", str(CPU_MULTI_RANK_MAX_TOKENS)])
    server = SGLangServer(model_path, sampling_backend="esamp", host=HOST, env=env, startup_timeout=600,
                          log_path=log_dir / f"worker-{index}.log",
                          extra_args=["--weight-version", f"worker-{index}", "--random-seed", str(1234 + index), *memory])
    server.name = f"worker-{index}"
    return server.start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="esamp-sgl bench router", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", required=True, help="directory for router.json and the logs")
    parser.add_argument("--router", choices=sorted(ROUTERS), default="smg", help="which PyPI router package")
    parser.add_argument("--router-path", help="directory the router was `pip install --target`-ed into "
                                              "(default: importable from this Python)")
    parser.add_argument("--explore-all", choices=("auto", "on", "off"), default="auto",
                        help="ESAMP_SGL_EXPLORE_ALL on the workers (auto: on for sglang-router, which drops "
                             "custom_params)")
    parser.add_argument("--model", help="model folder (default: the prepared SmolLM2)")
    parser.add_argument("--repeats", type=int, default=8, help="n=1 requests per prompt (an RL group)")
    parser.add_argument("--prompts", type=int, default=2, help="prompts per throughput round")
    parser.add_argument("--tokens", type=int, default=12, help="new tokens per request")
    parser.add_argument("--rounds", type=int, default=2, help="timed throughput rounds per worker count")
    parser.add_argument("--omp-threads", type=int, default=1, help="OpenMP threads per worker")
    parser.add_argument("--skip-kill", action="store_true", help="skip phase 5 (a worker dies)")
    parser.add_argument("--budget-s", type=float, default=540, help="skip the phases left after this many seconds")
    args = parser.parse_args(argv)

    from esamp_sgl.launch.models import prepare_model

    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = args.model or str(prepare_model())
    explore_all = args.explore_all == "on" or (args.explore_all == "auto" and args.router == "sglang-router")
    report: dict = {"router": f"{args.router} {_router_version(args.router, args.router_path)}",
                    "workers_explore_all": explore_all, "load_avg_start": list(os.getloadavg()),
                    "workload": vars(args), "phases": {}}
    started = time.monotonic()
    with ThreadPoolExecutor(2) as pool:
        starting = [pool.submit(start_worker, model, i, out_dir, args.omp_threads, explore_all) for i in range(2)]
        try:
            workers = [f.result() for f in starting]
        except Exception:
            for f in starting:  # never leave the other worker running
                if f.exception() is None:
                    f.result().stop()
            raise
    urls = [w.url for w in workers]
    report["worker_startup_s"] = [round(w.startup_seconds, 1) for w in workers]
    phases = report["phases"]

    def due(name: str) -> bool:
        if time.monotonic() - started < args.budget_s:
            return True
        phases[name] = {"skipped": f"over --budget-s {args.budget_s:g}"}
        return False

    def log(name: str, value) -> None:
        phases[name] = value
        print(f"== {name}: {json.dumps(value)}", file=sys.stderr)
        (out_dir / "router.json").write_text(json.dumps(report, indent=2))

    try:
        tag = uuid.uuid4().hex[:6]
        with Router(args.router, args.router_path, urls, "cache_aware", out_dir) as router:
            report["router_command_cache_aware"] = router.command
            probe = post(router.url, chatml("Hi."), params(1, esamp_group=f"forwarded-{tag}"))
            log("0_router_forwards_custom_params", {"sent_esamp_group": f"forwarded-{tag}", "reported": probe})
            log("1_cache_aware_one_prompt", rollout(router.url, args.repeats, args.tokens, f"{tag}-ca"))
            log("1b_cache_aware_second_prompt", rollout(router.url, args.repeats, args.tokens, f"{tag}-ca2"))
        if due("2_round_robin_one_prompt"):
            with Router(args.router, args.router_path, urls, "round_robin", out_dir) as router:
                log("2_round_robin_one_prompt", rollout(router.url, args.repeats, args.tokens, f"{tag}-rr"))
        for policy in ("consistent_hashing", "manual"):
            if due(f"3_{policy}_explicit_groups"):
                with Router(args.router, args.router_path, urls, policy, out_dir) as router:
                    report[f"router_command_{policy}"] = router.command
                    log(f"3_{policy}_explicit_groups",
                        explicit_groups(router.url, 4, 3, args.tokens, f"{tag}-{policy[:2]}"))
        for count in (1, 2):
            if due(f"4_throughput_{count}_worker"):
                with Router(args.router, args.router_path, urls[:count], "cache_aware", out_dir) as router:
                    log(f"4_throughput_{count}_worker", throughput(router.url, args.prompts, args.repeats, args.tokens,
                                                                   args.rounds, f"{tag}-tp{count}"))
        if not args.skip_kill and due("5_worker_dies"):
            with Router(args.router, args.router_path, urls, "consistent_hashing", out_dir) as router:
                log("5_worker_dies", worker_dies(workers, router.url, 200, 4, f"{tag}-kill"))
    finally:
        for w in workers:
            w.stop()
    report["total_s"] = round(time.monotonic() - started, 1)
    (out_dir / "router.json").write_text(json.dumps(report, indent=2))
    print(f"wrote {out_dir / 'router.json'} ({report['total_s']} s)", file=sys.stderr)
    return 0


def _router_version(router: str, router_path: str | None) -> str:
    code = f"import importlib.metadata as m; print(m.version({router!r}))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=router_env(router_path))
    if done.returncode != 0:
        raise SystemExit(f"esamp-sgl bench router: {router} is not importable"
                         + (f" from {router_path}" if router_path else "") + " (scripts/router_demo.sh installs it)")
    return done.stdout.strip()


if __name__ == "__main__":
    raise SystemExit(main())
