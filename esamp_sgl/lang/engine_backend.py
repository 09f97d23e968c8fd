"""The in-process backend: SGLang programs over `sglang.Engine`, no separate server.

`EngineBackend` is `ESampRuntimeEndpoint` with the HTTP transport replaced by the Engine's tokenizer
manager: each `/generate` body becomes the same `GenerateReqInput` the HTTP server would build, so
`gen`, streaming, `select`/choices, forks and telemetry behave as with a server.

The Engine's asyncio loop runs in one background thread for the backend's lifetime. SGLang's own
`Engine.generate` drives that loop with `run_until_complete` from the calling thread, which fails
when fork children (one thread each) generate at once, and serialising them would also stop them
from sharing a Distiller (a group lives only while its requests overlap). While the backend is open,
do not call the Engine's blocking methods yourself; `close()` hands the loop back.

Use it through `open_engine_backend()` in scripts guarded by `if __name__ == "__main__":` (SGLang
spawns processes). Note that `Engine.shutdown()` kills every child process of the calling process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from typing import Any, Iterator

from sglang.lang.backend.base_backend import BaseBackend

from esamp_sgl.lang.endpoint import DEFAULT_TIMEOUT_S, ESampRuntimeEndpoint, resolve_chat_template


async def _first_then_drain(stream: Any) -> Any:
    """A non-streaming request yields once; run its generator to the end so it finishes normally
    (closing it early counts as a failure and sends the scheduler an abort)."""
    first = await stream.__anext__()
    async for _ in stream:
        pass
    return first


class EngineBackend(ESampRuntimeEndpoint):
    """A frontend backend over an already started `sglang.Engine` (not owned: close() does not shut it down)."""

    def __init__(self, engine: Any, *, chat_template: str | None = "auto", timeout: float = DEFAULT_TIMEOUT_S) -> None:
        BaseBackend.__init__(self)  # no HTTP: RuntimeEndpoint.__init__ would ask a server for its model info
        self.engine = engine
        self.timeout = timeout
        self.base_url = None
        self.api_key = None
        self.verify = None
        self.model_info = {"model_path": engine.tokenizer_manager.model_path}
        self.chat_template = resolve_chat_template(chat_template, self.model_info["model_path"])
        self.support_concate_and_append = False
        self._loop: asyncio.AbstractEventLoop = engine.loop
        self._thread = threading.Thread(target=self._run_loop, name="esamp-engine-loop", daemon=True)
        self._thread.start()

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def close(self) -> None:
        """Stop the loop thread (the Engine's blocking methods work again afterwards)."""
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)

    def _await(self, coroutine: Any) -> Any:
        if not self._thread.is_alive():
            coroutine.close()
            raise RuntimeError("EngineBackend is closed")
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(self.timeout)

    def _request(self, data: dict[str, Any]) -> Any:
        from sglang.srt.managers.io_struct import GenerateReqInput

        return self.engine.tokenizer_manager.generate_request(GenerateReqInput(**data), None)

    # -- transport ----------------------------------------------------------------------------------
    def _generate_http_request(self, s: Any, data: dict[str, Any]) -> Any:
        self._add_images(s, data)
        try:
            return self._await(_first_then_drain(self._request(data)))
        except ValueError as exc:  # what the HTTP server answers with 400 (e.g. a bad esamp_beta)
            raise RuntimeError(str(exc)) from exc

    def _stream_generate(self, s: Any, data: dict[str, Any]) -> Iterator[dict[str, Any]]:
        self._add_images(s, data)
        stream = self._request(data)
        try:
            while True:
                try:
                    yield self._await(stream.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            self._await(stream.aclose())

    def flush_cache(self) -> None:
        self._await(self.engine.tokenizer_manager.flush_cache())

    def get_server_info(self) -> dict[str, Any]:
        return {"model_path": self.model_info["model_path"], "in_process": True}


@contextlib.contextmanager
def open_engine_backend(model_path: str | os.PathLike | None = None, *, chat_template: str | None = "auto",
                        **engine_kwargs: Any) -> Iterator[EngineBackend]:
    """Start an in-process `sglang.Engine` with `--sampling-backend esamp` (CPU flags on a machine
    without CUDA) and yield its frontend backend; the Engine is shut down on exit.

    model_path defaults to the prepared SmolLM2-135M-Instruct folder (`esamp_sgl.launch.models`).
    """
    from esamp_sgl.launch.server import open_engine

    if model_path is None:
        from esamp_sgl.launch.models import prepare_model

        model_path = prepare_model()
    options = {"sampling_backend": "esamp", **engine_kwargs}
    with open_engine(model_path, **options) as engine:
        backend = EngineBackend(engine, chat_template=chat_template)
        try:
            yield backend
        finally:
            backend.close()
