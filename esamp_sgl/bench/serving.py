"""Serving overhead against one real SGLang server (`esamp-sgl bench overhead`).

Arms, interleaved round by round (A/B/C, then C/B/A, ...) on the same server so that machine noise
hits all of them alike:
* `single`: one request at a time; `parallel8`: 8 concurrent requests (both stock sampling);
* `stock`, `esamp`, `esamp_frozen`: `--prompts` prompts x `--n` samples each, all concurrent,
  identical sampling parameters; `esamp` adds `custom_params={"esamp": true}` (β = server default,
  test-time training on), `esamp_frozen` the same with `"esamp_train": false` (predict and reweight,
  no training), which splits the overhead into reweighting and training.
Every request is streamed and `ignore_eos`, so every arm generates the same number of tokens.
Output: tokens/s per round and arm, the ratios to stock with their spread, inter-token latency
percentiles (the time between a sample's consecutive streamed tokens ≈ one decode step of the
batch it ran in), and the server's peak resident memory per arm (process tree, sampled every
0.2 s; only when this command started the server). JSON to --output, a one-line summary on stderr.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

PROMPTS = [
    "Describe a city at night.", "Give advice to a new gardener.", "Write a limerick about a cat.",
    "Explain why the sky is blue.", "Invent a new holiday.", "Describe your ideal breakfast.",
    "Write a riddle about time.", "Suggest a name for a bakery.", "Tell a story about a robot.",
    "List things to pack for a trip.", "Describe a forest in winter.", "Write a toast for a wedding.",
]
ESAMP_ARMS = ("esamp", "esamp_frozen")


def _chat(question: str) -> str:
    return f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"


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


def _concurrent(url: str, texts: list[str], params: dict) -> tuple[int, float, list[float]]:
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=len(texts)) as pool:
        results = list(pool.map(lambda t: _post_streamed(url, t, params), texts))
    seconds = time.monotonic() - started
    return sum(r[0] for r in results), seconds, [g for r in results for g in r[1]]


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
            procs = [root] + root.children(recursive=True)
        except psutil.Error:
            return 0.0
        total = 0
        for p in procs:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return total / 2**20

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


def run(url: str, prompts: int, n: int, max_tokens: int, rounds: int, temperature: float, min_p: float,
        server_pid: int | None = None) -> dict:
    base = {"max_new_tokens": max_tokens, "ignore_eos": True, "temperature": temperature, "min_p": min_p}
    texts = [_chat(PROMPTS[i % len(PROMPTS)]) for i in range(prompts)]
    arms = {
        "single": ([texts[0]], base),
        "parallel8": ([_chat(p) for p in PROMPTS[:8]], base),
        "stock": (texts, {**base, "n": n}),
        "esamp": (texts, {**base, "n": n, "custom_params": {"esamp": True}}),
        "esamp_frozen": (texts, {**base, "n": n, "custom_params": {"esamp": True, "esamp_train": False}}),
    }
    # Warm-up (not timed), for every arm's code path: the first ESamp steps (first training step,
    # allocator growth) would otherwise land in round 1 of the esamp arm only.
    for _, params in arms.values():
        _concurrent(url, texts[:2], {**params, "max_new_tokens": 8, "n": 2})
    rates: dict[str, list[float]] = {name: [] for name in arms}
    gaps: dict[str, list[float]] = {name: [] for name in arms}
    peak: dict[str, float] = {name: 0.0 for name in arms}
    baseline_mib = PeakMemory(server_pid).rss_mib() if server_pid else None
    for r in range(rounds):
        order = list(arms) if r % 2 == 0 else list(reversed(arms))
        for name in order:
            batch, params = arms[name]
            with PeakMemory(server_pid) as mem:
                tokens, seconds, itl = _concurrent(url, batch, params)
            rates[name].append(tokens / seconds)
            gaps[name] += itl
            peak[name] = max(peak[name], mem.peak)
            print(f"round {r + 1}/{rounds} {name:<13} {tokens / seconds:8.1f} tok/s", file=sys.stderr)
    return {
        "workload": {"prompts": prompts, "n": n, "max_tokens": max_tokens, "rounds": rounds,
                     "temperature": temperature, "min_p": min_p},
        "tokens_per_s": rates,
        "median_tokens_per_s": {k: statistics.median(v) for k, v in rates.items()},
        "esamp_over_stock": _ratio([e / s for e, s in zip(rates["esamp"], rates["stock"])]),
        "esamp_frozen_over_stock": _ratio([e / s for e, s in zip(rates["esamp_frozen"], rates["stock"])]),
        "inter_token_latency": {k: _percentiles(v) for k, v in gaps.items()},
        "server_rss_mib": ({"before": baseline_mib, "peak_per_arm": peak} if server_pid else None),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="esamp-sgl bench overhead", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="an already running server started with --sampling-backend esamp "
                                      "(default: start one on the bundled model)")
    parser.add_argument("--model-path", help="model for the server this command starts")
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
    workload = dict(prompts=args.prompts, n=args.n, max_tokens=args.max_tokens, rounds=args.rounds,
                    temperature=args.temperature, min_p=args.min_p)
    if args.url:
        report = run(args.url, **workload)
    else:
        from esamp_sgl.models import resolve_model_path
        from esamp_sgl.server import SGLangServer

        with SGLangServer(resolve_model_path(args.model_path), sampling_backend="esamp") as server:
            report = run(server.url, **workload, server_pid=server.process.pid)
            report["server_startup_s"] = server.startup_seconds
    report["command"] = "esamp-sgl bench overhead " + " ".join(sys.argv[3:] if argv is None else argv)
    text = json.dumps(report, indent=2)
    if args.output:
        Path(args.output).mkdir(parents=True, exist_ok=True)
        (Path(args.output) / "overhead.json").write_text(text)
    print(text)
    med, itl = report["median_tokens_per_s"], report["inter_token_latency"]
    ratio, frozen = report["esamp_over_stock"], report["esamp_frozen_over_stock"]
    mem = report["server_rss_mib"]
    print(f"single {med['single']:.1f} tok/s · 8 parallel {med['parallel8']:.1f} tok/s · "
          f"{args.prompts}x n={args.n}: stock {med['stock']:.1f}, esamp {med['esamp']:.1f}, "
          f"frozen {med['esamp_frozen']:.1f} tok/s · esamp/stock {ratio['median']:.3f} "
          f"(range {ratio['min']:.3f}-{ratio['max']:.3f}), frozen/stock {frozen['median']:.3f} · "
          f"ITL p50 stock {itl['stock']['p50_ms'] or float('nan'):.0f} ms, esamp {itl['esamp']['p50_ms'] or float('nan'):.0f} ms"
          + (f" · peak RSS stock {mem['peak_per_arm']['stock']:.0f} MiB, esamp {mem['peak_per_arm']['esamp']:.0f} MiB"
             if mem else ""), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
