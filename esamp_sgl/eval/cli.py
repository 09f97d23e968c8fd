"""`esamp-sgl eval diversity|passk` (see `esamp-sgl eval NAME --help`)."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Iterator

from esamp_sgl.eval import report
from esamp_sgl.eval.analysis import pareto_front
from esamp_sgl.eval.arms import PRESETS, PRIMARY_ARM, parse_arm, parse_arms
from esamp_sgl.eval.tasks import FILE_TASK_DEFAULTS, GENERATED_TASKS, TASK_DEFAULTS, load_tasks


def _common(parser: argparse.ArgumentParser, preset: str, n: int, max_tokens: int | None,
            max_tokens_default: str | None = None) -> None:
    parser.add_argument("--url", help="a running server started with --sampling-backend esamp "
                                      "(default: start one on --model-path)")
    from esamp_sgl.launch.registry import add_model_arguments

    add_model_arguments(parser, "HF model folder (default: the bundled SmolLM2-135M-Instruct); "
                                "with --url it must be the server's model (tokenizer)")
    parser.add_argument("--arms", default=preset,
                        help=f"a preset ({', '.join(PRESETS)}) or ';'-separated specs like "
                             f"'stock:T=0.7,min_p=0.05;esamp:rule=compensated,beta=3,min_p=0.05' (default {preset})")
    parser.add_argument("--n", type=int, default=n, help=f"samples per prompt and arm (default {n})")
    parser.add_argument("--max-tokens", type=int, default=max_tokens,
                        help=f"new tokens per sample (default {max_tokens_default or max_tokens})")
    parser.add_argument("--primary", metavar="ARM_SPEC",
                        help=f"the arm of the pre-registered contrast (default {PRIMARY_ARM}); "
                             "it must be one of --arms")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight (default 16)")
    parser.add_argument("--output", required=True, help="directory for the JSON, PNG and markdown results")


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace, bounds: dict[str, tuple[int, int]],
           sweeps: bool = False) -> None:
    """sweeps: the `paper` preset with its baseline sweeps (eval diversity)."""
    from esamp_sgl.eval.servers import plan_servers

    for name, (lo, hi) in bounds.items():
        value = getattr(args, name)
        if value is not None and not lo <= value <= hi:
            parser.error(f"--{name.replace('_', '-')} must be in [{lo}, {hi}], got {value}")
    try:
        args.arm_list = parse_arms(args.arms, sweeps=sweeps)
        args.server_plans = plan_servers(args.arm_list, args.url)  # one server per profile
    except ValueError as exc:
        parser.error(f"--arms: {exc}")
    try:
        args.primary_arm = parse_arm(args.primary or PRIMARY_ARM)
    except ValueError as exc:
        parser.error(f"--primary: {exc}")
    names = [a.name for a in args.arm_list]
    if args.primary and args.primary_arm.name not in names:  # the default may be absent: reported, not fatal
        parser.error(f"--primary {args.primary_arm.name} must be one of --arms: {', '.join(names)}")


@contextlib.contextmanager
def _server(args: argparse.Namespace) -> Iterator[tuple[str, Path, dict[str, Any]]]:
    from esamp_sgl.launch.registry import resolve_args
    from esamp_sgl.eval.servers import server_env
    from esamp_sgl.launch.server import SGLangServer, server_or_url

    model = resolve_args(args)  # --model NAME (prepared on first use) or --model-path

    def before_start(server: SGLangServer) -> None:
        def on_sigterm(*_: object) -> None:
            # The server runs in its own session, so SIGTERM here would orphan it; stopping it also
            # fails the requests in flight, which lets the worker threads (and this process) finish.
            server.stop()
            raise SystemExit(143)

        signal.signal(signal.SIGTERM, on_sigterm)
        print(f"starting SGLang (--sampling-backend esamp) on {model} ...", file=sys.stderr)

    # The profile this server runs (servers.plan_servers; None: the server's default), set per server.
    profile = getattr(args, "server_profile", None)
    env = server_env(profile, dict(os.environ))
    with server_or_url(args.url, model, before_start=before_start, **({"env": env} if env else {})) as (url, server):
        if server is None:
            yield url, model, {"url": url}
        else:
            yield url, model, {"started_by_eval": True, "startup_s": server.startup_seconds,
                               "profile_env": profile}


def _bar(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="job", file=sys.stderr)


# -- diversity ----------------------------------------------------------------------------------------
def diversity_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="esamp-sgl eval diversity", description=__import__(
        "esamp_sgl.eval.diversity", fromlist=["x"]).__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", default="creative",
                        help="'creative' (30 bundled prompts), 'stories' (30 bundled story first halves, the last 32 "
                             "words as a plain-text prompt: the paper's creative protocol) or a file: one per line, "
                             "or JSONL with 'prompt'")
    parser.add_argument("--chat", action=argparse.BooleanOptionalAction, default=None,
                        help="wrap each prompt in the chat template (default: off for 'stories', on otherwise)")
    parser.add_argument("--limit", type=int, help="use the first N prompts")
    parser.add_argument("--replicates", type=int, default=2, help="independent repeats of every job (default 2)")
    parser.add_argument("--resume", action="store_true",
                        help="keep the finished jobs in OUTPUT/generations.jsonl (same arguments) and run the rest")
    parser.add_argument("--from-raw", metavar="RAW_JSON",
                        help="skip generation: re-score an earlier run's raw.json or (partial) generations.jsonl")
    _common(parser, "diversity", n=8, max_tokens=48)
    args = parser.parse_args(argv)
    _check(parser, args, {"n": (2, 64), "max_tokens": (1, 4096), "concurrency": (1, 256),
                          "replicates": (1, 100), "limit": (1, 100_000)}, sweeps=True)
    from transformers import AutoTokenizer

    from esamp_sgl.eval import diversity
    from esamp_sgl.eval.client import ServerClient
    from esamp_sgl.eval.embed import SentenceEmbedder
    from esamp_sgl.eval.tasks import load_prompts
    from esamp_sgl.launch.prompts import chat_prompt_ids

    from esamp_sgl.eval import paper, servers
    from esamp_sgl.eval.stories import STORIES, story_prompts

    try:
        prompts = (story_prompts() if args.prompts == STORIES else load_prompts(args.prompts))[:args.limit]
    except ValueError as exc:
        parser.error(str(exc))
    chat = args.prompts != STORIES if args.chat is None else args.chat
    embedder = SentenceEmbedder()  # fail before the long run if the embedding model is missing
    out = Path(args.output)
    started = time.time()
    if args.from_raw:  # re-score and re-analyse a run's generations (raw.json, or a partial journal)
        source = Path(args.from_raw)
        if source.suffix == ".jsonl":
            from esamp_sgl.launch.registry import resolve_args

            results = [json.loads(line) for line in source.read_text().splitlines() if line.strip()]
            model, server_info = resolve_args(args), {"journal": str(source)}
        else:
            raw = json.loads(source.read_text())
            results, model, server_info = raw["results"], raw["model"], raw["server"]
        wanted = {a.name for a in args.arm_list}
        results = [r for r in results if r["arm"] in wanted and r["prompt"] < len(prompts)]
    else:
        out.mkdir(parents=True, exist_ok=True)
        journal = out / "generations.jsonl"
        if journal.exists() and not args.resume:
            journal.unlink()
        results, server_infos, seen = [], [], []
        for plan in args.server_plans:  # one server per profile, one after the other
            args.server_profile = plan.profile
            with _server(args) as (url, model, server_info):
                tok = AutoTokenizer.from_pretrained(model)
                prompt_ids = [chat_prompt_ids(tok, p) if chat else tok.encode(p) for p in prompts]
                client = servers.ProfileRecorder(ServerClient(url))
                names = {a.name for a in plan.arms}
                with _bar(len(prompts) * len(plan.arms) * args.replicates,
                          f"diversity ({plan.profile or 'default'} server)") as bar:
                    # The journal holds every server's jobs: keep this server's (its arms) only.
                    results += [r for r in diversity.generate_all(client, prompt_ids, plan.arms, args.n,
                                                                  args.max_tokens, args.replicates, args.concurrency,
                                                                  bar.update, journal=journal) if r["arm"] in names]
            server_infos.append({**server_info, "telemetry_settings": client.settings})
            seen.append(client.telemetry_profiles(plan.arms))
        arm_servers, profile_notes = servers.arm_servers(args.server_plans, seen)
        # Per arm: the server (and profile) that ran it and the profile its telemetry reported.
        server_info = {"servers": server_infos, "arm_servers": arm_servers, "profile_notes": profile_notes}
        # The generations are the expensive part: keep them before anything else can fail.
        report.write_json(out / "raw.json", {"model": str(model), "server": server_info, "results": results})
    records = diversity.score(results, prompts, embedder)
    analysis = diversity.analyze(records, args.arm_list, args.primary_arm)
    analysis["paper_contrasts"] = paper.diversity_contrasts(records, args.arm_list)
    if isinstance(server_info, dict):  # an arm whose telemetry reported another profile than it asked for
        analysis["paper_contrasts"]["notes"] += server_info.get("profile_notes", [])
    analysis["matched_perplexity"] = paper.matched_table(records, args.arm_list, analysis["paper_contrasts"]["families"])
    config = {"command": "esamp-sgl eval " + " ".join(["diversity"] + argv), "model": str(model),
              "prompts": prompts, "chat": chat, "n": args.n, "max_tokens": args.max_tokens, "replicates": args.replicates,
              "concurrency": args.concurrency, "server": server_info, "primary": args.primary_arm.name,
              "arms": [{"name": a.name, "family": a.family, **a.model_dump(), "sampling_params": a.sampling_params()}
                       for a in args.arm_list],
              "wall_s": time.time() - started}
    report.write_json(out / "diversity.json", {"config": config, **analysis, "records": records,
                                               "samples": [{k: r[k] for k in ("arm", "replicate", "prompt", "texts")}
                                                           for r in results]})
    _diversity_outputs(out, args.arm_list, analysis, config)
    print(f"wrote {out}/diversity.json, diversity.md, vendi_vs_nll.png, cosdist_vs_nll.png", file=sys.stderr)
    return 0


def _diversity_outputs(out: Path, arms, analysis: dict[str, Any], config: dict[str, Any]) -> None:
    summary = analysis["summary"]
    families = {a.name: a.family for a in arms}
    for metric, label, png in (("vendi", "Vendi score (MiniLM)", "vendi_vs_nll.png"),
                               ("cos_dist", "mean pairwise cosine distance (MiniLM)", "cosdist_vs_nll.png")):
        points = {a.name: (summary[a.name]["nll"]["mean"], summary[a.name][metric]["mean"]) for a in arms}
        errors = {a.name: (summary[a.name]["nll"]["sem"], summary[a.name][metric]["sem"]) for a in arms}
        report.frontier_plot(out / png, points, families, pareto_front(points), errors, y_label=label,
                             title=f"{len(config['prompts'])} prompts × n={config['n']} × {config['max_tokens']} tokens, "
                                   f"{config['replicates']} replicates (mean ± s.e. over prompts)")
    gains = analysis["matched_nll_gain"].get("vendi", {})
    ref = next((f for f in gains if "min-p" in f), next(iter(gains), None))
    header = ["arm", "Vendi", "cos-dist", "distinct-2", "NLL", "rep-3", "on-topic", "length",
              f"Vendi gain at matched NLL vs {ref or 'n/a'} (win)"]
    rows = []
    for a in arms:
        s = summary[a.name]
        g = gains.get(ref, {}).get(a.name) if ref else None
        gain = "—" if g is None else "out of span" if g["out_of_span"] else \
            f"{g['mean']:+.3f} ± {g['sem']:.3f} ({g['win_rate']:.0%})"
        rows.append([a.name + (" ★" if a.name in analysis["pareto_front"] else ""),
                     report.fmt(s["vendi"], 2), report.fmt(s["cos_dist"]), report.fmt(s["distinct_2"]),
                     report.fmt(s["nll"]), report.fmt(s["rep3"]), report.fmt(s["on_topic"]),
                     report.fmt(s["length"], 1), gain])
    from esamp_sgl.launch.models import model_note

    note = model_note(config["model"])
    lines = [f"# Diversity vs quality — {config['model']}", "", *([note, ""] if note else []),
             f"`{config['command']}`", "",
             f"{len(config['prompts'])} prompts × n={config['n']} × {config['max_tokens']} new tokens × "
             f"{config['replicates']} replicates; mean ± standard error over prompts; ★ = on the Pareto frontier "
             "(lower NLL, higher Vendi). Gain = Vendi minus the reference stock curve at the arm's own NLL, per prompt.",
             "", report.markdown_table(header, rows), "", "## Contrasts (per prompt, mean ± s.e., win rate)", ""]
    crow = []
    for label, value in analysis["contrasts"].items():
        if value is None:
            continue
        if "vendi" in value:  # paired metric differences
            crow.append([label] + [_fmt_diff(value.get(m)) for m in ("vendi", "nll", "distinct_2", "rep3")])
        else:
            crow.append([label, _fmt_diff(value), "", "", ""])
    lines.append(report.markdown_table(["contrast", "ΔVendi (or Δgain)", "ΔNLL", "Δdistinct-2", "Δrep-3"], crow))
    lines += _preregistered_lines(analysis["preregistered"])
    if "paper_contrasts" in analysis:  # issue 20: matched perplexity (interpolated only), its contrasts
        from esamp_sgl.eval import paper

        lines += paper.diversity_summary_lines(summary, arms)
        lines += paper.diversity_markdown_lines(analysis["paper_contrasts"], analysis["matched_perplexity"])
    (out / "diversity.md").write_text("\n".join(lines) + "\n")


def _preregistered_lines(pre: dict[str, Any]) -> list[str]:
    """The diversity report's "Pre-registered contrast" section."""
    primary = pre["primary"]
    lines = ["", "## Pre-registered contrast", "",
             f"Primary: {pre['primary_arm']}'s Vendi at matched NLL minus the *strongest* baseline family's curve "
             "(the family with the highest mean curve value at the arm's NLL, chosen after the fact: conservative). "
             "Secondary, same code: the ESamp arm's gain minus its control's gain against that family's curve. "
             "Per prompt; 95 % intervals from the paired t test and a BCa bootstrap (scipy.stats, fixed seed).", ""]
    if primary:
        lines += [report.markdown_table(["baseline family (curve)", "arms", "mean curve value at matched NLL",
                                         f"mean gain of {pre['primary_arm']}"],
                                        [[f + (" ← strongest" if f == primary["strongest_family"] else ""),
                                          ", ".join(v["arms"]), f"{v['mean_at_matched_quality']:.3f}",
                                          f"{v['mean_gain']:+.3f}"] for f, v in primary["families"].items()]), ""]
    rows = [report.contrast_row(f"primary: {pre['primary_arm']} − strongest baseline"
                                + (f" ({primary['strongest_family']})" if primary else ""), primary)]
    rows += [report.contrast_row(label, stat) for label, stat in pre["secondary"].items()]
    lines.append(report.markdown_table(report.CONTRAST_HEADER, rows))
    return lines + report.bullet_lines(pre["notes"])


def _fmt_diff(stat: dict[str, Any] | None) -> str:
    if not stat or math.isnan(stat["mean"]):
        return "n/a"
    return f"{stat['mean']:+.3f} ± {stat['sem']:.3f} (t {stat['t']:.1f}, win {stat['win_rate']:.0%})"


# -- pass@k -------------------------------------------------------------------------------------------
def passk_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="esamp-sgl eval passk", description=__import__(
        "esamp_sgl.eval.passk", fromlist=["x"]).__doc__)
    parser.add_argument("--task", default="arithmetic",
                        help=f"{' or '.join(repr(t) for t in GENERATED_TASKS)} (generated: 3-shot completion "
                             "arithmetic; two-step word problems answered by a chat model with a worked solution "
                             "ending in 'Answer: N') or a JSONL file with 'prompt' and 'answer' or 'tests' "
                             "(default arithmetic)")
    parser.add_argument("--count", type=int, default=40, help="generated tasks: number of problems (default 40)")
    parser.add_argument("--difficulty", type=int, default=1,
                        help="generated tasks: 1-5 (default 1; SmolLM2-135M greedy accuracy on 40 tasks: "
                             "arithmetic 22.5%%, worked 25%% (one-step problems; 2-5 are two or three steps))")
    parser.add_argument("--seed", type=int, default=0, help="generated tasks: generator seed (default 0)")
    parser.add_argument("--split", choices=("dev", "heldout"), default="dev",
                        help="gsm8k/humaneval: 'dev' (GSM8K test rows 0-999, even HumanEval tasks; default) or "
                             "'heldout' (the rest, kept for independent checks); --count takes the first N")
    parser.add_argument("--resume", action="store_true",
                        help="keep the finished (task, arm) jobs in OUTPUT/generations.jsonl (same arguments) and "
                             "run the rest; without it an earlier journal there is replaced")
    parser.add_argument("--k", default=None, help="comma-separated k values (default: powers of 2 up to n)")
    parser.add_argument("--stop", default=None,
                        help="stop string; default: newline for arithmetic, none for worked and files")
    parser.add_argument("--chat", action=argparse.BooleanOptionalAction, default=None,
                        help="wrap each prompt in the chat template (default: on for worked, off for arithmetic "
                             "and files, which are plain completion)")
    _common(parser, "passk", n=16, max_tokens=None, max_tokens_default=", ".join(
        f"{t}: {d.max_tokens}" for t, d in TASK_DEFAULTS.items()) + f", files: {FILE_TASK_DEFAULTS.max_tokens}")
    args = parser.parse_args(argv)
    defaults = TASK_DEFAULTS.get(args.task, FILE_TASK_DEFAULTS)
    if args.max_tokens is None:
        args.max_tokens = defaults.max_tokens
    _check(parser, args, {"n": (1, 256), "max_tokens": (1, 4096), "concurrency": (1, 256),
                          "count": (1, 10_000), "difficulty": (1, 5)})
    if args.max_tokens < defaults.min_max_tokens:
        parser.error(f"--max-tokens must be in [{defaults.min_max_tokens}, 4096] for --task {args.task} (room for "
                     f"the worked solution and its 'Answer:' line), got {args.max_tokens}")
    try:
        tasks = load_tasks(args.task, args.count, args.difficulty, args.seed, split=args.split)
        ks = [int(k) for k in args.k.split(",")] if args.k else None
    except ValueError as exc:
        parser.error(str(exc))
    if ks and not all(1 <= k <= args.n for k in ks):
        parser.error(f"--k values must be in [1, --n={args.n}], got {args.k}")
    from transformers import AutoTokenizer

    from esamp_sgl.eval import passk
    from esamp_sgl.eval.client import ServerClient
    from esamp_sgl.launch.prompts import chat_prompt_ids

    stop = [args.stop] if args.stop else (list(defaults.stop) if defaults.stop else None)
    chat = defaults.chat if args.chat is None else args.chat
    out = Path(args.output)
    started = time.time()
    from esamp_sgl.eval import paper, passk_curves, servers
    from esamp_sgl.eval.journal import JOURNAL_NAME, PassKJournal

    out.mkdir(parents=True, exist_ok=True)
    if (out / JOURNAL_NAME).exists() and not args.resume:
        (out / JOURNAL_NAME).unlink()
    journal = PassKJournal(out / JOURNAL_NAME)  # finished jobs, appended as they complete
    parts, server_infos, seen = [], [], []
    for plan in args.server_plans:  # one server per profile, one after the other
        args.server_profile = plan.profile
        with _server(args) as (url, model, server_info):
            tok = AutoTokenizer.from_pretrained(model)
            if chat:
                prompt_ids = [chat_prompt_ids(tok, t["prompt"]) for t in tasks]
            else:
                prompt_ids = [tok.encode(t["prompt"]) for t in tasks]
            client = servers.ProfileRecorder(ServerClient(url))
            with _bar(len(tasks) * (len(plan.arms) + 1), f"pass@k ({plan.profile or 'default'} server)") as bar:
                parts.append(passk.run(client, tasks, prompt_ids, plan.arms, args.n, args.max_tokens,
                                       stop, args.concurrency, bar.update, ks=ks, journal=journal))
        server_infos.append({**server_info, "telemetry_settings": client.settings})
        seen.append(client.telemetry_profiles(plan.arms))
    result = servers.merge_passk(parts)
    server_info = server_infos[0] if len(server_infos) == 1 else server_infos
    result["arm_servers"], profile_notes = servers.arm_servers(args.server_plans, seen)
    result["preregistered"] = passk.preregistered(result, args.arm_list, args.primary_arm, args.n)
    result["curves"] = passk_curves.curves(result["per_task"], [a.name for a in args.arm_list], args.n)
    result["paper_contrasts"] = paper.passk_contrasts(result["per_task"], args.arm_list, args.n)
    result["paper_contrasts"]["notes"] += profile_notes
    config = {"command": "esamp-sgl eval " + " ".join(["passk"] + argv), "model": str(model),
              "task": args.task, "split": args.split, "count": len(tasks), "difficulty": args.difficulty,
              "seed": args.seed,
              "n": args.n, "max_tokens": args.max_tokens, "stop": stop, "chat": chat, "server": server_info,
              "primary": args.primary_arm.name,
              "arms": [{"name": a.name, **a.model_dump(), "sampling_params": a.sampling_params()} for a in args.arm_list],
              "tasks": tasks, "wall_s": time.time() - started}
    report.write_json(out / "passk.json", {"config": config, **result})
    curves = {name: {k: v["mean"] for k, v in s["pass_at_k"].items()} for name, s in result["summary"].items()}
    report.passk_plot(out / "passk.png", curves, title=f"{args.task} ({len(tasks)} tasks, n={args.n}); "
                                                     f"greedy accuracy {result['greedy_accuracy']:.0%}")
    report.passk_band_plot(out / "passk_curves.png", result["curves"],
                           title=f"{args.task} ({len(tasks)} tasks, n={args.n}): pass@k, k = 1…{args.n}, 95 % bands")
    arm_profiles = {a.name: (a.profile if a.needs_profile else "any") for a in args.arm_list}
    header = ["arm"] + [f"pass@{k}" for k in result["ks"]] + ["distinct answers", "distinct correct", "majority vote"]
    rows = [[name] + [report.fmt(s["pass_at_k"][k]) for k in result["ks"]]
            + [report.fmt(s["distinct_answers"], 2), report.fmt(s["distinct_correct"], 2),
               report.fmt(s["majority_vote_accuracy"])] for name, s in result["summary"].items()]
    from esamp_sgl.launch.models import model_note

    note = model_note(config["model"])
    (out / "passk.md").write_text("\n".join([
        f"# pass@k — {config['model']}", "", *([note, ""] if note else []), f"`{config['command']}`", "",
        f"{len(tasks)} tasks × n={args.n}; greedy accuracy {result['greedy_accuracy']:.1%}; "
        "mean ± s.e. over tasks.", "", report.markdown_table(header, rows),
        *_passk_preregistered_lines(result["preregistered"]),
        *passk_curves.markdown_lines(result["curves"], args.n, arm_profiles),
        *paper.passk_markdown_lines(result["paper_contrasts"])]) + "\n")
    print(f"greedy accuracy {result['greedy_accuracy']:.1%}; " + "; ".join(
        f"{n}: pass@1 {s['pass_at_k'][result['ks'][0]]['mean']:.3f}, pass@{result['ks'][-1]} "
        f"{s['pass_at_k'][result['ks'][-1]]['mean']:.3f}" for n, s in result["summary"].items()), file=sys.stderr)
    print(f"wrote {out}/passk.json, passk.md, passk.png, passk_curves.png", file=sys.stderr)
    return 0


def _passk_preregistered_lines(pre: dict[str, Any]) -> list[str]:
    """The pass@k report's "Pre-registered contrast" section (the do-no-harm check)."""
    rows = [report.contrast_row(f"{label}: {pre['primary_arm']} − {pre['baseline_arm']}", pre[key])
            for key, label in (("pass_at_k", f"pass@{pre['k']}"), ("distinct_answers", "distinct answers"))]
    return ["", "## Pre-registered contrast", "",
            "Do no harm: the default ESamp arm minus stock sampling at its temperature and filters, paired over "
            "tasks; 95 % intervals from the paired t test and a BCa bootstrap (scipy.stats, fixed seed).", "",
            report.markdown_table(report.CONTRAST_HEADER, rows)] + report.bullet_lines(pre["notes"])


# -- exact pass@n over the candidate tree ---------------------------------------------------------------
def exact_main(argv: list[str]) -> int:
    """`esamp-sgl eval exact`: no server; the parser and the run live in esamp_sgl.eval.exact."""
    from esamp_sgl.eval.exact import main as run_exact

    return run_exact(argv)


COMMANDS = {"diversity": diversity_main, "passk": passk_main, "exact": exact_main}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: esamp-sgl eval {{{','.join(COMMANDS)}}} [--help]", file=sys.stderr)
        return 2
    return COMMANDS[argv[0]](argv[1:])
