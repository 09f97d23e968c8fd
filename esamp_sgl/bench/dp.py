"""Throughput of 1 vs N data-parallel ranks on one workload, ESamp on (`python -m esamp_sgl.bench.dp`).

For each `--dp-sizes` value, in turn (never two servers at once), this starts a real SGLang server
with `--sampling-backend esamp --dp-size D`, warms it up, then runs `--rounds` rounds of the same
workload: `--prompts` prompts x `--n` samples x `--max-tokens` tokens (`ignore_eos`), all requests
concurrent, every prompt its own fork group (group-affine routing puts each group on one rank).
Reported per size: tokens/s per round and the median, server start-up time, and how many groups
each rank served (the load-balance cost of routing by group hash instead of round robin).

On a CPU-only machine all ranks share the same cores (`SGLANG_CPU_OMP_THREADS_BIND` splits them),
so D ranks do not add compute; the number says what DP costs or saves there, not what it scales to.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from esamp_sgl.bench.overhead import PROMPTS
from esamp_sgl.launch.prompts import chatml


def _post(url: str, text: str, params: dict) -> list[dict]:
    response = requests.post(url + "/generate", json={"text": text, "sampling_params": params}, timeout=1800)
    response.raise_for_status()
    outs = response.json()
    return outs if isinstance(outs, list) else [outs]


def run_workload(url: str, prompts: int, n: int, max_tokens: int, round_id: str) -> dict:
    texts = [chatml(PROMPTS[i % len(PROMPTS)]) for i in range(prompts)]
    params = [{"max_new_tokens": max_tokens, "ignore_eos": True, "temperature": 1.0, "min_p": 0.05, "n": n,
               "custom_params": {"esamp": True, "esamp_group": f"bench-{round_id}-{i}"}} for i in range(prompts)]
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=prompts) as pool:
        results = list(pool.map(lambda i: _post(url, texts[i], params[i]), range(prompts)))
    seconds = time.monotonic() - started
    tokens = sum(o["meta_info"]["completion_tokens"] for outs in results for o in outs)
    group_ranks = [sorted({o["meta_info"].get("dp_rank") for o in outs}, key=str) for outs in results]
    split = sum(len(r) > 1 for r in group_ranks)
    per_rank = collections.Counter(str(r[0]) for r in group_ranks)
    return {"tokens": tokens, "seconds": round(seconds, 3), "tokens_per_s": round(tokens / seconds, 2),
            "groups_per_rank": dict(sorted(per_rank.items())), "groups_split_over_ranks": split}


def bench_size(model_path: str, dp_size: int, args: argparse.Namespace, log_dir: Path) -> dict:
    from esamp_sgl.launch.parallel import parallel_args, parallel_env
    from esamp_sgl.launch.server import SGLangServer, cuda_available

    on_cpu = not cuda_available()
    env = parallel_env(dp_size=dp_size, on_cpu=on_cpu, esamp=True)
    if args.omp_threads:
        env["OMP_NUM_THREADS"] = str(args.omp_threads)  # per process, i.e. per rank
    server = SGLangServer(model_path, sampling_backend="esamp", startup_timeout=600,
                          log_path=log_dir / f"sglang-dp{dp_size}.log",
                          env=env,
                          extra_args=[*parallel_args(dp_size=dp_size, on_cpu=on_cpu), "--random-seed", "1234"])
    load_before = os.getloadavg()
    with server:
        run_workload(server.url, min(args.prompts, 2 * dp_size), 2, 8, "warmup")  # every rank, untimed
        rounds = [run_workload(server.url, args.prompts, args.n, args.max_tokens, f"{dp_size}-{r}")
                  for r in range(args.rounds)]
        print(f"dp {dp_size}: " + ", ".join(f"{r['tokens_per_s']} tok/s" for r in rounds), file=sys.stderr)
        return {"dp_size": dp_size, "server_startup_s": round(server.startup_seconds, 1), "rounds": rounds,
                "median_tokens_per_s": statistics.median(r["tokens_per_s"] for r in rounds),
                # Other processes on the machine skew every number: the 1/5/15-min load averages.
                "load_avg_before": [round(x, 2) for x in load_before],
                "load_avg_after": [round(x, 2) for x in os.getloadavg()],
                "env": {k: v for k, v in server.env.items()
                        if k.startswith(("SGLANG_CPU_OMP", "SGLANG_USE_CPU", "OMP_NUM_THREADS"))}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="esamp-sgl bench dp", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    from esamp_sgl.launch.registry import add_model_arguments

    add_model_arguments(parser, "model folder (default: the prepared SmolLM2, esamp-sgl models path)")
    parser.add_argument("--dp-sizes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--omp-threads", type=int, default=0,
                        help="OMP_NUM_THREADS of every rank (default: SGLang's for 1 rank, the CPUs / ranks for more)")
    parser.add_argument("--output", required=True, help="directory for dp.json and the server logs")
    args = parser.parse_args(argv)

    from esamp_sgl.launch.registry import resolve_args

    model_path = str(resolve_args(args))
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    sizes = [bench_size(model_path, d, args, out_dir) for d in args.dp_sizes]
    base = sizes[0]["median_tokens_per_s"]
    report = {
        "command": "python -m esamp_sgl.bench.dp " + " ".join(argv if argv is not None else sys.argv[1:]),
        "omp_threads_per_rank": args.omp_threads or "default",
        "workload": {"prompts": args.prompts, "n": args.n, "max_tokens": args.max_tokens, "rounds": args.rounds,
                     "esamp": True, "groups": args.prompts},
        "machine": {"cpus": len(os.sched_getaffinity(0))},
        "sizes": sizes,
        "speedup_vs_first": {str(s["dp_size"]): round(s["median_tokens_per_s"] / base, 3) for s in sizes},
    }
    (out_dir / "dp.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["speedup_vs_first"]), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
