"""Start SGLang the way this machine needs: a server subprocess or the in-process `sglang.Engine`.

On a machine without CUDA the helpers add what SGLang 0.5.23 needs on CPU (measured on this project's
CPU machines; docs/install.md has the CPU profile): `SGLANG_USE_CPU_ENGINE=1`, `--device cpu`,
`--attention-backend torch_native` and a small `--mem-fraction-static` (the default would reserve
~15 GB of KV cache). With CUDA, SGLang's own defaults are used. The server always binds to loopback on
a free port and is always stopped (process group) when the context exits.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import requests

# On CPU, SGLang sizes the KV cache from machine-wide free memory measured around the weight load:
# with 0.05 a server that starts while another process allocates (a second server loading) fails its
# check "Loaded weights leave no GPU memory for the KV cache". So ask for a safe fraction and cap the
# KV cache by tokens instead (32768 tokens = 0.75 GB for SmolLM2-135M), as parallel.py does per rank.
# These are the default model's; a model prepared from the registry brings its own
# (`esamp_sgl.launch.registry.MODELS[...].cpu`, looked up from the folder's marker).
CPU_MEM_FRACTION = 0.2
CPU_MAX_TOTAL_TOKENS = 32768


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _cpu_serving(model_path: str | os.PathLike | None) -> tuple[float, int]:
    from esamp_sgl.launch.registry import cpu_serving_for

    flags = cpu_serving_for(model_path)
    return flags.mem_fraction_static, flags.max_total_tokens


# --sleep-on-idle: an idle scheduler otherwise busy-polls its sockets and takes a whole core, which
# on a 2-core machine halves the throughput of everything else (a second server, the client, tests).
def cpu_server_args(model_path: str | os.PathLike | None = None) -> list[str]:
    """CPU flags for a server on `model_path` (its registry entry's KV fraction and token cap)."""
    fraction, tokens = _cpu_serving(model_path)
    return ["--device", "cpu", "--attention-backend", "torch_native", "--mem-fraction-static", str(fraction),
            "--max-total-tokens", str(tokens), "--sleep-on-idle"]


def cpu_engine_kwargs(model_path: str | os.PathLike | None = None) -> dict[str, Any]:
    fraction, tokens = _cpu_serving(model_path)
    return {"device": "cpu", "attention_backend": "torch_native", "mem_fraction_static": fraction,
            "max_total_tokens": tokens, "sleep_on_idle": True}


def cpu_threads_env(env: dict[str, str], model_path: str | os.PathLike | None) -> dict[str, str]:
    """`env` with OMP_NUM_THREADS set to the model's measured default, unless the caller set it."""
    from esamp_sgl.launch.registry import cpu_serving_for

    threads = cpu_serving_for(model_path).omp_threads
    if threads is not None and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def server_env(base: dict[str, str] | None = None, on_cpu: bool | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    if on_cpu if on_cpu is not None else not cuda_available():
        env["SGLANG_USE_CPU_ENGINE"] = "1"
    return env


class ServerError(RuntimeError):
    pass


class SGLangServer:
    """`python -m sglang.launch_server` as a context manager.

    >>> with SGLangServer(model_path, sampling_backend="esamp") as server:
    ...     requests.post(server.url + "/generate", json={...})
    """

    def __init__(
        self,
        model_path: str | os.PathLike,
        *,
        sampling_backend: str | None = None,
        extra_args: Sequence[str] = (),
        host: str = "127.0.0.1",
        port: int | None = None,
        env: dict[str, str] | None = None,
        startup_timeout: float = 300.0,
        log_path: str | os.PathLike | None = None,
        on_cpu: bool | None = None,
        python: str | os.PathLike | None = None,
        cwd: str | os.PathLike | None = None,
    ) -> None:
        """`python`: the interpreter that runs the server (default: this one, `sys.executable`), e.g.
        another virtualenv's; `cwd`: its working directory (default: this process's)."""
        self.model_path = str(model_path)
        self.host = host
        self.port = port or free_port(host)
        self.on_cpu = (not cuda_available()) if on_cpu is None else on_cpu
        self.env = server_env(env, self.on_cpu)
        if self.on_cpu:
            cpu_threads_env(self.env, self.model_path)
        self.startup_timeout = startup_timeout
        self.log_path = Path(log_path) if log_path else Path(tempfile.mkstemp(prefix="sglang-server-", suffix=".log")[1])
        self.args = [
            str(python or sys.executable), "-m", "sglang.launch_server",
            "--model-path", self.model_path, "--host", host, "--port", str(self.port),
            *(cpu_server_args(self.model_path) if self.on_cpu else []),
            *(["--sampling-backend", sampling_backend] if sampling_backend else []),
            *extra_args,
        ]
        self.cwd = cwd
        self.process: subprocess.Popen | None = None
        self.startup_seconds: float | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def start(self) -> "SGLangServer":
        started = time.monotonic()
        log = self.log_path.open("wb")
        # A new session, so stop() can signal the launcher and its scheduler/detokenizer children at once.
        self.process = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.cwd,
                                        start_new_session=True)
        log.close()
        deadline = started + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(f"SGLang server exited with code {self.process.returncode} during start-up:\n{self.log_tail()}")
            try:
                if requests.get(self.url + "/health_generate", timeout=30).status_code == 200:
                    self.startup_seconds = time.monotonic() - started
                    return self
            except requests.RequestException:
                pass
            time.sleep(1.0)
        self.stop()
        raise ServerError(f"SGLang server not healthy after {self.startup_timeout:.0f} s:\n{self.log_tail()}")

    def stop(self, timeout: float = 30.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def __enter__(self) -> "SGLangServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def server_or_url(url: str | None, model_path: str | os.PathLike | Callable[[], str | os.PathLike], *,
                  before_start: Callable[[SGLangServer], None] | None = None,
                  **server_kwargs: Any) -> Iterator[tuple[str, SGLangServer | None]]:
    """(url, None) for a running server the user named (`--url`), else a fresh
    `--sampling-backend esamp` server for `model_path` (a path, or a callable that resolves one only when
    a server must start), stopped on exit: (its url, it). `before_start(server)` runs before it starts
    (e.g. to announce it, or to stop it on SIGTERM while it starts)."""
    if url:
        yield url, None
        return
    model = model_path() if callable(model_path) else model_path
    server = SGLangServer(model, sampling_backend="esamp", **server_kwargs)
    if before_start is not None:
        before_start(server)
    with server:
        yield server.url, server


@contextlib.contextmanager
def open_engine(model_path: str | os.PathLike, **kwargs: Any) -> Iterator[Any]:
    """The offline `sglang.Engine` with this machine's flags; shut down on exit.

    On CPU, `SGLANG_USE_CPU_ENGINE=1` must be set before sglang is first imported, which this does.
    Scripts using it need the usual `if __name__ == "__main__":` guard (SGLang spawns processes).
    `engine.shutdown()` kills every child process of this one, multiprocessing's resource tracker
    included: a named semaphore created in this process meanwhile (e.g. tqdm's default lock) then
    prints a resource_tracker KeyError at exit (see `esamp_sgl.demo.run_demo`).
    """
    on_cpu = not cuda_available()
    if on_cpu:
        os.environ["SGLANG_USE_CPU_ENGINE"] = "1"
        cpu_threads_env(os.environ, model_path)  # type: ignore[arg-type]  # before torch starts its pool
    import sglang

    options = {**(cpu_engine_kwargs(model_path) if on_cpu else {}), "log_level": "warning", **kwargs}
    engine = sglang.Engine(model_path=str(model_path), **options)
    try:
        yield engine
    finally:
        engine.shutdown()
