"""Serving overhead against one real SGLang server (`esamp-sgl bench overhead`).

Arms, interleaved round by round (A/B/C, then C/B/A, ...) on the same server so that machine noise
hits all of them alike:
* `single`: one request at a time; `parallel8`: 8 concurrent requests (both stock sampling);
* `stock`, `esamp`, `esamp_frozen`: `--prompts` prompts x `--n` samples each, all concurrent,
  identical sampling parameters; `esamp` adds `custom_params={"esamp": true}` (β = server default,
  test-time training on), `esamp_frozen` the same with `"esamp_train": false` (predict and reweight,
  no training), which splits the overhead into reweighting and training.
Every request is `ignore_eos`, so every arm generates the same number of tokens.
Output: tokens/s per round and arm, the ratios to stock with their spread, inter-token latency
percentiles (the time between a sample's consecutive streamed tokens ≈ one decode step of the
batch it ran in), and the server's peak resident memory per arm (process tree, sampled every
0.2 s; only when this command started the server). JSON to --output, a one-line summary on stderr.

`--stock-server` (or `--stock-url`) adds the arm `stock_server`: the same workload against a
separate stock SGLang server (`--sampling-backend pytorch` on CPU, `flashinfer` on a GPU: what a
user would run without this plugin), interleaved with the other arms round by round; the ratios
`*_over_stock_server` compare with it (`stock_over_stock_server` = the plugin's cost when no row
explores). Per arm, the spread of tokens/s over rounds (coefficient of variation) is the machine's
noise. Only the arm being measured generates; the other server idles (`--sleep-on-idle` on CPU).
The stock server is started with `SGLANG_PLUGINS` set to a name no plugin has, so SGLang does not
load the esamp plugin in it at all (`--stock-with-plugin`: load it, backend still stock).

Client: `--client stream` (default) parses every streamed token (it gives the inter-token
latency); `--client batch` sends plain non-streamed requests, so the client does O(requests) work
instead of O(tokens), for fast GPUs where a Python streaming client could be the bottleneck. Each
round reports the client's own CPU time over the wall time (`client_cpu_fraction`): near 0, the
client is not the bottleneck; near 1 (a full core), it may be.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from esamp_sgl.bench.memory import rss_bytes
from esamp_sgl.launch.prompts import chatml

PROMPTS = [
    "Describe a city at night.", "Give advice to a new gardener.", "Write a limerick about a cat.",
    "Explain why the sky is blue.", "Invent a new holiday.", "Describe your ideal breakfast.",
    "Write a riddle about time.", "Suggest a name for a bakery.", "Tell a story about a robot.",
    "List things to pack for a trip.", "Describe a forest in winter.", "Write a toast for a wedding.",
]
ESAMP_ARMS = ("esamp", "esamp_frozen")


def _post_streamed(url: str, text: str, params: dict) -> tuple[int, list[float]]:
    """(completion tokens, inter-token gaps in seconds) of one streamed request (n >= 1)."""
    body = {"text": text, "sampling_params": params, "stream": True}
    tokens: dict[int, int] = {}
    last: dict[int, float] = {}
    gaps: list[float] = []
    with requests.post(url + "/generate", json=body, stream=True, timeout=1200) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line or not line.startswith(b"data:") or line.strip() == b"data: [DONE]":
                continue
            now = time.monotonic()
            chunk = json.loads(line[5:])
            index = chunk.get("index", 0)
            count = chunk["meta_info"]["completion_tokens"]
            new = count - tokens.get(index, 0)
            if new > 0 and index in last and tokens.get(index, 0) > 0:
                gaps += [(now - last[index]) / new] * new
            if new > 0:
                tokens[index], last[index] = count, now
    return sum(tokens.values()), gaps


def _post_batch(url: str, text: str, params: dict) -> tuple[int, list[float]]:
    """(completion tokens, no gaps) of one non-streamed request: one response per request."""
    body = {"text": text, "sampling_params": params}
    response = requests.post(url + "/generate", json=body, timeout=1200)
    response.raise_for_status()
    out = response.json()
    items = out if isinstance(out, list) else [out]
    return sum(item["meta_info"]["completion_tokens"] for item in items), []


CLIENTS = {"stream": _post_streamed, "batch": _post_batch}


def _concurrent(url: str, texts: list[str], params: dict,
                client: str = "stream") -> tuple[int, float, list[float], float]:
    """(tokens, wall seconds, inter-token gaps, client CPU seconds) of the requests run at once."""
    post = CLIENTS[client]
    cpu0 = time.process_time()
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=len(texts)) as pool:
        results = list(pool.map(lambda t: post(url, t, params), texts))
    seconds = time.monotonic() - started
    return (sum(r[0] for r in results), seconds, [g for r in results for g in r[1]],
            time.process_time() - cpu0)


class PeakMemory:
    """Peak RSS (MiB) of a process and its children, sampled in a thread while active."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def rss_mib(self) -> float:
        import psutil

        try:
            root = psutil.Process(self.pid)
            pids = [root.pid] + [p.pid for p in root.children(recursive=True)]
        except psutil.Error:
            return 0.0
        return rss_bytes(pids, missing_ok=True) / 2**20

    def __enter__(self) -> "PeakMemory":
        if self.pid is not None:
            self.peak = self.rss_mib()
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(0.2):
            self.peak = max(self.peak, self.rss_mib())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if len(values) < 2:
        return {"p50_ms": None, "p90_ms": None, "p99_ms": None}
    q = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50_ms": 1000 * q[49], "p90_ms": 1000 * q[89], "p99_ms": 1000 * q[98]}


def _ratio(values: list[float]) -> dict[str, float | list[float]]:
    return {"per_round": values, "median": statistics.median(values), "min": min(values), "max": max(values)}


def _cv(values: list[float]) -> float | None:
    """Coefficient of variation over rounds (the machine's noise for that arm)."""
    return statistics.stdev(values) / statistics.mean(values) if len(values) > 1 else None


NO_PLUGIN = "esamp-sgl-bench-none"  # SGLANG_PLUGINS whitelist entry that matches no plugin
ARMS = ("single", "parallel8", "stock_server", "stock", "esamp", "esamp_frozen")


def run(url: str, prompts: int, n: int, max_tokens: int, rounds: int, temperature: float, min_p: float,
        server_pid: int | None = None, stock_url: str | None = None, stock_pid: int | None = None,
        client: str = "stream", arms: tuple[str, ...] | list[str] | None = None) -> dict:
    base = {"max_new_tokens": max_tokens, "ignore_eos": True, "temperature": temperature, "min_p": min_p}
    texts = [chatml(PROMPTS[i % len(PROMPTS)]) for i in range(prompts)]
    every = {  # name: (server url, server pid, prompts, sampling params)
        "single": (url, server_pid, [texts[0]], base),
        "parallel8": (url, server_pid, [chatml(p) for p in PROMPTS[:8]], base),
        "stock_server": (stock_url, stock_pid, texts, {**base, "n": n}),
        "stock": (url, server_pid, texts, {**base, "n": n}),
        "esamp": (url, server_pid, texts, {**base, "n": n, "custom_params": {"esamp": True}}),
        "esamp_frozen": (url, server_pid, texts, {**base, "n": n,
                                                  "custom_params": {"esamp": True, "esamp_train": False}}),
    }
    wanted = list(arms) if arms else [a for a in ARMS if a != "stock_server" or stock_url]
    unknown = set(wanted) - set(ARMS)
    if unknown:
        raise ValueError(f"unknown arms {sorted(unknown)}; choose from {ARMS}")
    if "stock_server" in wanted and not stock_url:
        raise ValueError("the stock_server arm needs --stock-server or --stock-url")
    arms_map = {name: every[name] for name in ARMS if name in wanted}
    # Warm-up (not timed), for every arm's code path: the first ESamp steps (first training step,
    # allocator growth) would otherwise land in round 1 of the esamp arm only.
    for arm_url, _, _, params in arms_map.values():
        _concurrent(arm_url, texts[:2], {**params, "max_new_tokens": 8, "n": 2}, client)
    rates: dict[str, list[float]] = {name: [] for name in arms_map}
    gaps: dict[str, list[float]] = {name: [] for name in arms_map}
    client_cpu: dict[str, list[float]] = {name: [] for name in arms_map}
    peak: dict[str, float] = {name: 0.0 for name in arms_map}
    pids = {p for _, p, _, _ in arms_map.values() if p}
    baseline_mib = {pid: PeakMemory(pid).rss_mib() for pid in pids}
    for r in range(rounds):
        order = list(arms_map) if r % 2 == 0 else list(reversed(arms_map))
        for name in order:
            arm_url, pid, batch, params = arms_map[name]
            with PeakMemory(pid) as mem:
                tokens, seconds, itl, cpu = _concurrent(arm_url, batch, params, client)
            rates[name].append(tokens / seconds)
            gaps[name] += itl
            client_cpu[name].append(cpu / seconds)
            peak[name] = max(peak[name], mem.peak)
            print(f"round {r + 1}/{rounds} {name:<13} {tokens / seconds:8.1f} tok/s "
                  f"(client cpu {cpu / seconds:.2f})", file=sys.stderr)
    report = {
        "workload": {"prompts": prompts, "n": n, "max_tokens": max_tokens, "rounds": rounds,
                     "temperature": temperature, "min_p": min_p, "client": client, "arms": list(arms_map)},
        "tokens_per_s": rates,
        "median_tokens_per_s": {k: statistics.median(v) for k, v in rates.items()},
        "noise_cv_over_rounds": {k: _cv(v) for k, v in rates.items()},
        "client_cpu_fraction": {k: max(v) for k, v in client_cpu.items()},
        "inter_token_latency": {k: _percentiles(v) for k, v in gaps.items()},
        "server_rss_mib": ({"before": baseline_mib.get(server_pid) if server_pid else None,
                            "before_stock_server": baseline_mib.get(stock_pid) if stock_pid else None,
                            "peak_per_arm": peak} if pids else None),
    }
    for ref in ("stock", "stock_server"):
        if ref not in rates:
            continue
        suffix = "" if ref == "stock" else "_server"
        for name in ("stock", "esamp", "esamp_frozen"):
            if name in rates and name != ref:
                report[f"{name}_over_stock{suffix}"] = _ratio([e / s for e, s in zip(rates[name], rates[ref])])
    return report


def stock_backend() -> str:
    """What a stock server uses here: SGLang's default (flashinfer with a GPU, pytorch on CPU)."""
    from esamp_sgl.launch.server import cuda_available

    return "flashinfer" if cuda_available() else "pytorch"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="esamp-sgl bench overhead", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="an already running server started with --sampling-backend esamp "
                                      "(default: start one on the bundled model)")
    from esamp_sgl.launch.registry import add_model_arguments

    add_model_arguments(parser, "model folder for the server(s) this command starts")
    parser.add_argument("--stock-server", action="store_true",
                        help="also start a separate stock server (pytorch on CPU, flashinfer on GPU) "
                             "and add the stock_server arm")
    parser.add_argument("--stock-url", help="an already running stock server (adds the stock_server arm)")
    parser.add_argument("--stock-backend", help="sampling backend of the stock server this command "
                                                "starts (default: SGLang's default here)")
    parser.add_argument("--stock-with-plugin", action="store_true",
                        help="load the esamp plugin in the stock server too (default: not loaded, "
                             "i.e. SGLang exactly as without esamp-sgl)")
    parser.add_argument("--arms", nargs="+", choices=ARMS,
                        help=f"arms to run (default: all of {', '.join(ARMS)}; stock_server only "
                             "with a stock server)")
    parser.add_argument("--client", choices=tuple(CLIENTS), default="stream")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--min-p", type=float, default=0.05)
    parser.add_argument("--output", help="directory for overhead.json")
    args = parser.parse_args(argv)
    for name in ("prompts", "n", "max_tokens", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.arms and "stock_server" in args.arms and not (args.stock_server or args.stock_url):
        parser.error("--arms stock_server needs --stock-server or --stock-url")
    workload = dict(prompts=args.prompts, n=args.n, max_tokens=args.max_tokens, rounds=args.rounds,
                    temperature=args.temperature, min_p=args.min_p, client=args.client, arms=args.arms)
    from esamp_sgl.launch.registry import resolve_args
    from esamp_sgl.launch.server import SGLangServer, server_or_url

    with contextlib.ExitStack() as stack:
        report_extra: dict = {}
        stock_url, stock_pid = args.stock_url, None
        url, server = stack.enter_context(server_or_url(args.url, lambda: resolve_args(args)))
        pid = None if server is None else server.process.pid
        if server is not None:
            report_extra["server_startup_s"] = server.startup_seconds
        if args.stock_server and not stock_url:
            model = resolve_args(args)
            backend = args.stock_backend or stock_backend()
            env = None if args.stock_with_plugin else {**os.environ, "SGLANG_PLUGINS": NO_PLUGIN}
            stock = stack.enter_context(SGLangServer(model, sampling_backend=backend, env=env))
            stock_url, stock_pid = stock.url, stock.process.pid
            report_extra["stock_server"] = {"sampling_backend": backend, "plugin_loaded": args.stock_with_plugin,
                                            "startup_s": stock.startup_seconds}
        report = run(url, **workload, server_pid=pid, stock_url=stock_url, stock_pid=stock_pid)
        report.update(report_extra)
    report["command"] = "esamp-sgl bench overhead " + " ".join(sys.argv[3:] if argv is None else argv)
    text = json.dumps(report, indent=2)
    if args.output:
        Path(args.output).mkdir(parents=True, exist_ok=True)
        (Path(args.output) / "overhead.json").write_text(text)
    print(text)
    print(summary_line(report), file=sys.stderr)
    return 0


def summary_line(report: dict) -> str:
    med, itl, cv = report["median_tokens_per_s"], report["inter_token_latency"], report["noise_cv_over_rounds"]
    parts = [f"{name} {rate:.1f} tok/s" + (f" (cv {cv[name]:.3f})" if cv.get(name) is not None else "")
             for name, rate in med.items()]
    for key in ("esamp_over_stock_server", "esamp_frozen_over_stock_server", "stock_over_stock_server",
                "esamp_over_stock", "esamp_frozen_over_stock"):
        if key in report:
            r = report[key]
            parts.append(f"{key} {r['median']:.3f} (range {r['min']:.3f}-{r['max']:.3f})")
    p50 = {k: v["p50_ms"] for k, v in itl.items() if v["p50_ms"] is not None}
    if p50:
        parts.append("ITL p50 " + ", ".join(f"{k} {v:.0f} ms" for k, v in p50.items()))
    parts.append(f"client cpu max {max(report['client_cpu_fraction'].values()):.2f}")
    return " · ".join(parts)


if __name__ == "__main__":
    sys.exit(main())
