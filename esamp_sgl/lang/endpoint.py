"""`ESampRuntimeEndpoint`: SGLang's `RuntimeEndpoint` for programs that explore.

Differences from the stock endpoint (all small, all documented):

* `custom_params` reach `/generate` (through the `runtime_patch.frontend` pass-through).
* `gen(n>1)` works: `/generate` answers a list there, which the stock `generate` cannot unpack; the
  variable becomes the list of the n texts and its meta info the list of the n meta infos.
* `chat_template="auto"` (default) also recognises ChatML models whose path SGLang's matcher does not
  know (e.g. a local SmolLM2 folder, which it would give the `default` USER:/ASSISTANT: template).
* `join(mode="concate_and_append")` concatenates text (the stock endpoint posts to a route that no
  SGLang 0.5.23 server has).
* Every request has a timeout, so a dead server fails a program instead of hanging it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import requests
from sglang.lang.backend.runtime_endpoint import RuntimeEndpoint
from sglang.lang.chat_template import ChatTemplate, get_chat_template, get_chat_template_by_model_path
from sglang.lang.global_config import global_config
from sglang.lang.ir import SglSamplingParams

DEFAULT_TIMEOUT_S = 600.0
_LOGPROB_FIELDS = ("return_logprob", "logprob_start_len", "top_logprobs_num", "return_text_in_logprobs")


def resolve_chat_template(name: str | None, model_path: str) -> ChatTemplate:
    """A named template, or ("auto"/None) SGLang's match for the model path, upgraded to ChatML when
    the path is a local folder whose tokenizer uses ChatML markers."""
    if name not in (None, "auto"):
        return get_chat_template(name)
    template = get_chat_template_by_model_path(model_path)
    if template.name == "default" and _local_model_uses_chatml(model_path):
        return get_chat_template("chatml")
    return template


def _local_model_uses_chatml(model_path: str) -> bool:
    folder = Path(model_path)
    for file in ("chat_template.jinja", "tokenizer_config.json"):
        try:
            if "<|im_start|>" in (folder / file).read_text(errors="replace"):
                return True
        except OSError:
            continue
    return False


def generate_body(text: str, sampling_params: SglSamplingParams, *, stream: bool = False) -> dict[str, Any]:
    """The `/generate` request of one `gen` (the stock endpoint's body; custom_params via to_srt_kwargs)."""
    body: dict[str, Any] = {
        "text": text,
        "sampling_params": {
            "skip_special_tokens": global_config.skip_special_tokens_in_output,
            "spaces_between_special_tokens": global_config.spaces_between_special_tokens_in_out,
            **sampling_params.to_srt_kwargs(),
        },
    }
    for item in _LOGPROB_FIELDS:
        value = getattr(sampling_params, item, None)
        if value is not None:
            body[item] = value
    if stream:
        body["stream"] = True
    return body


def unpack_generate(obj: Any) -> tuple[Any, Any]:
    """(text, meta_info) of one sample, or (texts, meta_infos) for n>1."""
    if isinstance(obj, list):
        return [o["text"] for o in obj], [o["meta_info"] for o in obj]
    return obj["text"], obj["meta_info"]


class ESampRuntimeEndpoint(RuntimeEndpoint):
    """RuntimeEndpoint for an SGLang server started with `--sampling-backend esamp`.

    >>> backend = ESampRuntimeEndpoint("http://127.0.0.1:30000")
    >>> state = program.run(question="...", backend=backend)
    """

    def __init__(self, base_url: str, *, chat_template: str | None = "auto", api_key: str | None = None,
                 verify: str | None = None, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self.timeout = timeout
        super().__init__(base_url.rstrip("/"), api_key=api_key, verify=verify)
        self.chat_template = resolve_chat_template(chat_template, self.model_info["model_path"])
        self.support_concate_and_append = False

    # -- transport (EngineBackend replaces these two) -----------------------------------------------
    def _generate_http_request(self, s: Any, data: dict[str, Any]) -> Any:
        self._add_images(s, data)
        response = requests.post(self.base_url + "/generate", json=data, headers=self._headers(),
                                 timeout=self.timeout, verify=self.verify if self.verify else True)
        self._assert_success(response)
        return response.json()

    def _stream_generate(self, s: Any, data: dict[str, Any]) -> Iterator[dict[str, Any]]:
        self._add_images(s, data)
        with requests.post(self.base_url + "/generate", json=data, headers=self._headers(), stream=True,
                           timeout=self.timeout, verify=self.verify if self.verify else True) as response:
            self._assert_success(response)
            for line in response.iter_lines(decode_unicode=False):
                chunk = line.decode("utf-8")
                if not chunk.startswith("data:"):
                    continue
                if chunk == "data: [DONE]":
                    break
                yield json.loads(chunk[5:].strip("\n"))

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    # -- BaseBackend --------------------------------------------------------------------------------
    def generate(self, s: Any, sampling_params: SglSamplingParams) -> tuple[Any, Any]:
        self._handle_dtype_to_regex(sampling_params)
        return unpack_generate(self._generate_http_request(s, generate_body(s.text_, sampling_params)))

    def generate_stream(self, s: Any, sampling_params: SglSamplingParams) -> Iterator[tuple[str, Any]]:
        if (sampling_params.n or 1) > 1:
            raise ValueError("gen(n>1) is not supported with stream=True")
        self._handle_dtype_to_regex(sampling_params)
        position = 0
        for data in self._stream_generate(s, generate_body(s.text_, sampling_params, stream=True)):
            text = data["text"][position:]
            position += len(text)
            yield text, data["meta_info"]

    def _prefill_only(self, s: Any, text: str) -> None:
        self._generate_http_request(s, {"text": text, "sampling_params": {"max_new_tokens": 0}})

    def commit_lazy_operations(self, s: Any) -> None:
        self._prefill_only(s, s.text_)

    def fill_image(self, s: Any) -> None:
        self._prefill_only(s, s.text_)

    def cache_prefix(self, prefix_str: str) -> None:
        self._generate_http_request(_NoImages, {"text": prefix_str, "sampling_params": {"max_new_tokens": 0}})


class _NoImages:
    images_: list = []
