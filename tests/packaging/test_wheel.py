"""The pip route: build the wheel, install it into a fresh virtualenv that already has SGLang, serve.

The fresh virtualenv gets SGLang, torch and the rest only through a `.pth` line naming this checkout's
`.venv` site-packages. A directory added by a `.pth` line is put on `sys.path` but is not a site
directory, so the `.pth` files inside it (this checkout's editable install of esamp-sgl, the stand-in
finder) are not processed: before the wheel is installed, `import esamp_sgl` fails there. The wheel is
installed with `--no-deps`; everything then runs with the temporary directory as working directory and
no PYTHONPATH, so nothing can come from the repository.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import site
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import requests

import esamp_sgl

pytestmark = [pytest.mark.packaging, pytest.mark.e2e]

REPO = Path(__file__).resolve().parents[2]


def run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    done = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    return done


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def build_wheel(out: Path) -> Path:
    """`pip wheel` with the build backend already in this environment (offline), else an isolated build."""
    isolation = [] if importlib.util.find_spec("hatchling") is None else ["--no-build-isolation"]
    done = run([sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-q", "-w", out, REPO], cwd=out,
               env=clean_env())
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (wheel,) = out.glob("esamp_sgl-*.whl")
    return wheel


def check_wheel_contents(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    version = esamp_sgl.__version__
    assert wheel.name.startswith(f"esamp_sgl-{version}-")
    # every module of the packages the plugin runs from, and the stand-in's .pth at the top level
    for package in ("esamp_sgl", "esamp_sgl/core", "esamp_sgl/launch", "runtime_patch", "runtime_patch/cpu_compat"):
        for module in (REPO / package).glob("*.py"):
            assert f"{package}/{module.name}" in names, f"{package}/{module.name} missing from the wheel"
    assert {"esamp_sgl/py.typed", "esamp_sgl_cpu_compat.pth"} <= names
    dist_info = f"esamp_sgl-{version}.dist-info"
    assert f"{dist_info}/licenses/LICENSE" in names
    entry_points = zipfile.ZipFile(wheel).read(f"{dist_info}/entry_points.txt").decode()
    assert "[sglang.srt.plugins]\nesamp = runtime_patch.plugin:load" in entry_points
    metadata = zipfile.ZipFile(wheel).read(f"{dist_info}/METADATA").decode()
    assert "Requires-Python: >=3.11" in metadata and "License-Expression: Apache-2.0" in metadata
    assert "Requires-Dist: matplotlib" in metadata and "extra == 'eval'" in metadata.split("matplotlib")[1][:40]


def test_wheel_installs_into_an_existing_sglang_and_serves(tmp_path, model_path):
    timings = {}
    started = time.monotonic()
    dist = tmp_path / "dist"
    dist.mkdir()
    wheel = build_wheel(dist)
    check_wheel_contents(wheel)
    timings["build"] = time.monotonic() - started

    # a fresh virtualenv whose only access to SGLang & co. is this environment's site-packages, via .pth
    venv = tmp_path / "venv"
    work = tmp_path / "work"
    work.mkdir()
    env = clean_env()
    done = run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=work, env=env)
    assert done.returncode == 0, done.stderr
    python = venv / "bin" / "python"
    venv_site = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=work,
                         env=env).stdout.strip())
    (venv_site / "existing_sglang_environment.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    probe = "import sglang, torch; print(sglang.__version__)"
    done = run([python, "-c", probe], cwd=work, env=env)
    assert done.returncode == 0 and done.stdout.strip() == "0.5.23", done.stderr[-2000:]
    done = run([python, "-c", "import esamp_sgl"], cwd=work, env=env)
    assert done.returncode != 0 and "No module named 'esamp_sgl'" in done.stderr  # the repo is not reachable

    started = time.monotonic()
    # --ignore-installed: the existing environment's esamp-sgl (this checkout, editable) is visible to pip
    # through the .pth line; it must neither satisfy the requirement nor be touched.
    done = run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--ignore-installed", "-q",
                wheel], cwd=work, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    timings["install"] = time.monotonic() - started
    where = ("import esamp_sgl, runtime_patch, runtime_patch.plugin, sys; "
             "print(esamp_sgl.__file__); print(runtime_patch.__file__); print(esamp_sgl.__version__); "
             "print(any(type(f).__name__ == 'SglKernelFinder' for f in sys.meta_path))")
    done = run([python, "-c", where], cwd=work, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    esamp_file, patch_file, version, finder = done.stdout.split()
    for path in (esamp_file, patch_file):
        assert Path(path).is_relative_to(venv_site), f"{path} is not from the wheel"
    assert version == esamp_sgl.__version__ and finder == "True"  # the wheel's .pth installed the finder
    done = run([venv / "bin" / "esamp-sgl", "--version"], cwd=work, env=env)
    assert done.stdout.strip() == f"esamp-sgl {esamp_sgl.__version__}", done.stderr[-2000:]

    # SGLang's unmodified CLI from the fresh environment, one exploring request with n = 2
    from esamp_sgl.launch.server import SGLangServer

    started = time.monotonic()
    with SGLangServer(model_path, sampling_backend="esamp", python=python, cwd=work, env=env,
                      log_path=tmp_path / "sglang.log") as server:
        timings["server_start"] = time.monotonic() - started
        body = {"text": "<|im_start|>user\nName a color.<|im_end|>\n<|im_start|>assistant\n",
                "sampling_params": {"n": 2, "max_new_tokens": 8, "temperature": 1.0, "min_p": 0.05,
                                    "custom_params": {"esamp": True}}}
        response = requests.post(server.url + "/generate", json=body, timeout=300)
        assert response.status_code == 200, response.text
        outs = response.json()
        assert len(outs) == 2
        telemetry = [o["meta_info"]["esamp"][0] for o in outs]
        assert len({t["group"] for t in telemetry}) == 1 and max(t["steps_trained"] for t in telemetry) > 0
    log = (tmp_path / "sglang.log").read_text()
    assert "esamp: ready" in log
    for package in ("esamp_sgl", "runtime_patch"):
        assert f"{REPO}/{package}" not in log  # no traceback, warning or path from the checkout's sources
    timings["total"] = sum(timings.values())
    print("wheel smoke timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
    shutil.rmtree(venv, ignore_errors=True)
