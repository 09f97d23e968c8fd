"""Serving throughput against one real SGLang server (`esamp-sgl bench overhead`).

Rounds are interleaved A/B/A/B on the same server so that machine noise hits both arms alike:
* `single`: one request at a time (stock sampling);
* `parallel8`: 8 concurrent requests (stock sampling);
* `stock` vs `esamp`: `--prompts` prompts x `--n` samples each, all concurrent, identical sampling
  parameters; the ESamp arm adds `custom_params={"esamp": true}` (training on, β = server default).
Output: JSON with per-round tokens/s, medians, the ESamp/stock ratio with its spread, and a one-line
summary on stderr. Every request is `ignore_eos`, so every arm generates the same number of tokens.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
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


def _chat(question: str) -> str:
    return f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"


def _post(url: str, text: str, params: dict) -> int:
    response = requests.post(url + "/generate", json={"text": text, "sampling_params": params}, timeout=1200)
    response.raise_for_status()
    outs = response.json()
    outs = outs if isinstance(outs, list) else [outs]
    return sum(o["meta_info"]["completion_tokens"] for o in outs)


def _concurrent(url: str, texts: list[str], params: dict) -> tuple[int, float]:
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=len(texts)) as pool:
        tokens = sum(pool.map(lambda t: _post(url, t, params), texts))
    return tokens, time.monotonic() - started


def run(url: str, prompts: int, n: int, max_tokens: int, rounds: int, temperature: float, min_p: float) -> dict:
    base = {"max_new_tokens": max_tokens, "ignore_eos": True, "temperature": temperature, "min_p": min_p}
    texts = [_chat(PROMPTS[i % len(PROMPTS)]) for i in range(prompts)]
    arms = {
        "single": ([texts[0]], base),
        "parallel8": ([_chat(p) for p in PROMPTS[:8]], base),
        "stock": (texts, {**base, "n": n}),
        "esamp": (texts, {**base, "n": n, "custom_params": {"esamp": True}}),
    }
    _concurrent(url, texts[:2], {**base, "max_new_tokens": 8, "n": 2})  # warm-up (not timed)
    results: dict[str, list[float]] = {name: [] for name in arms}
    for r in range(rounds):
        order = list(arms) if r % 2 == 0 else list(reversed(arms))  # A/B, then B/A
        for name in order:
            batch, params = arms[name]
            tokens, seconds = _concurrent(url, batch, params)
            results[name].append(tokens / seconds)
            print(f"round {r + 1}/{rounds} {name:<10} {tokens / seconds:8.1f} tok/s", file=sys.stderr)
    ratios = [e / s for e, s in zip(results["esamp"], results["stock"])]
    return {
        "workload": {"prompts": prompts, "n": n, "max_tokens": max_tokens, "rounds": rounds,
                     "temperature": temperature, "min_p": min_p},
        "tokens_per_s": results,
        "median_tokens_per_s": {k: statistics.median(v) for k, v in results.items()},
        "esamp_over_stock": {"per_round": ratios, "median": statistics.median(ratios),
                             "min": min(ratios), "max": max(ratios)},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="esamp-sgl bench overhead", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="an already running server started with --sampling-backend esamp "
                                      "(default: start one on the bundled model)")
    parser.add_argument("--model-path", help="model for the server this command starts")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--min-p", type=float, default=0.05)
    parser.add_argument("--output", help="directory for overhead.json")
    args = parser.parse_args(argv)
    for name in ("prompts", "n", "max_tokens", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    workload = dict(prompts=args.prompts, n=args.n, max_tokens=args.max_tokens, rounds=args.rounds,
                    temperature=args.temperature, min_p=args.min_p)
    if args.url:
        report = run(args.url, **workload)
    else:
        from esamp_sgl.models import resolve_model_path
        from esamp_sgl.server import SGLangServer

        with SGLangServer(resolve_model_path(args.model_path), sampling_backend="esamp") as server:
            report = run(server.url, **workload)
            report["server_startup_s"] = server.startup_seconds
    text = json.dumps(report, indent=2)
    if args.output:
        Path(args.output).mkdir(parents=True, exist_ok=True)
        (Path(args.output) / "overhead.json").write_text(text)
    print(text)
    med = report["median_tokens_per_s"]
    ratio = report["esamp_over_stock"]
    print(f"single {med['single']:.1f} tok/s · 8 parallel {med['parallel8']:.1f} tok/s · "
          f"{args.prompts}x n={args.n}: stock {med['stock']:.1f}, esamp {med['esamp']:.1f} tok/s · "
          f"esamp/stock {ratio['median']:.3f} (range {ratio['min']:.3f}-{ratio['max']:.3f})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
