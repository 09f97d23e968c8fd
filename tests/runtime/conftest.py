"""Contract tests run SGLang's real classes in this process, with the esamp plugin's hooks applied."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("SGLANG_USE_CPU_ENGINE", "1")  # before sglang is imported: this is a CPU process


@pytest.fixture(scope="session")
def sglang_with_plugin():
    """Load the plugin the way SGLang does (entry point + HookRegistry) and publish CPU server args."""
    from sglang.srt.plugins import load_plugins
    from sglang.srt.runtime_context import publish
    from sglang.srt.server_args import prepare_server_args

    load_plugins()
    args = prepare_server_args(["--model-path", "dummy", "--device", "cpu", "--sampling-backend", "esamp"])
    publish(args, role="scheduler")
    return args
