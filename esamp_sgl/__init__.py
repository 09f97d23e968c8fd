"""esamp-sgl: Exploratory Sampling for SGLang.

This package is imported by a `.pth` hook at every interpreter start (see `esamp_sgl.cpu_compat`),
so it must stay import-light: no torch, no sglang here.
"""

__version__ = "0.1.0"
