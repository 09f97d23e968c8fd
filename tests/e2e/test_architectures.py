"""The taps work beyond Llama: tiny random-weight Qwen2 and Qwen3 models (SmolLM2's tokenizer; no hub)
served with `--sampling-backend esamp`. Random weights give nonsense text; the machinery is what is tested."""

from __future__ import annotations

import pytest
import requests
import torch

pytestmark = pytest.mark.e2e


def tiny_model(kind: str, tokenizer_path, out):
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

    config_cls, model_cls = {"qwen2": (Qwen2Config, Qwen2ForCausalLM), "qwen3": (Qwen3Config, Qwen3ForCausalLM)}[kind]
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    torch.manual_seed(0)
    config = config_cls(hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
                        num_key_value_heads=2, head_dim=32, vocab_size=len(tokenizer), max_position_embeddings=2048,
                        tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                        eos_token_id=tokenizer.eos_token_id)
    model_cls(config).to(torch.bfloat16).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.mark.parametrize("kind", ["qwen2", "qwen3"])
def test_explore_on_qwen_architectures(kind, model_path, tmp_path):
    from esamp_sgl.launch.server import SGLangServer

    folder = tiny_model(kind, model_path, tmp_path / kind)
    with SGLangServer(folder, sampling_backend="esamp", log_path=tmp_path / f"{kind}.log") as server:
        body = {"text": "Hello there", "sampling_params": {"max_new_tokens": 8, "ignore_eos": True, "temperature": 1.0,
                                                           "n": 2, "custom_params": {"esamp": True}}}
        response = requests.post(server.url + "/generate", json=body, timeout=300)
        assert response.status_code == 200, response.text
        reports = [o["meta_info"]["esamp"][0] for o in response.json()]
    assert len({r["group"] for r in reports}) == 1
    last = max(reports, key=lambda r: r["predictions"])
    assert last["predictions"] >= 16 and last["steps_trained"] >= 8 and last["tokens_reweighted"] > 0
    assert last["status"] == "ok"
