"""The (source, target) pairs of recent prompts, for the prefill warm start.

An engine computes a prompt's positions once and then serves them from its prefix cache: SGLang's
`n` samples are preceded by a prefix-warming request that computes the whole prompt, after which
each sample recomputes only the last token; a chunked prefill computes a long prompt over several
forwards. So the pairs a group's warm start needs are captured wherever they are computed, keyed
by the prompt's token ids, and read when a member of the group is about to sample its first token.

Bounded: only the last `max_positions` positions of a prompt are kept, for the `max_prompts` most
recently used prompts (least recently used first out). The server makes an ESamp request whose
prompt has no capture here (evicted, or cached by requests that did not ask for ESamp) recompute
those positions instead of reading them from the radix cache (runtime_patch/hooks.py:
recompute_uncaptured_prompt); telemetry reports the count as `warm_start_positions`.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class _Prompt:
    source: Tensor  # [kept, H] positions prompt_len - kept .. prompt_len - 1
    target: Tensor
    filled: Tensor  # [kept] bool, on the host: which positions have been captured
    first: int  # the prompt position of row 0


class PromptPairs:
    def __init__(self, max_prompts: int, max_positions: int) -> None:
        self.max_prompts, self.max_positions = max_prompts, max_positions
        self._prompts: OrderedDict[str, _Prompt] = OrderedDict()

    def __len__(self) -> int:
        return len(self._prompts)

    def __contains__(self, key: str) -> bool:
        return key in self._prompts

    def clear(self) -> None:
        """Forget every prompt (their pairs came from weights the engine no longer has)."""
        self._prompts.clear()

    def add(self, key: str, prompt_len: int, start: int, source: Tensor, target: Tensor) -> None:
        """Store the pairs of positions start .. start + len(source) - 1 (those past the prompt,
        e.g. a re-prefilled request's own output, are ignored)."""
        first = max(0, prompt_len - self.max_positions)
        lo, hi = max(start, first), min(start + source.shape[0], prompt_len)
        if hi <= lo:
            return
        entry = self._prompts.get(key)
        if entry is None:
            kept = prompt_len - first
            entry = _Prompt(source.new_zeros(kept, source.shape[1]), target.new_zeros(kept, target.shape[1]),
                            torch.zeros(kept, dtype=torch.bool), first)
            self._prompts[key] = entry
        self._prompts.move_to_end(key)
        entry.source[lo - first:hi - first] = source[lo - start:hi - start]
        entry.target[lo - first:hi - first] = target[lo - start:hi - start]
        entry.filled[lo - first:hi - first] = True
        while len(self._prompts) > self.max_prompts:
            self._prompts.popitem(last=False)

    def pairs(self, key: str) -> tuple[Tensor, Tensor] | None:
        """(source, target) [P, H] of the captured positions of the prompt, in order; None if none."""
        entry = self._prompts.get(key)
        if entry is None or not bool(entry.filled.any()):
            return None
        self._prompts.move_to_end(key)
        if bool(entry.filled.all()):
            return entry.source, entry.target
        rows = entry.filled.nonzero().squeeze(1).to(entry.source.device)
        return entry.source.index_select(0, rows), entry.target.index_select(0, rows)
