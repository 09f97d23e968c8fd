"""Every example runs as a script against the real CPU server (and one also with the in-process Engine)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run_example(name: str, *args: str, timeout: float = 300) -> tuple[str, float]:
    started = time.monotonic()
    done = subprocess.run([sys.executable, str(EXAMPLES / name), *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    elapsed = time.monotonic() - started
    assert done.returncode == 0, f"{name} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return done.stdout, elapsed


def test_fork8_dsl(esamp_server):
    out, _ = run_example("fork8_dsl.py", "--url", esamp_server.url, "--max-tokens", "12")
    assert out.count("\n[") + out.startswith("[") == 8
    assert "(shared by all 8 children)" in out and "steps_trained=" in out


def test_best_of_n_math(esamp_server):
    out, _ = run_example("best_of_n_math.py", "--url", esamp_server.url, "--n", "4", "--max-tokens", "12")
    assert "correct; best #" in out and "group sgl-" in out


def test_openai_n8(esamp_server):
    out, _ = run_example("openai_n8.py", "--url", esamp_server.url, "--max-tokens", "12")
    assert "8 choices" in out and "ESamp groups: ['req-" in out and "steps_trained=" in out


def test_openai_n8_with_plain_requests(esamp_server):
    out, _ = run_example("openai_n8.py", "--url", esamp_server.url, "--n", "2", "--max-tokens", "8",
                         "--client", "requests")
    assert "client: requests; 2 choices" in out


def test_agentic_search(esamp_server):
    out, _ = run_example("agentic_search.py", "--url", esamp_server.url, "--width", "2", "--depth", "2",
                         "--max-tokens", "12")
    assert "Distiller groups" in out and "best (" in out


def test_fork8_dsl_in_process_engine_under_two_minutes():
    """No server: the script starts sglang.Engine itself (the path for scripts without a server)."""
    out, elapsed = run_example("fork8_dsl.py", "--n", "4", "--max-tokens", "12", timeout=600)
    assert "(shared by all 4 children)" in out and "steps_trained=" in out
    print(f"in-process example: {elapsed:.0f} s")
    assert elapsed < float(os.environ.get("ESAMP_SGL_EXAMPLE_BUDGET_S", "180")), f"took {elapsed:.0f} s"


def test_engine_generate_without_dsl():
    """No server, no DSL: sglang.Engine(..., sampling_backend="esamp").generate with custom_params."""
    out, elapsed = run_example("engine_generate.py", "--n", "3", "--max-tokens", "10", timeout=600)
    assert out.count("\n[") + out.startswith("[") == 3
    assert "3 samples; ESamp groups: ['req-" in out and "steps_trained=" in out
    print(f"engine_generate example: {elapsed:.0f} s")
