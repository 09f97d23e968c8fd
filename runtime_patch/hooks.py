"""The SGLang hooks of the esamp backend, one small function each (`touch_points.py` lists every
hook with its target; `plugin.py` registers them from there).

Hooks run in every process that loads plugins; each one is a no-op unless the process is a
scheduler whose sampler is the esamp sampler (`STATE.runtime` set), or, on the tokenizer side, the
request carries `esamp*` custom params.
"""

from __future__ import annotations

import logging

from esamp_sgl.core.config import TELEMETRY_KEY, ExploreRequest, check_request_profile
from esamp_sgl.core.explorer import Explorer
from runtime_patch import beside, head_mix
from runtime_patch.rows import ROWS_ATTR, BatchRows, asks_for_esamp, explore_request_of, extend_span, prompt_key_of, rows_of
from runtime_patch.runtime import SchedulerState
from runtime_patch.settings import load_server_config
from runtime_patch.taps import configure_taps, prompt_positions
from runtime_patch.tensor_parallel import check_tensor_parallel, full_lm_head_weight, row_ownership

logger = logging.getLogger("esamp_sgl.hooks")


class _State:
    runtime: SchedulerState | None = None  # one per scheduler process


STATE = _State()


# -- scheduler start-up ---------------------------------------------------------------------------
def bind_model(result, runner):
    """AFTER ModelRunner.init_attention_backends: weights are loaded, graphs not yet captured."""
    from runtime_patch.sampler import ESampSampler

    if runner.is_draft_worker or not isinstance(getattr(runner, "sampler", None), ESampSampler):
        return result
    from sglang.srt.runtime_context import get_parallel

    if not runner.spec_algorithm.is_none():
        raise RuntimeError("--sampling-backend esamp does not support speculative decoding yet")
    if get_parallel().pp_size > 1:
        raise RuntimeError("--sampling-backend esamp does not support pipeline parallelism (--pp-size > 1) yet")
    if get_parallel().attn_dp_size > 1:
        raise RuntimeError("--sampling-backend esamp does not support DP attention yet: a fork group's rows "
                           "must reach one Distiller")
    check_tensor_parallel(get_parallel().tp_size)
    config = load_server_config()
    if config.svd_warm_start:
        raise RuntimeError(
            "esamp_svd_warm_start is implemented in the core (esamp_sgl) but not wired into the SGLang runtime "
            "(probe 2 found it does not help); unset it"
        )
    model_config = runner.model_config
    hidden, layers = model_config.hidden_size, model_config.num_hidden_layers
    taps = configure_taps(runner.model, config, layers, hidden)
    # Under --tp-size > 1 the LM head is vocab-sharded; the Explorer gets the whole table.
    explorer = Explorer(config, hidden, full_lm_head_weight(runner.model.lm_head), device=runner.device)
    STATE.runtime = runner.sampler.runtime = SchedulerState(config, explorer, taps)
    STATE.runtime.dp_rank = get_parallel().dp_rank
    STATE.runtime.ownership = row_ownership(get_parallel().tp_group)  # None without TP
    from runtime_patch.metrics import scheduler_metrics

    STATE.runtime.metrics = scheduler_metrics(STATE.runtime)  # None without --enable-metrics
    ownership = STATE.runtime.ownership
    logger.info("esamp: ready (taps at residual indices %s, %d bank slots, rule %s, beta %g, training %s%s)",
                taps.capture_indices, config.max_groups, config.rule, config.beta, explorer.train_mode,
                "" if ownership is None else
                f"; TP rank {ownership.rank} of {ownership.size} computes the groups in slots s % {ownership.size} "
                f"== {ownership.rank}")
    return result


# -- requests join their groups ---------------------------------------------------------------------
def join_new_requests(result, info, batch, vocab_size):
    """AFTER SamplingBatchInfo.adjusted_from_schedule_batch (a batch of requests about to be prefilled),
    before `rows_from_schedule_batch`: its exploring requests join their fork groups (a group's first
    member takes a bank slot). A request already in its group (a retracted one prefilled again) stays."""
    runtime = STATE.runtime
    if runtime is None:
        return result
    for req in batch.reqs:
        request = explore_request_of(req)
        if request is not None:
            runtime.join(req.rid, request)
    return result


# -- row metadata on SamplingBatchInfo -------------------------------------------------------------
def rows_from_schedule_batch(result, info, batch, vocab_size):
    """AFTER SamplingBatchInfo.adjusted_from_schedule_batch: each row's request id, ESamp options and
    prompt span, beside the sampling tensors (only when a row explores or warm-starts)."""
    runtime = STATE.runtime
    if runtime is None:
        return result
    requests = tuple(explore_request_of(req) for req in batch.reqs)
    spans = tuple(extend_span(req) for req in batch.reqs) if runtime.config.prefill_warm_start else None
    if not any(r is not None for r in requests) and not (spans and any(spans)):
        return result
    setattr(info, ROWS_ATTR, BatchRows(tuple(req.rid for req in batch.reqs), requests, spans))
    return result


def rows_filter(result, info, keep_indices, keep_indices_device=None):
    rows = rows_of(info)
    if rows is not None:
        setattr(info, ROWS_ATTR, rows.take(keep_indices))
    return result


def rows_merge(result, info, other):
    mine, theirs = rows_of(info), rows_of(other)
    if mine is None and theirs is None:
        return result
    n_other = len(other)
    n_mine = len(info) - n_other  # called after the tensors were concatenated
    mine = mine if mine is not None else BatchRows.stock(n_mine)
    theirs = theirs if theirs is not None else BatchRows.stock(n_other)
    setattr(info, ROWS_ATTR, mine.concat(theirs))
    return result


def rows_copy_for_forward(result, info):
    rows = rows_of(info)
    if rows is not None:
        setattr(result, ROWS_ATTR, rows)
    return result


# -- the logits processor: prefill warm start, latent mixing before the LM head ----------------------
def on_logits_forward(original, processor, input_ids, hidden_states, lm_head, logits_metadata, *args, **kwargs):
    """AROUND LogitsProcessor.forward. Extend: the prefill warm start (before the original, so that it
    precedes the first token's draw). Decode: the paper's latent mixing before the LM head
    (head_mix.py)."""
    forward_mode = getattr(logits_metadata, "forward_mode", None)
    if STATE.runtime is not None and forward_mode is not None and forward_mode.is_decode():
        return head_mix.mix_on_decode(STATE.runtime, original, processor, input_ids, hidden_states, lm_head,
                                      logits_metadata, *args, **kwargs)
    if forward_mode is not None and forward_mode.is_extend():
        warm_start_on_extend(hidden_states, logits_metadata, *args, **kwargs)
    return original(processor, input_ids, hidden_states, lm_head, logits_metadata, *args, **kwargs)


def track_forward(original, runner, forward_batch, *args, **kwargs):
    """AROUND ModelRunner._forward_raw: the forward batch, for capture_source (beside.py)."""
    if STATE.runtime is None:
        return original(runner, forward_batch, *args, **kwargs)
    return beside.track_forward(original, runner, forward_batch, *args, **kwargs)


def capture_source(original, captures, hidden, *args, **kwargs):
    """AROUND AuxHiddenStateList.capture: the prediction starts beside layers 2…L (beside.py)."""
    return beside.on_capture(STATE.runtime, original, captures, hidden, *args, **kwargs)


def warm_start_on_extend(hidden_states, logits_metadata, *args, **kwargs) -> None:
    """The only place that sees every position of an extend (the sampler gets the last one); a
    prefill-only batch (the n>1 prefix-warming request) never reaches the sampler at all."""
    runtime = STATE.runtime
    if runtime is None:
        return
    rows = rows_of(getattr(logits_metadata, "sampling_info", None))
    aux = kwargs.get("aux_hidden_states", args[0] if args else None)
    lens = getattr(logits_metadata, "extend_seq_lens_cpu", None)
    if runtime.wants_prompt_positions(rows) and aux is not None and lens is not None:
        try:
            runtime.warm_start_from_extend(
                rows, list(lens), lambda start, n: prompt_positions(aux, hidden_states, start, n))
        except Exception as exc:  # never take the forward down: counted, logged, in the server summary
            runtime.count_warm_start_failure(exc)


def recompute_uncaptured_prompt(original, req, input_len, *args, **kwargs):
    """AROUND Req._compute_max_prefix_len (how much of the prompt the radix cache may serve; SGLang
    caps it the same way for prompt logprobs). A cached position is never computed again, so an
    ESamp request whose prompt was cached by requests that did not ask for ESamp would warm-start on
    nothing and sample stock (gate shut): the outcome would depend on the cache's history. Such a
    request recomputes its prompt's last `warm_start_max_positions` positions once; after that the
    prompt's pairs are kept (esamp_sgl/core/prompt_pairs.py) and later requests use the cache as usual."""
    limit = original(req, input_len, *args, **kwargs)
    runtime = STATE.runtime
    if (runtime is None or limit == 0 or not runtime.config.prefill_warm_start or req.output_ids
            or not asks_for_esamp(req) or prompt_key_of(req) in runtime.prompt_pairs):
        return limit
    return min(limit, max(0, len(req.origin_input_ids) - runtime.config.warm_start_max_positions))


# -- request end ----------------------------------------------------------------------------------
def _leave(req) -> None:
    runtime = STATE.runtime
    if runtime is None:
        return
    telemetry = runtime.leave(req.rid)
    if telemetry is not None:
        info = dict(req.customized_info or {})
        info[TELEMETRY_KEY] = [telemetry]
        req.customized_info = info


def leave_on_finish(result, req, tree_cache, *args, **kwargs):
    """AFTER release_kv_cache; it also runs on retraction, when the request is not finished."""
    if req.finished():
        _leave(req)
    return result


def leave_on_abort(result, scheduler, req):
    """AFTER Scheduler._release_aborted_request (requests aborted while waiting, e.g. retracted)."""
    _leave(req)
    return result


def telemetry_is_request_level(original, streamer, key):
    return key == TELEMETRY_KEY or original(streamer, key)


# -- tokenizer side: validation (HTTP 400) and group ids --------------------------------------------
def _check_custom_params_shape(params) -> None:
    """SGLang's scheduler crashes on nested custom_params (msgspec rejects them only there): refuse
    them here, in the tokenizer process, where a ValueError becomes HTTP 400."""
    if params is None:
        return
    if not isinstance(params, dict):
        raise ValueError(f"custom_params must be a JSON object, got {type(params).__name__}")
    scalar = (str, int, float, bool, type(None))
    for key, value in params.items():
        if isinstance(value, scalar):
            continue
        if isinstance(value, list) and all(isinstance(v, scalar) for v in value):
            continue
        if isinstance(value, dict) and all(isinstance(v, scalar) for v in value.values()):
            continue
        raise ValueError(
            f"custom_params.{key} must be a JSON scalar, a list of scalars or a flat object of scalars"
        )


def validate_custom_params(result, sampling_params, *args, **kwargs):
    """AFTER SamplingParams.verify (tokenizer process)."""
    from runtime_patch.grouping import tokenizer_grouping

    _check_custom_params_shape(sampling_params.custom_params)
    request = ExploreRequest.from_custom_params(sampling_params.custom_params)  # raises ValueError -> 400
    check_request_profile(request, tokenizer_grouping().config)  # the server's settings, read once
    return result


def stamp_group(result, tokenizer_manager, obj, *args, **kwargs):
    """AFTER TokenizerManager._create_tokenized_object: give an exploring request without
    `esamp_group` a group id: its own (`req-<rid>`), or its prompt's under `group_by = prompt`; and
    mark every request as exploring under `explore_all` (runtime_patch/grouping.py). n>1 siblings
    are copies of this object, so they share the group."""
    from runtime_patch.grouping import tokenizer_grouping

    tokenizer_grouping().stamp(result, obj)
    return result


def chat_response_telemetry(result, serving, request, ret, *args, **kwargs):
    """AFTER OpenAIServingChat._build_chat_response: ESamp telemetry per choice in `metadata`."""
    per_choice = [(item.get("meta_info") or {}).get(TELEMETRY_KEY) for item in ret]
    if result is None or not hasattr(result, "metadata") or not any(per_choice):
        return result
    result.metadata = {**(result.metadata or {}), TELEMETRY_KEY: [t[0] if t else None for t in per_choice]}
    return result
