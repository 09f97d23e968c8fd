"""`esamp-sgl demo`: n samples per prompt with stock sampling and with ESamp, in one SGLang engine.

Both arms run in the same embedded `sglang.Engine` (started with `--sampling-backend esamp`), with
the same sampling parameters; the only difference is `custom_params={"esamp": true, ...}`. For each
set of samples it reports distinct-n (surface diversity), the mean per-token NLL of the samples
under the base model (quality; scored by the same engine at T=1) and ESamp's telemetry.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import textwrap
import time
from typing import Any

DEFAULT_PROMPTS = (
    "Invent a name and a one-line description for a new board game.",
    "Write the first sentence of a story about a lighthouse keeper.",
)


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    from esamp_sgl.core.config import FIELDS
    from esamp_sgl.core.profiles import DEFAULT_PROFILE, PROFILES, profile_names

    parser.add_argument("--prompt", action="append", dest="prompts", metavar="TEXT",
                        help="a user prompt (repeatable); default: two short creative prompts")
    parser.add_argument("--n", type=int, default=6, help="samples per prompt and arm (default 6)")
    parser.add_argument("--max-tokens", type=int, default=40, help="new tokens per sample (default 40)")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature, both arms (default 1.0)")
    parser.add_argument("--min-p", type=float, default=0.05, help="min-p filter, both arms (default 0.05)")
    parser.add_argument("--top-p", type=float, default=1.0, help="top-p filter, both arms (default 1.0 = off)")
    parser.add_argument("--profile", choices=profile_names(), default=DEFAULT_PROFILE,
                        help=f"the ESamp profile the engine runs (default {DEFAULT_PROFILE}, the server default; "
                             "`paper` = the paper's method; `esamp-sgl profiles` lists them)")
    parser.add_argument("--beta", type=float, default=None,
                        help=f"ESamp strength β for the ESamp arm, {FIELDS['beta'].accepts()} (default: the "
                             f"profile's, {DEFAULT_PROFILE} {PROFILES[DEFAULT_PROFILE]['beta']:g})")
    parser.add_argument("--rule", choices=("contrastive", "compensated", "noise"), default=None,
                        help=f"ESamp reweighting rule (default: the profile's, {DEFAULT_PROFILE} "
                             f"{PROFILES[DEFAULT_PROFILE]['rule']}; contrastive = the paper's)")
    from esamp_sgl.launch.registry import add_model_arguments

    add_model_arguments(parser, "any HF model folder (default: the bundled SmolLM2-135M-Instruct)")
    parser.add_argument("--json", metavar="FILE", help="also write the full report as JSON to FILE")


def _nll(engine, prompt_ids: list[int], output_ids: list[int]) -> float:
    """Mean negative log-likelihood per token of the sample under the base model (T = 1)."""
    out = engine.generate(input_ids=prompt_ids + output_ids, sampling_params={"max_new_tokens": 0},
                          return_logprob=True, logprob_start_len=len(prompt_ids) - 1)
    from esamp_sgl.eval.metrics import mean_output_nll

    return mean_output_nll(out["meta_info"]["input_token_logprobs"], len(output_ids))


def _arm(engine, tokenizer, prompt_ids, args, explore: bool) -> dict[str, Any]:
    from esamp_sgl.core.telemetry import group_report
    from esamp_sgl.eval.metrics import distinct_n

    params: dict[str, Any] = {"n": args.n, "max_new_tokens": args.max_tokens, "temperature": args.temperature,
                              "min_p": args.min_p, "top_p": args.top_p}
    if explore:
        params["custom_params"] = {"esamp": True, "esamp_profile": args.profile,
                                   **({"esamp_beta": args.beta} if args.beta is not None else {}),
                                   **({"esamp_rule": args.rule} if args.rule is not None else {})}
    started = time.monotonic()
    outs = engine.generate(input_ids=prompt_ids, sampling_params=params)
    seconds = time.monotonic() - started
    outs = outs if isinstance(outs, list) else [outs]
    texts = [o["text"].strip() for o in outs]
    nlls = [_nll(engine, prompt_ids, o["output_ids"]) for o in outs if o["output_ids"]]
    telemetry = None
    if explore:
        telemetry = group_report(o["meta_info"].get("esamp", [None])[0] for o in outs)
    return {
        "samples": texts,
        "tokens": sum(len(o["output_ids"]) for o in outs),
        "seconds": seconds,
        "metrics": {f"distinct_{k}": distinct_n(texts, k) for k in (1, 2, 3)}
        | {"mean_nll": sum(nlls) / len(nlls) if nlls else math.nan},
        "telemetry": telemetry,
    }


def _side_by_side(left: list[str], right: list[str], width: int) -> str:
    col = max(20, (width - 7) // 2)
    lines = [f"{'stock':<{col}} | esamp", f"{'-' * col}-+-{'-' * col}"]
    for i in range(max(len(left), len(right))):
        a = textwrap.wrap(" ".join(left[i].split()) if i < len(left) else "", col) or [""]
        b = textwrap.wrap(" ".join(right[i].split()) if i < len(right) else "", col) or [""]
        for j in range(max(len(a), len(b))):
            lines.append(f"{(a[j] if j < len(a) else ''):<{col}} | {b[j] if j < len(b) else ''}")
        lines.append(f"{'':<{col}} |")
    return "\n".join(lines)


def _metrics_table(stock: dict, esamp: dict) -> str:
    rows = [("distinct-1", "distinct_1"), ("distinct-2", "distinct_2"), ("distinct-3", "distinct_3"),
            ("mean NLL (base model)", "mean_nll")]
    out = [f"{'metric':<24}{'stock':>10}{'esamp':>10}"]
    out += [f"{label:<24}{stock['metrics'][k]:>10.3f}{esamp['metrics'][k]:>10.3f}" for label, k in rows]
    return "\n".join(out)


def _telemetry_line(t: dict | None) -> str:
    if not t:
        return "esamp telemetry: none (the server did not report any)"
    def f(x):
        return "n/a" if x is None else f"{x:.3f}"
    return (f"esamp telemetry: profile {t.get('profile')} · group {t['group']} · steps trained {t.get('steps_trained')} · "
            f"mean loss {f(t.get('mean_loss'))} · mean novelty {f(t.get('mean_novelty'))} · "
            f"tokens reweighted {t.get('tokens_reweighted')} · R² {f(t.get('r2'))} · corr(d,z) {f(t.get('corr_d_z'))}")


def run_demo(args: argparse.Namespace) -> dict[str, Any]:
    import threading

    from tqdm import tqdm
    from transformers import AutoTokenizer

    from esamp_sgl.launch.prompts import chat_prompt_ids

    # tqdm's default write lock includes a multiprocessing RLock: a named POSIX semaphore ("/mp-...",
    # since SGLang switches multiprocessing to "spawn") registered with multiprocessing's resource
    # tracker, a child process of this one. `sglang.Engine.shutdown()` kills every child of this
    # process (kill_process_tree), the tracker included; at exit the semaphore's finalizer then
    # unregisters it with a freshly started tracker that never saw it, which prints a KeyError
    # traceback. The progress bar needs no cross-process lock: a thread lock creates no semaphore.
    tqdm.set_lock(threading.RLock())

    from esamp_sgl.launch.registry import resolve_args
    from esamp_sgl.launch.server import open_engine

    for name, value, lo, hi in (("--n", args.n, 1, 64), ("--max-tokens", args.max_tokens, 1, 4096)):
        if not lo <= value <= hi:
            raise SystemExit(f"esamp-sgl demo: {name} must be in [{lo}, {hi}], got {value}")
    prompts = args.prompts or list(DEFAULT_PROMPTS)
    model_path = resolve_args(args)  # --model NAME (prepared on first use) or --model-path
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    width = shutil.get_terminal_size((120, 40)).columns
    report: dict[str, Any] = {"model": str(model_path), "settings": {
        k: getattr(args, k) for k in ("profile", "n", "max_tokens", "temperature", "min_p", "top_p", "beta", "rule")},
        "prompts": []}
    print(f"starting SGLang (embedded engine, --sampling-backend esamp) on {model_path} ...", file=sys.stderr)
    from esamp_sgl.launch.models import model_note

    if model_note(model_path):
        print(model_note(model_path))
    # The engine's scheduler reads its profile from the environment (runtime_patch/settings.py).
    os.environ["ESAMP_SGL_PROFILE"] = args.profile
    with open_engine(model_path, sampling_backend="esamp") as engine:
        progress = tqdm(total=2 * len(prompts), desc="sampling", unit="set", file=sys.stderr)
        for prompt in prompts:
            prompt_ids = chat_prompt_ids(tokenizer, prompt)
            stock = _arm(engine, tokenizer, prompt_ids, args, explore=False)
            progress.update()
            esamp = _arm(engine, tokenizer, prompt_ids, args, explore=True)
            progress.update()
            report["prompts"].append({"prompt": prompt, "stock": stock, "esamp": esamp})
            progress.clear()
            print(f"\n=== {prompt}\n")
            print(_side_by_side(stock["samples"], esamp["samples"], width))
            print(_metrics_table(stock, esamp))
            print(_telemetry_line(esamp["telemetry"]))
            progress.refresh()
        progress.close()
    return report
