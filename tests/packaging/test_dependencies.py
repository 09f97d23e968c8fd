"""The dependency split in pyproject.toml: the core dependencies are what the plugin imports while serving.

A module-level import of a package that is only in the `eval` extra would make `pip install esamp-sgl`
(without extras) fail at `--sampling-backend esamp` or `esamp-sgl --version`; this reads the imports
instead of installing anything.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# distribution name -> import name, where they differ
IMPORT_NAMES = {"pyyaml": "yaml"}
# provided by the environment the plugin runs in (SGLang itself), or the project's own packages
ENVIRONMENT = {"sglang", "esamp_sgl", "runtime_patch", "programs", "flashinfer", "sgl_kernel"}


def requirement_names(requirements: list[str]) -> set[str]:
    names = set()
    for requirement in requirements:
        name = re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower().replace("-", "_")
        names.add(IMPORT_NAMES.get(name, name))
    return names


def imports(path: Path, module_level_only: bool) -> set[str]:
    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    out = set()
    for node in ast.walk(tree):
        if module_level_only and id(node) not in top:
            continue
        if isinstance(node, ast.Import):
            out |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
    return out


def project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def test_the_plugin_and_the_cli_import_only_core_dependencies():
    allowed = requirement_names(project()["dependencies"]) | ENVIRONMENT | set(sys.stdlib_module_names)
    # everything the plugin can reach while serving, lazily or not
    for path in sorted((REPO / "runtime_patch").rglob("*.py")):
        assert imports(path, module_level_only=False) <= allowed, (path.name, imports(path, False) - allowed)
    # the core, the CLI and its helpers, the DSL: at module level (the demo/eval/models import the rest lazily)
    paths = [*(REPO / "esamp_sgl").glob("*.py"),
             *(path for sub in ("core", "launch", "lang", "eval") for path in (REPO / "esamp_sgl" / sub).glob("*.py"))]
    for path in sorted(paths):
        extra = imports(path, module_level_only=True) - allowed
        assert not extra, f"{path.relative_to(REPO)} imports {sorted(extra)} at module level; import lazily"


def test_eval_extra_has_what_the_evaluation_imports():
    optional = project()["optional-dependencies"]
    eval_names = requirement_names(optional["eval"])
    assert {"matplotlib", "scipy", "transformers", "gguf", "safetensors", "accelerate", "tqdm"} <= eval_names
    used = set()
    for path in (REPO / "esamp_sgl").rglob("*.py"):
        used |= imports(path, module_level_only=False)
    core = requirement_names(project()["dependencies"])
    third_party = used - set(sys.stdlib_module_names) - ENVIRONMENT - core - {"tests", "openai"}
    assert third_party <= eval_names | {"sentence_transformers"}, sorted(third_party - eval_names)
    assert project()["requires-python"] == ">=3.11"
