"""The soak's workload (`esamp-sgl bench soak`): a fixed plan of /generate calls, built up front.

`make_plan` spreads the samples over fork groups of mixed shape (one n=4 call, two n=2 calls sharing an
`esamp_group`, or four n=1 calls sharing one), mixed explore on/off and sampling settings, and marks
about `abort_fraction` of the calls to be aborted by the client (a closed stream, or `/abort_request`).
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field
from typing import Any

PROMPTS = [
    "Invent a board game.", "Describe a city at night.", "Give one tip for a new gardener.",
    "Write a two-line poem about rain.", "Name a color and a fruit.", "Suggest a name for a cafe.",
    "What is a good hobby?", "Tell a very short story about a fox.",
]
# Group shapes: the samples of one fork group as per-call `n` (calls after the first share the group
# through `esamp_group`; a single call's n samples share it automatically).
SHAPES = {"n4": (4,), "n2x2": (2, 2), "n1x4": (1, 1, 1, 1)}
SAMPLE_SETTINGS = [
    {"temperature": 0.0},
    {"temperature": 1.0, "min_p": 0.05},
    {"temperature": 0.8, "top_k": 20},
    {"temperature": 0.9, "top_p": 0.9},
]


@dataclass
class Call:
    """One /generate call of the plan."""

    index: int
    group: int  # fork-group index in the plan
    group_id: str | None  # the esamp_group sent (None: stock, or one call whose n samples share one)
    n: int
    explore: bool
    sampling: dict[str, Any]
    max_tokens: int
    abort: str | None = None  # None | "stream_close" | "abort_request"
    abort_point: float = 0.0  # seconds before /abort_request, or chunks read before closing
    stream: bool = False
    rid: str = field(default_factory=lambda: uuid.uuid4().hex)

    def body(self, prompt: str) -> dict[str, Any]:
        params: dict[str, Any] = {"max_new_tokens": self.max_tokens, "n": self.n, **self.sampling}
        if self.abort:  # long enough that the abort lands mid-generation more often than not
            params["ignore_eos"] = True
        if self.explore:
            custom: dict[str, Any] = {"esamp": True}
            if self.group_id is not None:
                custom["esamp_group"] = self.group_id
            params["custom_params"] = custom
        elif self.group % 2:
            params["custom_params"] = {"esamp": False}  # explicit opt-out is stock too
        body: dict[str, Any] = {"text": prompt, "sampling_params": params, "stream": self.stream}
        if self.n == 1:  # /abort_request matches the rid; SGLang renames the n>1 samples' rids
            body["rid"] = self.rid
        return body


def make_plan(groups: int, samples: int, max_tokens: int, abort_fraction: float, explore_fraction: float,
              seed: int) -> list[Call]:
    """A fixed plan of calls: `groups` fork groups holding `samples` samples in all."""
    if samples < groups:
        raise ValueError(f"--requests must be >= --groups, got {samples} < {groups}")
    rng = random.Random(seed)
    per_group = [samples // groups + (1 if g < samples % groups else 0) for g in range(groups)]
    calls: list[Call] = []
    for g, size in enumerate(per_group):
        shape = SHAPES[rng.choice(sorted(SHAPES))] if size == 4 else (size,)
        explore = rng.random() < explore_fraction
        sampling = dict(rng.choice(SAMPLE_SETTINGS))
        group_id = f"soak-{seed}-{g}-{uuid.uuid4().hex[:8]}" if explore and len(shape) > 1 else None
        for n in shape:
            call = Call(len(calls), g, group_id, n, explore, sampling, rng.randint(2, max_tokens))
            if rng.random() < abort_fraction:
                call.abort = "abort_request" if n == 1 and rng.random() < 0.5 else "stream_close"
                call.stream = call.abort == "stream_close"
                call.abort_point = rng.uniform(0.0, 3.0) if call.abort == "abort_request" else rng.randint(0, 4)
                call.max_tokens = max_tokens * 4
            else:
                call.stream = rng.random() < 0.1  # some completed calls streamed too (no telemetry there)
            calls.append(call)
    return calls
