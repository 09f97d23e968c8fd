"""Shared fixtures: the prepared real model, and one real SGLang CPU server per test session and backend."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from esamp_sgl.launch.models import prepare_model

SERVER_SEED = 1234


@pytest.fixture
def one_intra_op_thread():
    """Small-tensor tests: one intra-op thread avoids spin-waiting when the machine is busy; restored after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def model_path() -> Path:
    """The SmolLM2 HF folder (prepared by scripts/setup.sh; prepared here if missing), or $ESAMP_SGL_TEST_MODEL."""
    override = os.environ.get("ESAMP_SGL_TEST_MODEL")
    return Path(override) if override else prepare_model()


@pytest.fixture(scope="session")
def chat_prompt(model_path: Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)

    def render(question: str) -> str:
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
        )

    return render


# Sent, one at a time, to every session server right after start-up, before any test can touch its
# RNG: identical sequences on a `pytorch` and an `esamp` server must give identical tokens.
IDENTITY_PROBE = [
    {"temperature": 1.0},
    {"temperature": 0.8, "top_k": 20},
    {"temperature": 0.9, "top_p": 0.9},
    {"temperature": 1.0, "min_p": 0.1},
    {"temperature": 0.0},
    {"temperature": 0.7, "top_k": 50, "top_p": 0.95, "min_p": 0.05},
]
PROBE_PROMPT = "<|im_start|>user\nTell me about a city you like.<|im_end|>\n<|im_start|>assistant\n"


def _run_identity_probe(server) -> list[list[int]]:
    import requests

    outputs = []
    for params in IDENTITY_PROBE:
        body = {"text": PROBE_PROMPT, "sampling_params": {"max_new_tokens": 16, "ignore_eos": True, **params}}
        response = requests.post(server.url + "/generate", json=body, timeout=300)
        response.raise_for_status()
        outputs.append(response.json()["output_ids"])
    return outputs


def _server(model_path: Path, backend: str, tmp_path_factory, env: dict[str, str] | None = None):
    from esamp_sgl.launch.server import SGLangServer

    name = backend + "".join(f"-{v}" for v in (env or {}).values())
    log = tmp_path_factory.mktemp("server") / f"sglang-{name}.log"
    # Small prefill chunks: the warm-start tests see a prompt computed over several forwards.
    server = SGLangServer(model_path, sampling_backend=backend, log_path=log, env=env,
                          extra_args=["--random-seed", str(SERVER_SEED), "--chunked-prefill-size", "64"])
    server.start()
    try:
        server.identity_probe = _run_identity_probe(server)
    except Exception:
        server.stop()
        raise
    return server


@pytest.fixture(scope="session")
def stock_server(model_path: Path, tmp_path_factory):
    """A real SGLang server on CPU with the stock `pytorch` sampling backend."""
    server = _server(model_path, "pytorch", tmp_path_factory)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def esamp_server(model_path: Path, tmp_path_factory):
    """A real SGLang server on CPU started with the unmodified CLI and `--sampling-backend esamp`."""
    server = _server(model_path, "esamp", tmp_path_factory)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def paper_server(model_path: Path, tmp_path_factory):
    """An `esamp` server running the paper's profile (ESAMP_SGL_PROFILE=paper), training on the CPU's
    worker thread (what `auto` picks when torch leaves a core free, as in the overhead benchmark), so
    that its prediction runs beside the layers (runtime_patch/beside.py)."""
    server = _server(model_path, "esamp", tmp_path_factory,
                     env={"ESAMP_SGL_PROFILE": "paper", "ESAMP_SGL_TRAIN_MODE": "cpu_thread"})
    yield server
    server.stop()
