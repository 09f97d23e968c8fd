"""A pure-torch `sgl_kernel` for CPU serving when no `sgl_kernel` is installed.

SGLang 0.5.23's CPU engine (`SGLANG_USE_CPU_ENGINE=1`) imports a few `*_cpu` helpers from `sgl_kernel`
at module import time, but the only `sglang-kernel` wheel on PyPI is a CUDA build (the CPU profile in
scripts/setup.sh does not install it). SGLang's plugin entry points load too late to help (the engine
module imports `sgl_kernel` before `load_plugins()` runs), so the package installs
`esamp_sgl_cpu_compat.pth` into site-packages. That file calls `install()` at interpreter start-up,
which puts `SglKernelFinder` first on `sys.meta_path`. The finder does nothing until something imports
`sgl_kernel`; then it supplies `runtime_patch.cpu_compat.sgl_kernel_standin` only if both hold:

* the process serves on CPU: `SGLANG_USE_CPU_ENGINE=1`, the switch SGLang itself reads for its CPU
  engine (`sglang.srt.utils.is_cpu()`), which is also the only mode in which SGLang imports the
  `*_cpu` helpers. (Not "no CUDA device visible": finding that out would initialise CUDA in every
  process that imports `sgl_kernel`, before SGLang forks.) `esamp_sgl.launch.server` sets it on machines
  without CUDA.
* no other finder can locate an `sgl_kernel` package. An installed `sgl_kernel` is always imported
  as is: if it fails (e.g. the CUDA wheel without `libcuda.so.1`), its own error surfaces instead
  of being hidden behind the stand-in.

`ESAMP_SGL_NO_KERNEL_STANDIN=1` disables the finder entirely.

This module is imported in every Python process of the environment: keep it free of heavy imports.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import os
import sys
import types

STANDIN_MODULE = "runtime_patch.cpu_compat.sgl_kernel_standin"
# The SGLang switch the finder mirrors (cpu_serving): with it SGLang imports `sgl_kernel.*_cpu` ops
# (e.g. sglang.srt.mem_cache.allocation's assign_req_to_token_pool_cpu), which the stand-in supplies.
TOUCH_POINTS: dict[str, str] = {
    "sglang.srt.utils.common.is_cpu": "sgl_kernel stand-in: SGLANG_USE_CPU_ENGINE=1 is SGLang's CPU-engine switch",
}
_TARGET = "sgl_kernel"
CPU_ENGINE_ENV = "SGLANG_USE_CPU_ENGINE"


class _ExistingModuleLoader(importlib.abc.Loader):
    """Hands the import system a module object that was already built."""

    def __init__(self, module: types.ModuleType) -> None:
        self._module = module

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        return self._module

    def exec_module(self, module: types.ModuleType) -> None:
        return None


class SglKernelFinder(importlib.abc.MetaPathFinder):
    """Resolve `import sgl_kernel` to the stand-in on a CPU server that has no `sgl_kernel` installed."""

    def __init__(self) -> None:
        self.supplied_standin = False

    def find_spec(self, fullname, path=None, target=None):  # type: ignore[override]
        if fullname != _TARGET or not cpu_serving():
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            try:
                spec = finder.find_spec(fullname, path)
            except Exception:  # a third-party finder's problem is not an answer either way
                continue
            if spec is not None:
                return None  # installed: the import system loads it, and its errors propagate
        module = importlib.import_module(STANDIN_MODULE)
        self.supplied_standin = True
        return importlib.machinery.ModuleSpec(_TARGET, _ExistingModuleLoader(module), origin=module.__file__)


def cpu_serving() -> bool:
    """SGLang's own CPU-engine switch (read at import of `sgl_kernel`, not at interpreter start)."""
    return os.environ.get(CPU_ENGINE_ENV, "0") == "1"


def install() -> None:
    """Put the finder first on `sys.meta_path` (idempotent)."""
    if os.environ.get("ESAMP_SGL_NO_KERNEL_STANDIN") == "1":
        return
    if any(isinstance(f, SglKernelFinder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, SglKernelFinder())


def standin_active() -> bool:
    """True when `sgl_kernel` in this process is the esamp-sgl stand-in."""
    module = sys.modules.get(_TARGET)
    return module is not None and getattr(module, "IS_ESAMP_STANDIN", False)
