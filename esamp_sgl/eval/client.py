"""Generation and base-model scoring against one real SGLang server (HTTP, loopback)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import requests

from esamp_sgl.core.config import TELEMETRY_KEY
from esamp_sgl.core.telemetry import group_report
from esamp_sgl.eval.metrics import mean_output_nll


@dataclass
class Sample:
    text: str
    output_ids: list[int]
    finish: str | None  # "stop" / "length" / ...


@dataclass
class Generation:
    samples: list[Sample]
    telemetry: dict | None  # the group's final ESamp report (the member that saw the most steps)


class ServerClient:
    def __init__(self, url: str, timeout: float = 1800.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()

    def _post(self, body: dict[str, Any]) -> Any:
        response = self.session.post(self.url + "/generate", json=body, timeout=self.timeout)
        if response.status_code != 200:
            raise RuntimeError(f"/generate returned {response.status_code}: {response.text[:500]}")
        return response.json()

    def generate(self, prompt_ids: Sequence[int], n: int, max_tokens: int, params: dict[str, Any],
                 stop: Sequence[str] | None = None) -> Generation:
        """n samples of one prompt in one request: with ESamp they form one fork group."""
        sampling = {"n": n, "max_new_tokens": max_tokens, **params}
        if stop:
            sampling["stop"] = list(stop)
        outs = self._post({"input_ids": list(prompt_ids), "sampling_params": sampling})
        outs = outs if isinstance(outs, list) else [outs]
        samples = [Sample(o["text"], list(o["output_ids"]),
                          (o["meta_info"].get("finish_reason") or {}).get("type")) for o in outs]
        telemetry = group_report((o["meta_info"].get(TELEMETRY_KEY) or [None])[0] for o in outs)
        return Generation(samples, telemetry)

    def nll(self, prompt_ids: Sequence[int], outputs: Sequence[Sequence[int]]) -> list[float]:
        """Mean per-token negative log-likelihood of each output under the base model at T = 1,
        no truncation, conditioned on the prompt (teacher-forced, one batched prefill)."""
        todo = [i for i, o in enumerate(outputs) if o]
        result = [float("nan")] * len(outputs)
        if not todo:
            return result
        body = {"input_ids": [list(prompt_ids) + list(outputs[i]) for i in todo],
                "sampling_params": {"max_new_tokens": 0, "temperature": 1.0},
                "return_logprob": True, "logprob_start_len": len(prompt_ids) - 1}
        outs = self._post(body)
        outs = outs if isinstance(outs, list) else [outs]
        for i, out in zip(todo, outs):
            result[i] = mean_output_nll(out["meta_info"]["input_token_logprobs"], len(outputs[i]))
        return result
