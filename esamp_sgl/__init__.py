"""esamp-sgl: Exploratory Sampling for SGLang.

This package is imported by a `.pth` hook at every interpreter start (see `runtime_patch.cpu_compat`),
so it must stay import-light: no torch, no sglang here.
"""

# The one version string: pyproject.toml reads it ([tool.hatch.version]); `esamp-sgl --version` prints it.
__version__ = "0.2.0"
