"""A recording backend: the real ESampRuntimeEndpoint with its transport replaced, so the frontend's
requests can be inspected without a server."""

from __future__ import annotations

import threading
from typing import Any, Iterator

import pytest

from tests.frontend_cleanup import end_leftover_executors  # noqa: F401  (autouse)


@pytest.fixture
def recording_backend():
    from sglang.lang.backend.base_backend import BaseBackend
    from sglang.lang.chat_template import get_chat_template

    from esamp_sgl.lang import ESampRuntimeEndpoint

    class RecordingEndpoint(ESampRuntimeEndpoint):
        def __init__(self) -> None:
            BaseBackend.__init__(self)
            self.chat_template = get_chat_template("chatml")
            self.support_concate_and_append = False
            self.bodies: list[dict[str, Any]] = []
            self._lock = threading.Lock()

        def _record(self, data: dict[str, Any]) -> None:
            with self._lock:
                self.bodies.append(data)

        def _generate_http_request(self, s: Any, data: dict[str, Any]) -> Any:
            self._record(data)
            n = data.get("sampling_params", {}).get("n") or 1
            outs = [{"text": f"out{i}", "meta_info": {"completion_tokens": 1}} for i in range(n)]
            return outs if n > 1 else outs[0]

        def _stream_generate(self, s: Any, data: dict[str, Any]) -> Iterator[dict[str, Any]]:
            self._record(data)
            yield {"text": "stre", "meta_info": {}}
            yield {"text": "streamed", "meta_info": {}}

        @property
        def generations(self) -> list[dict[str, Any]]:
            """Bodies of real generations (not the max_new_tokens=0 prefix commits fork sends)."""
            return [b for b in self.bodies if b["sampling_params"].get("max_new_tokens") != 0]

        def custom_params(self) -> list[dict[str, Any] | None]:
            return [b["sampling_params"].get("custom_params") for b in self.generations]

    return RecordingEndpoint()
