"""Rendering a one-turn user question as the model's chat prompt.

`chatml` writes the ChatML text directly (the bundled SmolLM2's format; the benchmarks send text so
that no tokenizer is loaded in the client); `chat_prompt_ids` uses the model's own chat template.
"""

from __future__ import annotations

from typing import Any


def chatml(question: str) -> str:
    """`question` as a ChatML user turn, followed by the opening of the assistant's turn."""
    return f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"


def chat_prompt_ids(tokenizer: Any, question: str) -> list[int]:
    """Token ids of `question` as a user turn in the tokenizer's chat template, ready for generation."""
    return tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=True,
                                         add_generation_prompt=True, return_dict=False)
