"""The prefill warm start and the fit gate on a real SGLang CPU server (SmolLM2-135M).

The session servers run with `--chunked-prefill-size 64` (tests/conftest.py), so a long prompt is
computed over several forwards; an `n > 1` request is preceded by SGLang's prefix-warming copy, which
computes the whole prompt that the n samples then find in the radix cache.
"""

from __future__ import annotations

import uuid

import pytest

from test_esamp_backend import explore, generate

pytestmark = pytest.mark.e2e

STORY = ("Write the opening line of a short story about a lighthouse keeper who finds a strange object "
         "washed ashore after a storm, and describe the object in detail.")


def telemetry_of(outs) -> dict:
    """The report of the member that left last (it saw every step of the group)."""
    return max((o["meta_info"]["esamp"][0] for o in outs), key=lambda t: t["predictions"])


def test_n8_group_warm_starts_on_its_whole_prompt_and_the_gate_opens(esamp_server, chat_prompt):
    # A unique first token: nothing of this prompt is in the radix cache (not even the chat template's
    # system prefix, which other tests' prompts share), so the prefix-warming copy computes all of it.
    prompt = f"[warm-start {uuid.uuid4().hex[:8]}]\n" + chat_prompt(STORY)
    outs = generate(esamp_server, prompt, n=8, max_new_tokens=16, temperature=1.0, min_p=0.05, **explore())
    t = telemetry_of(outs)
    # Every prompt position, although each sample computed only its last one (radix cache).
    meta = outs[0]["meta_info"]
    assert meta["prompt_tokens"] - meta["cached_tokens"] == 1
    assert t["warm_start_positions"] == meta["prompt_tokens"]
    assert t["warm_start_loss_after"] < t["warm_start_loss_before"]
    assert t["warm_start_r2"] > 0  # the Distiller knows the prompt ...
    assert 0 < t["gate"] <= 1 and t["tokens_reweighted"] > 0  # ... so it steers


def test_a_long_prompt_is_captured_across_prefill_chunks(esamp_server, chat_prompt):
    items = " ".join(f"Box {i} holds {(7 * i) % 11} marbles." for i in range(30))
    prompt = chat_prompt(f"{items} Which box holds the most? ({uuid.uuid4().hex[:6]})")
    out = generate(esamp_server, prompt, max_new_tokens=4, temperature=1.0, min_p=0.05, **explore())[0]
    meta, t = out["meta_info"], out["meta_info"]["esamp"][0]
    computed = meta["prompt_tokens"] - meta["cached_tokens"]
    assert computed > 2 * 64  # at least three chunks
    assert t["warm_start_positions"] == computed and t["warm_start_r2"] is not None


def test_a_cached_prompt_reuses_its_capture_or_is_recomputed_once(esamp_server, chat_prompt):
    prompt = chat_prompt(f"Name three rivers in Europe and one fact about each. ({uuid.uuid4().hex[:6]})")
    first = generate(esamp_server, prompt, max_new_tokens=2, **explore())[0]
    again = generate(esamp_server, prompt, max_new_tokens=2, **explore())[0]
    assert again["meta_info"]["cached_tokens"] >= again["meta_info"]["prompt_tokens"] - 1
    # The second group's prompt came from the radix cache; its pairs from the first one's capture.
    assert (again["meta_info"]["esamp"][0]["warm_start_positions"]
            == first["meta_info"]["esamp"][0]["warm_start_positions"] > 2)

    # Cached by a request that did not ask for ESamp, so no pairs were kept: the ESamp request
    # recomputes its prompt instead of reading it from the cache, and warm-starts on all of it ...
    other = chat_prompt(f"List two uses of copper. ({uuid.uuid4().hex[:6]})")
    stock = generate(esamp_server, other, max_new_tokens=1)[0]
    out = generate(esamp_server, other, max_new_tokens=3, temperature=1.0, **explore())[0]
    meta, t = out["meta_info"], out["meta_info"]["esamp"][0]
    assert stock["meta_info"]["prompt_tokens"] == meta["prompt_tokens"] < 512
    assert meta["cached_tokens"] == 0
    assert t["warm_start_positions"] == meta["prompt_tokens"] and t["warm_start_steps"] > 0
    # ... once: the next ESamp request on it is served from the cache and reuses the pairs.
    later = generate(esamp_server, other, max_new_tokens=2, **explore())[0]
    assert later["meta_info"]["cached_tokens"] >= meta["prompt_tokens"] - 1
    assert later["meta_info"]["esamp"][0]["warm_start_positions"] == meta["prompt_tokens"]
