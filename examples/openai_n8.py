"""The OpenAI-compatible API with exploration: one chat completion, n=8, `custom_params` in the body.

    python examples/openai_n8.py --url http://127.0.0.1:30000   # a server with --sampling-backend esamp
    python examples/openai_n8.py                                # starts such a server for the run

With the `openai` package the ESamp options go in `extra_body={"custom_params": {...}}`; without it
the same JSON is POSTed to /v1/chat/completions with `requests`. The eight choices share one ESamp
group; each choice's telemetry is in the response's `metadata.esamp` list.
"""

from __future__ import annotations

import argparse
import contextlib
from typing import Any, Iterator, Sequence

from esamp_sgl.core.telemetry import group_report

QUESTION = "Invent a name for a new board game. Reply with the name only."


def chat_with_openai(url: str, n: int, max_tokens: int, beta: float) -> tuple[list[str], list[Any]]:
    import openai

    client = openai.OpenAI(base_url=url + "/v1", api_key="none")
    response = client.chat.completions.create(
        model="default", messages=[{"role": "user", "content": QUESTION}], n=n, max_tokens=max_tokens,
        temperature=1.0, extra_body={"min_p": 0.05, "custom_params": {"esamp": True, "esamp_beta": beta}},
    )
    metadata = getattr(response, "metadata", None) or (response.model_extra or {}).get("metadata") or {}
    return [c.message.content for c in response.choices], list(metadata.get("esamp") or [])


def chat_with_requests(url: str, n: int, max_tokens: int, beta: float) -> tuple[list[str], list[Any]]:
    import requests

    body = {"model": "default", "messages": [{"role": "user", "content": QUESTION}], "n": n,
            "max_tokens": max_tokens, "temperature": 1.0, "min_p": 0.05,
            "custom_params": {"esamp": True, "esamp_beta": beta}}
    response = requests.post(url + "/v1/chat/completions", json=body, timeout=600)
    response.raise_for_status()
    data = response.json()
    return [c["message"]["content"] for c in data["choices"]], list((data.get("metadata") or {}).get("esamp") or [])


@contextlib.contextmanager
def server_url(url: str | None, model: str | None) -> Iterator[str]:
    from esamp_sgl.launch.models import prepare_model
    from esamp_sgl.launch.server import server_or_url

    def announce(_server: object) -> None:
        print("[esamp-sgl] starting an SGLang server with --sampling-backend esamp (--url to use a running one) ...")

    with server_or_url(url, lambda: model or prepare_model(), before_start=announce) as (running, _):
        yield running.rstrip("/")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url")
    parser.add_argument("--model")
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--beta", type=float, default=1.0)
    parser.add_argument("--client", choices=("auto", "openai", "requests"), default="auto")
    args = parser.parse_args(argv)
    client = args.client
    if client == "auto":
        try:
            import openai  # noqa: F401

            client = "openai"
        except ImportError:
            client = "requests"
    chat = chat_with_openai if client == "openai" else chat_with_requests
    with server_url(args.url, args.model) as url:
        texts, telemetry = chat(url, args.n, args.max_tokens, args.beta)
    for i, text in enumerate(texts):
        print(f"[{i}] {text.strip()!r}")
    groups = {t["group"] for t in telemetry if t}
    print(f"client: {client}; {len(texts)} choices; ESamp groups: {sorted(groups)}")
    last = group_report(telemetry)
    if last:
        print(f"Distiller: steps_trained={last['steps_trained']} predictions={last['predictions']} "
              f"tokens_reweighted={last['tokens_reweighted']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
