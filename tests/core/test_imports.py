"""The engine-agnostic core never imports SGLang, and imports FlashInfer only lazily."""

import ast
from pathlib import Path

import esamp_sgl

ROOT = Path(esamp_sgl.__file__).parent
CORE = ["config", "distiller", "groups", "trainer", "candidates", "reweight", "telemetry",
        "warm_start", "explorer", "step", "bench/core"]


def _imports(tree: ast.AST) -> list[tuple[str, bool]]:
    """(top-level module name, imported at module level?) for every import statement."""
    out = []
    module_level = {id(n) for n in ast.iter_child_nodes(tree)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name.split(".")[0], id(node) in module_level) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.append((node.module.split(".")[0], id(node) in module_level))
    return out


def test_core_never_imports_sglang_and_flashinfer_only_lazily():
    for name in CORE:
        tree = ast.parse((ROOT / f"{name}.py").read_text())
        for module, top in _imports(tree):
            assert module not in ("sglang", "sgl_kernel"), (name, module)
            if module == "flashinfer":
                assert not top, f"{name} imports flashinfer at module level"
    assert "flashinfer" in {m for n in ("candidates", "reweight")
                            for m, _ in _imports(ast.parse((ROOT / f"{n}.py").read_text()))}
