"""A pure-torch `sgl_kernel` for CPU-only machines, used only when the real one cannot be imported.

SGLang 0.5.23's CPU engine (`SGLANG_USE_CPU_ENGINE=1`) imports a few `*_cpu` helpers from `sgl_kernel`
at module import time, but the only `sglang-kernel` wheel on PyPI is a CUDA build that fails to load
without `libcuda.so.1`. SGLang's plugin entry points load too late to help (the engine module imports
`sgl_kernel` before `load_plugins()` runs), so the package installs `esamp_sgl_cpu_compat.pth` into
site-packages. That file calls `install()` at interpreter start-up, which puts `SglKernelFinder`
first on `sys.meta_path`. The finder does nothing until something imports `sgl_kernel`; then it
tries the real package once and falls back to `esamp_sgl.cpu_compat.sgl_kernel_standin` only if that
import raises. Set `ESAMP_SGL_NO_KERNEL_STANDIN=1` to disable the fallback entirely.

This module is imported in every Python process of the environment: keep it free of heavy imports.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import os
import sys
import types

STANDIN_MODULE = "esamp_sgl.cpu_compat.sgl_kernel_standin"
_TARGET = "sgl_kernel"


class _ExistingModuleLoader(importlib.abc.Loader):
    """Hands the import system a module object that was already built."""

    def __init__(self, module: types.ModuleType) -> None:
        self._module = module

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        return self._module

    def exec_module(self, module: types.ModuleType) -> None:
        return None


class SglKernelFinder(importlib.abc.MetaPathFinder):
    """Resolve `import sgl_kernel` to the real package, or to the stand-in if the real one fails."""

    def __init__(self) -> None:
        self._probing = False
        self.real_import_error: BaseException | None = None

    def find_spec(self, fullname, path=None, target=None):  # type: ignore[override]
        if fullname != _TARGET or self._probing:
            return None
        self._probing = True
        try:
            module = importlib.import_module(_TARGET)  # the real package, via the other finders
        except (ImportError, OSError) as exc:
            self.real_import_error = exc
            for name in [n for n in sys.modules if n == _TARGET or n.startswith(_TARGET + ".")]:
                del sys.modules[name]  # drop half-initialised pieces of the broken real package
            module = importlib.import_module(STANDIN_MODULE)
            module.REAL_IMPORT_ERROR = repr(exc)
        finally:
            self._probing = False
        return importlib.machinery.ModuleSpec(_TARGET, _ExistingModuleLoader(module), origin=module.__file__)


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
