"""What a client sees: a clear 400 on a server without the esamp backend, and the telemetry on every
response path (streaming `/generate`, `/v1/completions`), not only non-streaming `/generate` and chat.

Registered by `plugin.py` from the touch-point table (`touch_points.py`); like `hooks.py`, every function is a no-op for requests without ESamp.

Streaming. The scheduler sends a request-level `customized_info` key of a *streaming* request only
with its first chunk (`_GenerationStreamAccumulator.accept`: `send_token_offset == 0`), but the
telemetry exists only once the request finished (its group's counters are read when it leaves). So
`telemetry_on_final_stream_chunk` moves it into the final chunk itself. On the tokenizer side, with
`--incremental-streaming-output`, every accumulated `customized_info` key is treated as per-token
and sliced/concatenated per chunk; the telemetry is one report per request, so it is exempted there
(`telemetry_not_token_sliced`, `telemetry_not_concatenated`). Without that flag (SGLang's default)
the final chunk's `meta_info` already carries everything accumulated.
"""

from __future__ import annotations

from esamp_sgl.core.config import TELEMETRY_KEY, ExploreRequest
from runtime_patch.backend import BACKEND, BACKEND_FLAG


# -- tokenizer side: exploring requests need the esamp backend ----------------------------------------
def server_sampling_backend() -> str | None:
    """The resolved `--sampling-backend` of the server this process belongs to; None where SGLang's
    config is not published (e.g. `SamplingParams.verify` called outside a server)."""
    try:
        from sglang.srt.runtime_context import get_context

        return get_context().config_leaf("sampling_backend")
    except (ImportError, ValueError):
        return None


def require_esamp_backend(result, sampling_params, *args, **kwargs):
    """AFTER SamplingParams.verify (tokenizer process), after `hooks.validate_custom_params`: an
    exploring request sent to a server that samples with another backend is refused with HTTP 400
    (otherwise it would be sampled stock without a word: 200, no telemetry)."""
    if ExploreRequest.from_custom_params(sampling_params.custom_params) is None:
        return result
    backend = server_sampling_backend()
    if backend is not None and backend != BACKEND:
        raise ValueError(
            f"custom_params.esamp needs a server started with {BACKEND_FLAG}; this server samples with "
            f"--sampling-backend {backend}, so the request would be sampled without exploration")
    return result


# -- OpenAI /v1/completions ----------------------------------------------------------------------------
def completion_response_telemetry(result, serving, request, ret, *args, **kwargs):
    """AFTER OpenAIServingCompletion._build_completion_response: telemetry per choice in
    `metadata.esamp`, as for chat (same list layout: one entry per choice, None for stock ones)."""
    from runtime_patch.hooks import chat_response_telemetry

    return chat_response_telemetry(result, serving, request, ret, *args, **kwargs)


# -- streaming ---------------------------------------------------------------------------------------
def telemetry_on_final_stream_chunk(original, acc, *args, req, **kwargs):
    """AROUND _GenerationStreamAccumulator.accept (scheduler): the final chunk of a streaming
    request carries its telemetry (SGLang would send a request-level key with the first chunk only)."""
    info = req.customized_info
    if not req.stream or not info or TELEMETRY_KEY not in info or getattr(acc, "rust_server_mode", False):
        return original(acc, *args, req=req, **kwargs)
    telemetry = info[TELEMETRY_KEY]
    rows = len(acc.rids)
    req.customized_info = {k: v for k, v in info.items() if k != TELEMETRY_KEY}
    try:
        result = original(acc, *args, req=req, **kwargs)
    finally:
        req.customized_info = info
    if len(acc.rids) > rows:  # this call emitted the request's chunk (always so once it finished)
        values = acc.customized_info.get(TELEMETRY_KEY)
        if values is None:  # no earlier row of this batch had telemetry: pad them (request level: [])
            acc.customized_info[TELEMETRY_KEY] = [[] for _ in range(len(acc.rids) - 1)] + [telemetry]
        else:  # the original padded this row with []
            values[-1] = telemetry
    return result


def telemetry_not_token_sliced(original, meta_info, last_output_offset, customized_info_keys=None):
    """AROUND tokenizer_manager._slice_streaming_output_meta_info (incremental streaming)."""
    if customized_info_keys is not None:
        customized_info_keys = [k for k in customized_info_keys if k != TELEMETRY_KEY]
    return original(meta_info, last_output_offset, customized_info_keys)


def telemetry_not_concatenated(original, manager, out_list, rid, customized_info_keys=None):
    """AROUND TokenizerManager._coalesce_streaming_chunks (incremental streaming, several chunks
    queued): the telemetry is taken from the last chunk, not concatenated over them."""
    if customized_info_keys is not None:
        customized_info_keys = [k for k in customized_info_keys if k != TELEMETRY_KEY]
    return original(manager, out_list, rid, customized_info_keys)
