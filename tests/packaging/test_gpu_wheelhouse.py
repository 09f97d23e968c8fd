"""The GPU check's wheelhouse (scripts/build_wheelhouse.sh) and its time budget (benchmarks/gpu_check.sh).

The lent GPU machine has Python 3.12 and its own torch, no package index, and carries at most 64 MiB of
ignored files; one command may run 10 minutes. So the wheelhouse must resolve offline for CPython 3.12 on
manylinux x86-64 with every dependency inside it, stay under 64 MiB, and hold whatever the GPU check
imports; and the stages' time limits must add up to the 8 minutes the check is planned for.

The wheelhouse is built into tmp_path by the script (needs a package index, as CI has), or taken from
$ESAMP_SGL_WHEELHOUSE when that names a prebuilt one.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

REPO = Path(__file__).resolve().parents[2]
REQUIREMENTS = REPO / "benchmarks" / "gpu_requirements.txt"
GPU_CHECK = REPO / "benchmarks" / "gpu_check.sh"
MAX_BYTES = 64 * 1024 * 1024  # the device tool carries at most 64 MiB of ignored files
PLAN_SECONDS = 8 * 60  # the check's plan; the device tool's hard limit per command is 600 s
COMMAND_LIMIT_SECONDS = 600
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"]
# The machine's own packages: never in the wheelhouse.
MACHINE = {"torch"}


def pins() -> dict[str, str]:
    """{canonical name: version} of benchmarks/gpu_requirements.txt (every line NAME==VERSION)."""
    out = {}
    for line in REQUIREMENTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            spec = list(req.specifier)
            assert len(spec) == 1 and spec[0].operator == "==", f"not pinned: {line}"
            out[canonicalize_name(req.name)] = spec[0].version
    return out


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory) -> Path:
    prebuilt = os.environ.get("ESAMP_SGL_WHEELHOUSE")
    if prebuilt:
        return Path(prebuilt)
    dest = tmp_path_factory.mktemp("gpu") / "wheelhouse"
    done = subprocess.run(["bash", str(REPO / "scripts" / "build_wheelhouse.sh"), str(dest)],
                          env={**os.environ, "PYTHON": sys.executable}, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return dest


def wheels(wheelhouse: Path) -> dict[str, Path]:
    out = {}
    for path in sorted(wheelhouse.glob("*.whl")):
        name = parse_wheel_filename(path.name)[0]
        assert name not in out, f"two wheels of {name}"
        out[name] = path
    return out


def metadata(wheel: Path):
    with zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA"))
        return Parser().parsestr(z.read(name).decode())


def test_wheelhouse_holds_exactly_the_pins_under_64_mib(wheelhouse):
    found = wheels(wheelhouse)
    assert {n: str(parse_wheel_filename(p.name)[1]) for n, p in found.items()} == pins()
    assert not MACHINE & set(found), "the machine's own torch must not be shadowed"
    total = sum(p.stat().st_size for p in found.values())
    assert total < MAX_BYTES, f"{total / 2**20:.1f} MiB"


def test_wheelhouse_resolves_offline_for_python_312_with_every_dependency(wheelhouse, tmp_path):
    """pip's own resolver, no index, no --no-deps: every requirement and its dependencies come from
    the wheelhouse."""
    report = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "pip", "install", "--isolated", "--disable-pip-version-check", "--dry-run",
           "--no-index", "--find-links", str(wheelhouse), "--only-binary=:all:",
           "--python-version", "3.12", "--implementation", "cp",
           *(arg for platform in PLATFORMS for arg in ("--platform", platform)),
           "--target", str(tmp_path / "target"), "--report", str(report), "-r", str(REQUIREMENTS)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}  # no config, no index, no find-links
    done = subprocess.run(cmd, env={**env, "PIP_CONFIG_FILE": os.devnull}, capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    resolved = {canonicalize_name(item["metadata"]["name"]): item["metadata"]["version"]
                for item in json.loads(report.read_text())["install"]}
    assert resolved == pins()
    # pip resolved from the wheelhouse's files, nothing else
    urls = [item["download_info"]["url"] for item in json.loads(report.read_text())["install"]]
    assert all(u.startswith(wheelhouse.resolve().as_uri()) for u in urls), urls


def test_pinned_set_is_closed_under_python_312_markers(wheelhouse):
    """pip evaluates environment markers for the interpreter running it; this evaluates them for 3.12."""
    env = {**default_environment(), "python_version": "3.12", "python_full_version": "3.12.0",
           "implementation_name": "cpython", "platform_python_implementation": "CPython",
           "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64"}
    found = wheels(wheelhouse)
    versions = {name: str(parse_wheel_filename(path.name)[1]) for name, path in found.items()}
    for name, wheel in found.items():
        meta = metadata(wheel)
        requires_python = meta.get("Requires-Python")
        if requires_python:
            assert Requirement(f"python{requires_python}").specifier.contains("3.12.0"), (name, requires_python)
        for line in meta.get_all("Requires-Dist") or []:
            req = Requirement(line)
            if req.marker is not None and not req.marker.evaluate({**env, "extra": ""}):
                continue
            dep = canonicalize_name(req.name)
            assert dep in versions, f"{name} needs {line}: not in the wheelhouse"
            assert req.specifier.contains(versions[dep], prereleases=True), \
                f"{name} needs {line}, the wheelhouse has {versions[dep]}"


# --- what the GPU check imports -------------------------------------------------------------------------

# Imported in full (their function-level imports run too): the test files and the benchmark it runs.
ROOTS_ALL = [*sorted((REPO / "tests" / "core").glob("*.py")), REPO / "esamp_sgl" / "bench" / "core.py",
             REPO / "esamp_sgl" / "bench" / "opcount.py"]
# Imported, but only their module level runs: the shared conftest and the CLI that dispatches to the bench.
ROOTS_MODULE_LEVEL = [REPO / "tests" / "conftest.py", REPO / "esamp_sgl" / "cli.py"]


def _imports(path: Path, everything: bool) -> set[str]:
    """Absolute module names imported by `path`: module level, or everywhere when `everything`.
    Imports inside try blocks are optional by construction (ImportError handled) and not counted."""
    tree = ast.parse(path.read_text())
    out: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.Try):
            return
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)  # `from pkg import submodule`
        for child in ast.iter_child_nodes(node):
            nested = isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda))
            if everything or not nested:
                visit(child)

    visit(tree)
    return out


def _local_file(module: str) -> list[Path]:
    """The project files importing `module` runs (its packages' __init__ files too), or [] if not ours."""
    parts = module.split(".")
    helper = REPO / "tests" / "core" / f"{parts[0]}.py"  # helpers next to the tests (rootdir on sys.path)
    if helper.exists():
        return [helper]
    files = []
    for i in range(1, len(parts) + 1):
        base = REPO.joinpath(*parts[:i])
        if (base / "__init__.py").exists():
            files.append(base / "__init__.py")
        elif base.with_suffix(".py").exists():
            files.append(base.with_suffix(".py"))
        else:
            break
    return files if files and parts[0] in {"esamp_sgl", "runtime_patch", "programs", "tests"} else []


def gpu_check_imports() -> set[str]:
    """Top-level names of the third-party modules the GPU check's code imports (module level, transitively)."""
    seen: set[Path] = set()
    third: set[str] = set()
    todo = [(p, True) for p in ROOTS_ALL] + [(p, False) for p in ROOTS_MODULE_LEVEL]
    while todo:
        path, everything = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for module in _imports(path, everything):
            local = _local_file(module)
            if local:
                todo.extend((f, False) for f in local)
            elif module.split(".")[0] not in {"esamp_sgl", "runtime_patch", "programs", "tests"}:
                third.add(module.split(".")[0])
    return third - set(sys.stdlib_module_names) - {"__future__"}


def test_wheelhouse_holds_what_the_gpu_check_imports(wheelhouse):
    provided = set(MACHINE)
    for wheel in wheels(wheelhouse).values():
        with zipfile.ZipFile(wheel) as z:
            for name in z.namelist():
                top = name.split("/")[0]
                if not re.search(r"\.(dist-info|data|libs)$", top):
                    provided.add(top.removesuffix(".py"))
    needed = gpu_check_imports()
    assert {"torch", "numpy", "pydantic", "pytest"} <= needed, needed  # the walk does see the code
    assert needed <= provided, f"imported by the GPU check, not in the wheelhouse: {sorted(needed - provided)}"


# --- the time budget -------------------------------------------------------------------------------------

def stage_limits() -> dict[str, int]:
    text = GPU_CHECK.read_text()
    limits = {m[1]: int(m[2]) for m in re.finditer(r"^stage\s+(\w+)\s+(\d+)\s", text, re.M)}
    assert len(limits) == len(re.findall(r"^stage\s", text, re.M)), "every stage call needs a literal limit"
    return limits


def test_gpu_check_stage_limits_fit_the_command_limit():
    text = GPU_CHECK.read_text()
    limits = stage_limits()
    kill_after = int(re.search(r"^KILL_AFTER=(\d+)", text, re.M)[1])
    assert "timeout --kill-after=$KILL_AFTER" in text
    worst = sum(limits.values()) + kill_after * len(limits)
    assert {"cuda_tests", "bench_counts"} <= set(limits), limits
    assert worst <= PLAN_SECONDS < COMMAND_LIMIT_SECONDS, (worst, limits)
    # every test run and benchmark is a time-boxed stage, and the install never reaches for an index
    for line in text.splitlines():
        if re.search(r"-m (pytest|esamp_sgl)", line):
            assert line.startswith("stage "), line
    assert re.search(r"pip install .*--no-index --no-deps --target", text)
