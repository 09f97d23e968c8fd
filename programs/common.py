"""What every program shares: the backend (a server URL or an in-process Engine), sampling options,
and the CLI plumbing (`--url`, `--model`, `--json`)."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from dataclasses import asdict, dataclass, is_dataclass
from typing import Any, Iterator

from esamp_sgl.core.config import FIELDS


@dataclass(frozen=True)
class Sampling:
    """Sampling options of the exploring generations (SGLang's meaning)."""

    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    min_p: float = 0.05
    explore: bool = True
    beta: float | None = None  # None: the server's default

    def __post_init__(self) -> None:
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ValueError(f"max_tokens must be a positive integer, got {self.max_tokens!r}")
        if not isinstance(self.temperature, (int, float)) or self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature!r}")
        if not isinstance(self.explore, bool):
            raise TypeError(f"explore must be True or False, got {self.explore!r}")
        if self.beta is not None and not self.explore:
            raise ValueError("beta only applies with explore=True")

    def gen_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for esamp_sgl.lang.gen."""
        kwargs: dict[str, Any] = {"max_tokens": self.max_tokens, "temperature": self.temperature,
                                  "top_p": self.top_p, "min_p": self.min_p, "explore": self.explore}
        if self.beta is not None:
            kwargs["beta"] = self.beta
        return kwargs


def positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def resolve_backend(backend: Any) -> Any:
    """The backend argument of a program, else SGLang's default backend (`set_default_backend`)."""
    if backend is not None:
        return backend
    from sglang.lang.global_config import global_config

    if global_config.default_backend is None:
        raise ValueError("no backend: pass backend=ESampRuntimeEndpoint(url) (or an EngineBackend), "
                         "or call esamp_sgl.lang.set_default_backend(...) first")
    return global_config.default_backend


def raise_child_errors(states: Any) -> None:
    """Raise the first error of these program states (e.g. fork children) with its cause, instead of
    the KeyError that reading a failed generation's variable would give."""
    for index, state in enumerate(getattr(states, "states", states)):
        error = state.error()
        if error is not None:
            raise RuntimeError(f"generation failed in program state {index}: {error}") from error


# -- CLI ---------------------------------------------------------------------------------------------
def add_backend_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("backend")
    group.add_argument("--url", help="an SGLang server started with --sampling-backend esamp "
                                     "(default: start an in-process sglang.Engine)")
    group.add_argument("--model", help="model folder for the in-process Engine (default: the prepared SmolLM2-135M)")


def add_sampling_args(parser: argparse.ArgumentParser, *, max_tokens: int) -> None:
    group = parser.add_argument_group("sampling")
    group.add_argument("--max-tokens", type=int, default=max_tokens)
    group.add_argument("--temperature", type=float, default=1.0)
    group.add_argument("--top-p", type=float, default=1.0)
    group.add_argument("--min-p", type=float, default=0.05)
    group.add_argument("--beta", type=float, default=None,
                       help=f"exploration strength, {FIELDS['beta'].accepts()} (default: the server's)")
    group.add_argument("--no-explore", action="store_true", help="stock sampling, for comparison")
    parser.add_argument("--json", action="store_true", help="print the whole result as JSON")


def sampling_from_args(args: argparse.Namespace) -> Sampling:
    return Sampling(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p, min_p=args.min_p,
                    explore=not args.no_explore, beta=None if args.no_explore else args.beta)


@contextlib.contextmanager
def backend_from_args(args: argparse.Namespace) -> Iterator[Any]:
    from esamp_sgl.lang import ESampRuntimeEndpoint, open_engine_backend

    if args.url:
        yield ESampRuntimeEndpoint(args.url)
        return
    print("[esamp-sgl] starting an in-process sglang.Engine (--url to use a running server) ...",
          file=sys.stderr, flush=True)
    with open_engine_backend(args.model) as backend:
        yield backend


def to_jsonable(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return {k: to_jsonable(v) for k, v in asdict(value).items()}
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    return value


def print_json(value: Any) -> None:
    print(json.dumps(to_jsonable(value), indent=1, default=str))
