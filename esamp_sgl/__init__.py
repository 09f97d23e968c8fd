"""esamp-sgl: Exploratory Sampling for SGLang.

Subpackages, in layers (tests/core/test_layers.py): `core` (torch only), then `runtime_patch` (the
SGLang plugin, a sibling top-level package), then `launch`, `lang`, `eval`, `bench`, the CLI and the
demo. Importing a subpackage runs this file first, so it stays import-light: no torch, no sglang here.
"""

# The one version string: pyproject.toml reads it ([tool.hatch.version]); `esamp-sgl --version` prints it.
__version__ = "0.2.0"
