"""One real esamp server with SGLang's own parallelism (`--dp-size` / `--tp-size`), for a test module."""

from __future__ import annotations

from typing import Iterator

import pytest
import torch

from esamp_sgl.launch.parallel import parallel_args, parallel_env
from esamp_sgl.launch.server import SGLangServer, cuda_available


def parallel_server(model_path, tmp_path_factory, *, dp_size: int = 1, tp_size: int = 1) -> Iterator[SGLangServer]:
    """Yields a running server; on CUDA, skips unless there are dp_size x tp_size GPUs."""
    on_cpu = not cuda_available()
    needed = dp_size * tp_size
    if not on_cpu and torch.cuda.device_count() < needed:
        pytest.skip(f"--dp-size {dp_size} --tp-size {tp_size} on CUDA needs {needed} GPUs")
    log = tmp_path_factory.mktemp("server") / f"sglang-esamp-dp{dp_size}-tp{tp_size}.log"
    server = SGLangServer(model_path, sampling_backend="esamp", log_path=log, startup_timeout=420,
                         env=parallel_env(dp_size=dp_size, tp_size=tp_size, on_cpu=on_cpu, esamp=True),
                         extra_args=[*parallel_args(dp_size=dp_size, tp_size=tp_size, on_cpu=on_cpu),
                                     "--random-seed", "1234"])
    with server:
        yield server
