"""Per-step cost of ESamp (predict + candidates + reweight + sample + train) next to the stock
sampler on the same logits, on CPU (or --device cuda). A/B interleaved; medians over `repeats`.
Also ops and bytes written per step and per training step (esamp_sgl/bench/opcount.py; counted,
not timed, so they do not depend on machine load): on CPU at R = 256 rows in groups of 8, H 576,
V 49152, for the CPU path and for the CUDA code path run on CPU ("static"); with --device cuda at
the GPU shapes R ∈ {64, 256}, H ∈ {896, 3584}, V 152064.

    python -m esamp_sgl.bench.core [--rows 8 64] [--hidden 576 3584] [--vocab 49152 152064]
                                   [--repeats 7] [--profiles bounded paper] [--device cpu|cuda]
                                   [--no-counts] [--baseline-counts before.json] [--output out.json]

Workload (synthetic, fixed seed): `rows` decode rows in groups of 8 samples (one bank slot per
group); logits = N(0, 2²) noise plus 20 boosted tokens per row, so a few tokens dominate as in an
LLM. Each profile (esamp_sgl/core/profiles.py) is measured with its own Distiller, optimiser and rule,
and with the sampling it is meant for: a profile with latent mixing (`paper`) at the paper's T 1
without truncation (the latent path), the others at temperature 0.8, top-p 0.95, min-p 0.05 (the
candidate path). The stock sampler is SGLang's
torch sampler semantics (full sort per row). `stock_ms` = stock sampler alone; `esamp_step_ms` =
the whole step as the server runs it (opcount.server_step: for `paper`, the mix before the LM head and
explore_batch), which includes the stock draw; `components_ms` times the pieces alone.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from esamp_sgl.core.candidates import stock_sample
from esamp_sgl.core.explorer import Explorer
from esamp_sgl.core.profiles import DEFAULT_PROFILE, profile_names
from esamp_sgl.core.dlogits import distiller_logits_gather
from esamp_sgl.core.reweight import draw_tokens, reweighted_logits
from esamp_sgl.bench.opcount import bench_config, server_step, step_counts, unfiltered
from esamp_sgl.core.layout import slot_layout
from esamp_sgl.core.plan import StepPlan
from esamp_sgl.core.step import StepBatch, filtered_candidates, row_filters

GROUP_SIZE = 8


DEVICE = torch.device("cpu")  # set by main(--device); the workload and the Explorer live there


def _sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


def _ms(fn: Callable[[], object]) -> float:
    _sync()
    t0 = time.perf_counter()
    fn()
    _sync()
    return (time.perf_counter() - t0) * 1e3


def _median(xs: list[float]) -> float:
    return round(statistics.median(xs), 3)


def _workload(rows: int, hidden: int, vocab: int, slots: torch.Tensor, seed: int,
              plain: bool = False, rule: str = "compensated") -> StepBatch:
    """`plain`: T 1, no top-p/min-p (the paper's sampling); else T 0.8, top-p 0.95, min-p 0.05."""
    gen = torch.Generator().manual_seed(seed)
    temps = torch.full((rows,), 1.0 if plain else 0.8)
    logits = torch.randn(rows, vocab, generator=gen) * 2.0
    peaks = torch.randint(0, vocab, (rows, 20), generator=gen)
    logits.scatter_add_(1, peaks, torch.rand(rows, 20, generator=gen) * 8 + 4)
    scaled = (logits / temps[:, None]).to(DEVICE)
    return StepBatch(
        logits=scaled, temperatures=temps.to(DEVICE), top_k=torch.full((rows,), 1 << 30, device=DEVICE),
        top_p=torch.full((rows,), 1.0 if plain else 0.95, device=DEVICE),
        min_p=torch.full((rows,), 0.0 if plain else 0.05, device=DEVICE),
        is_greedy=torch.zeros(rows, dtype=torch.bool, device=DEVICE),
        plan=StepPlan(slots=slots.to(DEVICE), betas=torch.full((rows,), 0.5, device=DEVICE), any_active=True,
                      rules=rule, layout=slot_layout(slots.tolist(), None, DEVICE)),  # the engine's host plan
        source=torch.randn(rows, hidden, generator=gen).to(DEVICE),
        target=torch.randn(rows, hidden, generator=gen).to(DEVICE),
        probs=torch.softmax(scaled, dim=-1), unfiltered=plain)  # the engine's batch flags


def _explorer(rows: int, hidden: int, vocab: int, profile: str = "bounded") -> tuple[Explorer, torch.Tensor]:
    w = torch.randn(vocab, hidden, generator=torch.Generator().manual_seed(1)) * 0.02
    # A bank of exactly the groups in use: a paper Distiller at H 3584 is 66 MB of fp32 state per slot.
    cfg = bench_config(profile, hidden, DEVICE, max_groups=-(-rows // GROUP_SIZE))
    ex = Explorer(cfg, hidden, w.to(DEVICE), device=DEVICE)
    slots = torch.tensor([ex.join_group(f"g{i // GROUP_SIZE}") for i in range(rows)], device=DEVICE)
    return ex, slots


def bench_case(rows: int, hidden: int, vocab: int, repeats: int, profile: str = "bounded") -> dict:
    ex, slots = _explorer(rows, hidden, vocab, profile)
    plain = unfiltered(ex.config)
    batch = _workload(rows, hidden, vocab, slots, seed=rows * 7 + hidden + vocab, plain=plain,
                      rule=ex.config.rule)
    gen = torch.Generator(device=DEVICE).manual_seed(0)

    def stock() -> torch.Tensor:
        return stock_sample(batch.probs, batch.top_k, batch.top_p, batch.min_p, gen)

    for _ in range(2):  # warm-up (allocator, first-call overheads)
        server_step(ex, batch, stock)
    stock_ms, step_ms = [], []
    parts: dict[str, list[float]] = {k: [] for k in
                                     ("predict", "candidates", "reweight", "sample", "train")}
    n_cand = []
    for _ in range(repeats):
        stock_ms.append(_ms(stock))
        step_ms.append(_ms(lambda: server_step(ex, batch, stock)))
        if plain:  # the latent path has no candidate pieces to time alone
            continue
        # The pieces alone, in the step's order.
        ex.trainer.wait()
        out: dict = {}
        parts["predict"].append(_ms(lambda: out.update(h=ex.bank(batch.source, batch.slots))))
        f = row_filters(batch, ex.config.greedy_min_p)
        parts["candidates"].append(_ms(lambda: out.update(c=filtered_candidates(ex, batch, f))))
        cand = out["c"]
        n_cand.append(float(cand.keep.sum(-1).float().mean()))
        parts["reweight"].append(_ms(lambda: out.update(s=reweighted_logits(
            cand.logits, distiller_logits_gather(out["h"], ex.lm_head_weight, cand.ids),
            f.temperature, batch.betas, batch.rules))))
        parts["sample"].append(_ms(lambda: draw_tokens(out["s"], cand.ids, batch.is_greedy,
                                                       ex.generator, ex.backend)))
        parts["train"].append(_ms(lambda: (ex.trainer.schedule(batch.source, batch.target,
                                                               batch.slots, batch.slots >= 0,
                                                               layout=batch.layout.train),
                                           ex.trainer.wait())))
    ex.close()
    s, e = _median(stock_ms), _median(step_ms)
    return {"profile": profile, "path": "latent" if plain else "candidates",
            "rows": rows, "hidden": hidden, "vocab": vocab, "groups": len(set(slots.tolist())),
            "mean_candidates": round(statistics.mean(n_cand), 1) if n_cand else None,
            "stock_ms": s, "esamp_step_ms": e, "extra_ms": round(e - s, 3),
            "ratio": round(e / s, 3) if s > 0 else None,
            "components_ms": {k: _median(v) for k, v in parts.items() if v}}


def run_core_bench(rows_list: list[int], hidden_list: list[int], vocab_list: list[int],
                   repeats: int = 7, profiles: tuple[str, ...] = ("bounded",)) -> dict:
    cases = []
    for profile in profiles:
        for hidden in hidden_list:
            for vocab in vocab_list:
                for rows in rows_list:
                    cases.append(bench_case(rows, hidden, vocab, repeats, profile))
    return {"device": str(DEVICE), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "machine": platform.machine(), "repeats": repeats,
            "workload": "groups of 8 rows, beta 0.5; latent-mixing profiles at T 1 without truncation, "
                        "the others at T 0.8, top-p 0.95, min-p 0.05",
            "cases": cases}


def run_counts(device: torch.device, rows_list: list[int] | None = None,
               hidden_list: list[int] | None = None, vocab: int | None = None,
               group_size: int = 8, on_case: Callable[[dict], None] | None = None,
               profiles: tuple[str, ...] = ("bounded",), cadences: tuple[int, ...] = (1,),
               paths: tuple[str, ...] | None = None) -> list[dict]:
    """Ops and bytes per step (opcount.step_counts) at the issue's shapes for this device, per profile."""
    cuda = device.type == "cuda"
    rows_list = rows_list or ([64, 256] if cuda else [256])
    hidden_list = hidden_list or ([896, 3584] if cuda else [576])
    vocab = vocab or (152064 if cuda else 49152)
    paths = paths or (("static",) if cuda else ("cpu", "static"))
    out = []
    for profile in profiles:
        for hidden in hidden_list:
            for rows in rows_list:
                for path in paths:
                    for k in cadences:
                        out.append(_count_summary(step_counts(rows, group_size, hidden, vocab, path,
                                                              device=device, profile=profile, train_every=k)))
                        if on_case is not None:
                            on_case(out[-1])
    return out


def _count_summary(c: dict) -> dict:
    """A compact record: totals, and the top ops/bytes of the whole step. `launches_per_step` and
    `bytes_per_step`: the step's eager kernel launches (nothing runs in a CUDA graph yet) and bytes
    written, amortized over the training cadence; `default`: the profile is the server's default."""
    keep = ("ops", "views", "bytes_written", "bytes_read", "host_reads")
    return {**{k: c[k] for k in ("profile", "rows", "groups", "hidden", "vocab", "rank", "path", "device")},
            "default": c["profile"] == DEFAULT_PROFILE, "train_every": c.get("train_every", 1),
            "launches_per_step": c["step"]["ops"], "bytes_per_step": c["step"]["bytes_written"],
            "bytes_read_per_step": c["step"].get("bytes_read"),
            "roofline_h200": roofline(c["step"]["ops"], c["step"]["bytes_written"] + c["step"].get("bytes_read", 0)),
            "roofline_h200_one_graph": roofline(1, c["step"]["bytes_written"] + c["step"].get("bytes_read", 0)),
            "step": {k: c["step"].get(k) for k in keep}, "train": {k: c["train"].get(k) for k in keep},
            "step_top_bytes": c["step"]["top_bytes"], "train_top_bytes": c["train"]["top_bytes"],
            **({"phases": c["phases"]} if "phases" in c else {})}


# The H200 roofline of the counted step (docs/performance.md § 9 says why these numbers): a 7B decode
# step at R 256 takes ~6 ms stock (the low end of 6–9 ms: a faster stock step makes the ratio worse),
# HBM streams ~3.8 TB/s in practice (4.8 peak), an eager kernel costs ~5 µs of host launch time and
# at least ~2 µs on the device.
H200 = {"stock_step_ms": 6.0, "hbm_tb_s": 3.8, "launch_us": 5.0, "kernel_min_us": 2.0}


def roofline(launches: float, bytes_moved: float, machine: dict = H200) -> dict:
    """Estimated extra time per step and throughput ratio to stock: the step is launch-bound (host
    time) or memory-bound (device time), whichever is longer; training is counted on the critical
    path (a side stream shares the same HBM)."""
    host_ms = launches * machine["launch_us"] / 1e3
    device_ms = bytes_moved / (machine["hbm_tb_s"] * 1e12) * 1e3 + launches * machine["kernel_min_us"] / 1e3
    extra = max(host_ms, device_ms)
    return {"extra_ms": round(extra, 3), "bound": "launches" if host_ms >= device_ms else "memory",
            "ratio": round(machine["stock_step_ms"] / (machine["stock_step_ms"] + extra), 3)}


def compare_counts(after: list[dict], before: list[dict]) -> list[dict]:
    """before → after per (rows, hidden, path): ops and bytes, and the ratio before/after."""
    def key(c: dict) -> tuple:
        return c.get("profile", "bounded"), c["rows"], c["hidden"], c["vocab"], c["path"]
    old = {key(c): c for c in before}
    out = []
    for c in after:
        b = old.get(key(c))
        if b is None:
            continue
        row = {"profile": c.get("profile", "bounded"), "rows": c["rows"], "groups": c["groups"],
               "hidden": c["hidden"], "path": c["path"]}
        for part in ("step", "train"):
            for k in ("ops", "bytes_written", "host_reads"):
                row[f"{part}_{k}"] = [b[part][k], c[part][k]]
            row[f"{part}_bytes_reduction"] = round(b[part]["bytes_written"] / max(c[part]["bytes_written"], 1), 2)
        out.append(row)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, nargs="+", default=[8, 64])
    p.add_argument("--hidden", type=int, nargs="+", default=[576, 3584])
    p.add_argument("--vocab", type=int, nargs="+", default=[49152, 152064])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--profiles", nargs="+", default=["bounded", "paper"], choices=profile_names(),
                   help="profiles to measure (default: bounded paper)")
    p.add_argument("--counts", action=argparse.BooleanOptionalAction, default=True,
                   help="ops and bytes per step at the issue's shapes (default on)")
    p.add_argument("--count-rows", type=int, nargs="+", help="default: 256 (cpu), 64 256 (cuda)")
    p.add_argument("--count-hidden", type=int, nargs="+", help="default: 576 (cpu), 896 3584 (cuda)")
    p.add_argument("--count-vocab", type=int, help="default: 49152 (cpu), 152064 (cuda)")
    p.add_argument("--count-paths", nargs="+", choices=("cpu", "static"),
                   help="code paths to count (default: cpu static on cpu; static, the CUDA path, on cuda)")
    p.add_argument("--train-every", type=int, nargs="+", default=[1],
                   help="training cadences to count (default 1; amortized per step)")
    p.add_argument("--baseline-counts", help="opcount JSON of an older checkout: adds before → after")
    p.add_argument("--no-timing", action="store_true", help="counts only")
    p.add_argument("--output", help="write the JSON here as well (rewritten after every case)")
    p.add_argument("--note", help="a free-text note stored in the JSON (e.g. machine load)")
    args = p.parse_args(argv)
    global DEVICE
    DEVICE = torch.device(args.device)
    result: dict = {"device": str(DEVICE), "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "machine": platform.machine(),
                    "command": "python -m esamp_sgl.bench.core " + " ".join(argv if argv is not None else sys.argv[1:])}
    if args.note:
        result["note"] = args.note

    def flush(_: object = None) -> None:
        if args.output:
            Path(args.output).parent.mkdir(parents=True, exist_ok=True)
            Path(args.output).write_text(json.dumps(result, indent=1))
    if args.counts:  # first: deterministic, and the GPU check wants them even if timing runs out
        result["counts"] = []
        run_counts(DEVICE, args.count_rows, args.count_hidden, args.count_vocab,
                   on_case=lambda c: (result["counts"].append(c), flush()), profiles=tuple(args.profiles),
                   cadences=tuple(args.train_every),
                   paths=tuple(args.count_paths) if args.count_paths else None)
        if args.baseline_counts:
            before = [_count_summary(c) for c in json.loads(Path(args.baseline_counts).read_text())]
            result["counts_before"] = before
            result["counts_before_after"] = compare_counts(result["counts"], before)
        flush()
    if not args.no_timing:
        result.update(run_core_bench(args.rows, args.hidden, args.vocab, args.repeats, tuple(args.profiles)))
        flush()
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
