"""Which fork group an exploring request joins, decided in the tokenizer process.

A group is the set of requests that share one Distiller. An explicit `esamp_group` always wins;
then a routing key (below); otherwise the server's `group_by` setting decides:

* `request` (the default): the request is its own group, `req-<rid>`; its `n` samples are copies
  of the one tokenized object, so they share it.
* `prompt`: exploring requests whose prompts have identical token ids, and that arrive while a
  group for that prompt is open, share it. RL frameworks (verl, OpenRLHF, AReaL) and plain OpenAI
  loops repeat a prompt and send every copy as its own `n = 1` request; this gives those copies one
  Distiller. A prompt group is open for `group_window_s` seconds after its first member arrived
  and for at most `group_max_members` samples (a request's `n` counts as `n`); after that the next
  request with the prompt opens a new group (a new id suffix). Its id is
  `prompt-<blake2b of the token ids>-<serial>`.

Why here and not in the scheduler: the tokenizer process sees each request once, before the `n`
expansion and before DP dispatch, and knows its token ids. DP routing (`dp_routing.py`) then hashes
the prompt part of the id, so every group of one prompt goes to the same DP rank (also the rank
whose prefix cache holds the prompt). The bookkeeping is bounded: groups expire after the window
and at most `MAX_OPEN_PROMPT_GROUPS` are tracked (oldest dropped first: it just stops accepting).

Not grouped by prompt (they fall back to `req-<rid>`): requests without token ids (input embeds)
and multimodal requests (identical placeholder tokens, different images). A LoRA adapter is part
of the key. A group lives in the scheduler only while one of its members runs: a member arriving
in the window after the others finished starts a fresh Distiller under the same id.

Routing key: a request that carries SGLang's routing key (`X-SMG-Routing-Key` header, the key the
SGLang Model Gateway's `consistent_hashing` / `manual` policies route by) and no `esamp_group` joins
the group named by that key. The same key then picks the worker and the group, so a group cannot be
split over workers. It is also the only group channel through `sglang-router` 0.3.2, which drops
`custom_params` from the requests it forwards (docs/scale-out.md). SGLang fills `routing_key` from
the header on its OpenAI endpoints only; `routing_key_from_header` does the same for `/generate`.
A key that is not a valid group id (over 128 characters, not printable) is hashed.

`explore_all`: every generate request explores unless its custom_params say `"esamp": false`.
(SGLang's `--preferred-sampling-params '{"custom_params": {"esamp": true}}'` is not enough: a
request's own `custom_params` replaces the default dict as a whole, and the OpenAI endpoints always
send `custom_params`, `null` when unset; see docs/rl-rollouts.md.)
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

from esamp_sgl.core.config import ESampConfig, check_group_key
from runtime_patch.backend import server_explores
from runtime_patch.rows import prompt_key

PROMPT_GROUP_PREFIX = "prompt-"
_PROMPT_GROUP_RE = re.compile(r"(prompt-[0-9a-f]{32})-\d+")
MAX_OPEN_PROMPT_GROUPS = 4096
ROUTING_KEY_HEADER = "x-smg-routing-key"  # SGLang's (serving_base.extract_routing_key) and the gateway's


def affinity_key(group: str) -> str:
    """What DP routing hashes: the prompt part of a prompt group's id (same prompt -> same rank),
    else the id itself."""
    match = _PROMPT_GROUP_RE.fullmatch(group)
    return match.group(1) if match else group


@dataclass
class _OpenGroup:
    group: str
    opened: float
    members: int


class PromptGroups:
    """The open prompt groups of one tokenizer process."""

    def __init__(self, window_s: float, max_members: int, *, max_open: int = MAX_OPEN_PROMPT_GROUPS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s, self.max_members, self.max_open, self.clock = window_s, max_members, max_open, clock
        self._open: OrderedDict[str, _OpenGroup] = OrderedDict()  # prompt key -> group, oldest first
        self._serial = 0  # groups opened so far: makes every group's id unique
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._open)

    def assign(self, key: str, samples: int = 1) -> str:
        """The group id for a request with prompt `key` and `samples` samples (its n)."""
        now = self.clock()
        with self._lock:
            while self._open:  # every group has the same window: the oldest expires first
                first = next(iter(self._open.values()))
                if now - first.opened < self.window_s:
                    break
                self._open.popitem(last=False)
            group = self._open.get(key)
            if group is not None and group.members + samples <= self.max_members:
                group.members += samples
                return group.group
            # a new group (the first for this prompt, or the previous one is full)
            self._serial += 1
            group = _OpenGroup(f"{PROMPT_GROUP_PREFIX}{key}-{self._serial}", now, samples)
            self._open.pop(key, None)
            self._open[key] = group
            while len(self._open) > self.max_open:
                self._open.popitem(last=False)
            return group.group


def request_prompt_key(tokenized) -> str | None:
    """The prompt identity of a tokenized request, or None when it must not be grouped by prompt."""
    ids = getattr(tokenized, "input_ids", None)
    if ids is None or len(ids) == 0 or getattr(tokenized, "mm_inputs", None) is not None \
            or getattr(tokenized, "input_embeds", None) is not None:
        return None
    key = prompt_key(ids)
    lora = getattr(tokenized, "lora_id", None)
    if lora:
        key = hashlib.blake2b(f"{key}/{lora}".encode(), digest_size=16).hexdigest()
    return key


class TokenizerGrouping:
    """The tokenizer process's policy: explore_all and the group stamp."""

    def __init__(self, config: ESampConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.prompts = (PromptGroups(config.group_window_s, config.group_max_members, clock=clock)
                        if config.group_by == "prompt" else None)

    def stamp(self, tokenized, obj) -> None:
        """Set `esamp` (explore_all) and `esamp_group` on the tokenized request's custom_params."""
        params = getattr(tokenized.sampling_params, "custom_params", None)
        if (self.config.explore_all and (params is None or "esamp" not in params) and _is_generate(obj)
                and _server_explores()):
            params = {**(params or {}), "esamp": True}
            # A new dict: one sampling-params dict may be shared by every prompt of a batch request.
            tokenized.sampling_params.custom_params = params
        if not params or not params.get("esamp") or params.get("esamp_group") is not None:
            return
        group = routing_key_group(getattr(tokenized, "routing_key", None))
        if group is None and self.prompts is not None:
            key = request_prompt_key(tokenized)
            if key is not None:
                group = self.prompts.assign(key, max(1, int(getattr(tokenized.sampling_params, "n", 1) or 1)))
        if group is None:
            rid = obj.rid if isinstance(getattr(obj, "rid", None), str) else uuid.uuid4().hex
            group = f"req-{rid}"
        tokenized.sampling_params.custom_params = {**params, "esamp_group": group}


def routing_key_group(key) -> str | None:
    """The group a routing key names (None: no key)."""
    if not isinstance(key, str) or not key:
        return None
    try:
        return check_group_key(key)
    except ValueError:
        return "key-" + hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def routing_key_from_header(tokenizer_manager, obj, request=None, *args, **kwargs):
    """BEFORE TokenizerManager.generate_request: `/generate` gets SGLang's routing key from the
    `X-SMG-Routing-Key` header when its body has none, as SGLang's OpenAI endpoints already do
    (single requests; a batch's sub-requests do not inherit `routing_key` in SGLang 0.5.23)."""
    headers = getattr(request, "headers", None)
    if headers is not None and getattr(obj, "routing_key", "") is None:
        key = headers.get(ROUTING_KEY_HEADER)
        if key:
            obj.routing_key = key
    return None


def _server_explores() -> bool:
    """explore_all marks requests only on a server that samples with the esamp backend."""
    try:
        return server_explores()
    except Exception:  # noqa: BLE001  (SGLang's config not published: not a server process)
        return False


def _is_generate(obj) -> bool:
    from sglang.srt.managers.io_struct import GenerateReqInput

    return isinstance(obj, GenerateReqInput)


_policy: TokenizerGrouping | None = None


def tokenizer_grouping() -> TokenizerGrouping:
    """This process's policy, from the server config (the env; read once)."""
    global _policy
    if _policy is None:
        from runtime_patch.settings import load_server_config

        _policy = TokenizerGrouping(load_server_config())
    return _policy


def set_tokenizer_grouping(policy: TokenizerGrouping | None) -> None:
    """Replace this process's policy (tests); None: read the config again on next use."""
    global _policy
    _policy = policy
