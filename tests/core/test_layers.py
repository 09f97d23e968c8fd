"""Layers are enforced by package, from the source tree (no hand-kept module list).

* `esamp_sgl.core` is torch only: no SGLang, no `sgl_kernel`, nothing from `runtime_patch`, `programs`
  or another esamp_sgl package; FlashInfer only lazily (inside a function, so a CPU machine imports the
  core without it).
* The packages stack: `esamp_sgl.core` < `runtime_patch` < the rest of `esamp_sgl` < `programs`; no
  import points up the stack.
* The module import graph of esamp_sgl, runtime_patch and programs (every import statement, lazy
  function-level ones included) has no cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("esamp_sgl", "runtime_patch", "programs")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in sorted((REPO / package).rglob("*.py"))}


def imports(path: Path, name: str) -> list[tuple[str, bool]]:
    """(absolute imported name, at module level?) for every import statement in the file; `from a import
    b` yields `a.b` too, since b may be a submodule."""
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, id(node) in top) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            out.append((base, id(node) in top))
            out += [(f"{base}.{a.name}", id(node) in top) for a in node.names]
    return out


def graph() -> dict[str, set[str]]:
    """module -> project modules it imports; importing `a.b.c` also runs `a` and `a.b`."""
    modules = project_modules()
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for target, _ in imports(path, name):
            parts = target.split(".")
            for i in range(1, len(parts) + 1):
                prefix = ".".join(parts[:i])
                if prefix in modules and prefix != name and not name.startswith(prefix + "."):
                    edges[name].add(prefix)
    return edges


def layer(module: str) -> int:
    # esamp_sgl/__init__.py holds only the version (the .pth hook's interpreters import it): a leaf
    if module in ("esamp_sgl", "esamp_sgl.__version__") or module.startswith("esamp_sgl.core"):
        return 0
    if module.split(".")[0] == "runtime_patch":
        return 1
    if module.split(".")[0] == "esamp_sgl":
        return 2
    return 3  # programs


def test_core_imports_only_core_and_torch():
    # No flashinfer either: its candidate path was removed (esamp_sgl/core/config.py BACKENDS).
    core = {m: p for m, p in project_modules().items() if layer(m) == 0}
    assert {"esamp_sgl.core.config", "esamp_sgl.core.explorer", "esamp_sgl.core.step"} <= set(core)
    for name, path in core.items():
        for target, _top in imports(path, name):
            root = target.split(".")[0]
            assert root not in ("sglang", "sgl_kernel", "flashinfer", "runtime_patch", "programs"), (name, target)
            if root == "esamp_sgl":
                assert layer(target) == 0, f"{name} imports {target}, which is not core"


def test_packages_stack_as_layers():
    upward = [(a, b) for a, targets in graph().items() for b in targets if layer(b) > layer(a)]
    assert not upward, f"imports up the stack core < runtime_patch < esamp_sgl < programs: {upward}"


def test_module_import_graph_has_no_cycle():
    edges = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)


def test_no_function_on_the_decode_path_is_named_like_a_module():
    """One meaning per name: in the core and the plugin (the decode step's path), no function or method
    shares its name with a module of either package (`step.reweight` beside `reweight.py` did).
    Properties are attributes, not calls, and are exempt."""
    dirs = (REPO / "esamp_sgl" / "core", REPO / "runtime_patch")
    modules = {p.stem for d in dirs for p in d.glob("*.py") if p.stem != "__init__"}
    clashes = []
    for d in dirs:
        for path in sorted(d.glob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or node.name not in modules:
                    continue
                if any(isinstance(dec, ast.Name) and dec.id == "property" for dec in node.decorator_list):
                    continue
                clashes.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}")
    assert not clashes, clashes
