"""The prepared SmolLM2 folder is a loadable HF model with a working chat template."""

from __future__ import annotations

import json

from esamp_sgl.cli import main as cli_main
from esamp_sgl.launch.models import MARKER, is_prepared, prepare_model, resolve_model_path


def test_prepared_folder_is_complete(model_path):
    assert is_prepared(model_path)
    config = json.loads((model_path / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["hidden_size"] == 576 and config["num_hidden_layers"] == 30
    marker = json.loads((model_path / MARKER).read_text())
    assert "Paris" in marker["smoke_test_output"]


def test_chat_template_renders_chatml(chat_prompt):
    text = chat_prompt("Hello?")
    assert text.startswith("<|im_start|>system") and text.endswith("<|im_start|>assistant\n")
    assert "<|im_start|>user\nHello?<|im_end|>" in text


def test_prepare_is_idempotent_and_path_command_prints_it(model_path, capsys):
    if model_path != prepare_model():
        return  # a user-provided model folder: nothing of ours to re-prepare
    mtime = (model_path / "model.safetensors").stat().st_mtime
    assert prepare_model() == model_path
    assert (model_path / "model.safetensors").stat().st_mtime == mtime  # not rebuilt
    assert cli_main(["models", "path"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(model_path)


def test_any_hf_folder_is_accepted_and_others_rejected(model_path, tmp_path):
    assert resolve_model_path(model_path) == model_path
    try:
        resolve_model_path(tmp_path)
    except FileNotFoundError as exc:
        assert "config.json" in str(exc)
    else:
        raise AssertionError("an empty folder must be rejected")
