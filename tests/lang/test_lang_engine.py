"""The frontend over an in-process sglang.Engine (EngineBackend): forks, select, n>1, streaming."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


def test_engine_backend_runs_forks_select_n_and_streaming():
    done = subprocess.run([sys.executable, str(Path(__file__).with_name("engine_smoke.py"))], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-5000:]
    line = next(l for l in done.stdout.splitlines() if l.startswith("RESULT "))
    out = json.loads(line[len("RESULT "):])
    assert out["error"] is None and out["stream_error"] is None
    assert len(set(out["groups"])) == 1 and out["report_groups"] == out["groups"]
    # Every row of every member predicted: the forks' own token counts (a fork may stop at the chat
    # template's stop string before max_tokens; seen in CI as "20 of 24" and "23 of 24"), plus at most
    # one row per fork that SGLang computed but trimmed with its stop string.
    assert out["completion_tokens"] <= out["predictions"] <= out["completion_tokens"] + 3, (
        out["member_reports"], done.stderr[-3000:])
    assert out["answer"] in ("yes", "no")
    assert len(out["animals"]) == 2 and len(set(out["animal_groups"])) == 1 and None not in out["animal_groups"]
    assert out["stream_chunks"] >= 1 and out["stream_text"]
