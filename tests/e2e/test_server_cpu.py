"""A real SGLang 0.5.23 server on this machine's CPU serving the real model (stock backend)."""

from __future__ import annotations

import pytest
import requests
import torch

pytestmark = pytest.mark.e2e

QUESTIONS = ["What is the capital of France?", "Write one sentence about the sea.", "List three prime numbers."]


def generate(server, text: str, **params):
    response = requests.post(server.url + "/generate", json={"text": text, "sampling_params": params}, timeout=300)
    assert response.status_code == 200, response.text
    return response.json()


def test_generate_answers(stock_server, chat_prompt):
    out = generate(stock_server, chat_prompt(QUESTIONS[0]), max_new_tokens=32, temperature=0)
    assert "Paris" in out["text"]
    assert out["meta_info"]["completion_tokens"] == len(out["output_ids"]) > 0


def test_chat_completions_uses_the_chat_template(stock_server):
    body = {"model": "default", "messages": [{"role": "user", "content": QUESTIONS[0]}],
            "max_tokens": 32, "temperature": 0}
    response = requests.post(stock_server.url + "/v1/chat/completions", json=body, timeout=300)
    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    assert "Paris" in choice["message"]["content"] and choice["finish_reason"] == "stop"


def test_parallel_sampling_n4(stock_server, chat_prompt):
    outs = generate(stock_server, chat_prompt(QUESTIONS[1]), max_new_tokens=24, temperature=1.0, n=4)
    assert isinstance(outs, list) and len(outs) == 4
    assert len({tuple(o["output_ids"]) for o in outs}) > 1  # independent samples, not copies


def test_greedy_matches_hf_transformers(stock_server, chat_prompt, model_path):
    """SGLang's greedy tokens are HF transformers' greedy tokens.

    Both run bf16 with different attention kernels, so an exact near-tie can flip. The check is
    therefore made under teacher forcing: at every step of SGLang's output, its token must be HF's
    argmax, or within two bf16 rounding steps of it at the logit's magnitude (the two stacks' logits
    differ by that much, and one flipped near-tie changes the rest of the answer); and at least one
    prompt must match exactly.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.bfloat16)
    exact = 0
    for question in QUESTIONS:
        prompt = chat_prompt(question)
        out = generate(stock_server, prompt, max_new_tokens=24, temperature=0)
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).input_ids
        with torch.no_grad():
            hf = model.generate(ids, max_new_tokens=24, do_sample=False)  # both stop at <|im_end|> and keep it
            exact += out["output_ids"] == hf[0, ids.shape[1]:].tolist()
            forced = torch.cat([ids[0], torch.tensor(out["output_ids"])])[None]
            logits = model(forced).logits[0, ids.shape[1] - 1:-1].float()
        chosen = logits.gather(1, torch.tensor(out["output_ids"])[:, None])[:, 0]
        best = logits.max(dim=1).values
        bf16_step = torch.exp2(torch.floor(torch.log2(best.abs().clamp_min(1.0))) - 7)  # 8-bit mantissa
        gaps = best - chosen
        assert bool((gaps <= 2 * bf16_step).all()), (question, gaps.tolist())
    assert exact >= 1
