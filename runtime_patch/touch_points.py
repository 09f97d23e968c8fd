"""Every SGLang symbol esamp-sgl touches, in one table (docs/touch-points.md has a row for each).

A row is a target, its dotted path as `pkgutil.resolve_name` (and SGLang's HookRegistry) resolves it,
and why esamp-sgl needs it. A row with hooks is something esamp-sgl hooks or registers against;
a row without hooks is only used (read, called, subclassed). From this table:

* `plugin.load()` registers every server hook (`plugin_hooks()`), each row's hooks in the order listed:
  hooks on one target run in registration order (AFTER hooks wrap in that order, the last
  resolution hook runs outermost);
* `compat.self_check()` resolves every target at plugin load, so a missing one stops start-up;
* `frontend.apply()` wraps the `sglang.lang` rows (client side: HookRegistry runs only in servers).

Handlers are named as "module:attribute" and resolved when registered, so this module imports nothing
from the runtime (the compat check and the tests read it without loading torch or the hooks).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Iterator

from runtime_patch.backend import BACKEND


class Kind(Enum):
    """How a hook is installed."""

    BEFORE = "before"  # HookRegistry.register(target, handler, HookType.BEFORE), and so on
    AFTER = "after"
    AROUND = "around"
    RESOLUTION = "resolution"  # register_resolution_hook(name)(handler): wraps the resolution step `name`
    SAMPLER_BACKEND = "sampler_backend"  # register_sampler_backend(name, handler)
    FRONTEND = "frontend"  # frontend.apply() wraps the target with handler(original); not the plugin


HOOK_REGISTRY_KINDS = (Kind.BEFORE, Kind.AFTER, Kind.AROUND)


@dataclass(frozen=True)
class Hook:
    kind: Kind
    handler: str  # "module:attribute"
    name: str | None = None  # the key a name-keyed registry files it under (a resolution step, a backend)


@dataclass(frozen=True)
class TouchPoint:
    target: str
    why: str
    hooks: tuple[Hook, ...] = ()  # in registration order; empty: used, not hooked


def _hooks(kind: Kind, *handlers: str) -> tuple[Hook, ...]:
    return tuple(Hook(kind, handler) for handler in handlers)


_HOOKS = "runtime_patch.hooks:"
_SERVING = "runtime_patch.serving:"
_FRONTEND = "runtime_patch.frontend:"
_SAMPLER = "sglang.srt.layers.sampler"
_LOGITS = "sglang.srt.layers.logits_processor"
_BATCH_INFO = "sglang.srt.sampling.sampling_batch_info.SamplingBatchInfo"
_TOKENIZER = "sglang.srt.managers.tokenizer_manager"
_STREAMER = "sglang.srt.managers.scheduler_components.output_streamer"
_WEIGHT_UPDATER = "sglang.srt.managers.scheduler_components.weight_updater.SchedulerWeightUpdaterManager"
_RESOLUTION = "sglang.srt.arg_groups"

TOUCH_POINTS: tuple[TouchPoint, ...] = (
    # -- the sampler ------------------------------------------------------------------------------------
    TouchPoint(f"{_SAMPLER}.register_sampler_backend", "registers `--sampling-backend esamp`",
               (Hook(Kind.SAMPLER_BACKEND, "runtime_patch.sampler:ESampSampler", name=BACKEND),)),
    TouchPoint(f"{_SAMPLER}.Sampler.forward", "the esamp sampler wraps it"),
    TouchPoint(f"{_SAMPLER}.Sampler._sample_from_probs", "the esamp sampler overrides it"),
    TouchPoint(f"{_BATCH_INFO}.sampling_mask_batch_indices",
               "rows whose sampling mask SGLang captures inside the stock draw"),
    TouchPoint(f"{_SAMPLER}._SamplingMaskCapture.selected_weight",
               "cleared for redrawn rows, so SGLang reads the emitted token's weight"),
    TouchPoint(f"{_LOGITS}.SamplingMaskStatus", "INVALID for a greedy row whose token ESamp moved"),
    TouchPoint(f"{_LOGITS}.LogitsProcessorOutput.sampling_mask_output",
               "its statuses are rewritten on the all-greedy path"),
    TouchPoint("sglang.srt.runtime_context.get_exec", "scoped stock-backend override for the stock sampling path"),
    # -- server-argument resolution ---------------------------------------------------------------------
    TouchPoint(f"{_RESOLUTION}.resolution_hooks.register_resolution_hook",
               "keeps `esamp` on --device cpu; forces the last position's hidden states",
               (Hook(Kind.RESOLUTION, "runtime_patch.plugin:keep_esamp_on_cpu", name="handle_cpu_backends"),
                Hook(Kind.RESOLUTION, "runtime_patch.plugin:capture_last_hidden_states",
                     name="handle_return_hidden_states_mode"))),
    TouchPoint(f"{_RESOLUTION}.overrides.declare_resolution", "keeps `esamp` on --device cpu"),
    TouchPoint(f"{_RESOLUTION}.overrides.resolving_view", "reads the requested backend during resolution"),
    TouchPoint("sglang.srt.plugins.hook_registry.HookRegistry", "installs the hooks below"),
    # -- the model forward ------------------------------------------------------------------------------
    TouchPoint("sglang.srt.model_executor.model_runner.ModelRunner.init_attention_backends",
               "taps + model handles", _hooks(Kind.AFTER, f"{_HOOKS}bind_model")),
    TouchPoint(f"{_LOGITS}.LogitsProcessor._get_hidden_states_to_store", "final-norm target",
               _hooks(Kind.AROUND, "runtime_patch.taps:append_final_norm_state")),
    TouchPoint(f"{_LOGITS}.LogitsProcessor.forward",
               "every prompt position, for the warm start; latent mixing before the LM head (decode)",
               _hooks(Kind.AROUND, f"{_HOOKS}on_logits_forward")),
    TouchPoint("sglang.srt.model_executor.model_runner.ModelRunner._forward_raw",
               "the forward batch, for the source tap's hook", _hooks(Kind.AROUND, f"{_HOOKS}track_forward")),
    TouchPoint("sglang.srt.layers.aux_hidden_states.AuxHiddenStateList.capture",
               "the source tap as soon as it exists: the prediction starts beside layers 2…L (CPU)",
               _hooks(Kind.AROUND, f"{_HOOKS}capture_source")),
    TouchPoint(f"{_LOGITS}.LogitsProcessor._get_logits", "projects the mixed final states",
               _hooks(Kind.AROUND, "runtime_patch.head_mix:project_mixed")),
    TouchPoint("sglang.srt.managers.schedule_batch.Req._compute_max_prefix_len",
               "an ESamp prompt cached without its warm-start pairs is recomputed",
               _hooks(Kind.AROUND, f"{_HOOKS}recompute_uncaptured_prompt")),
    # -- requests joining and leaving their groups; row metadata ----------------------------------------
    TouchPoint(f"{_BATCH_INFO}.adjusted_from_schedule_batch", "new requests join their groups; row metadata",
               _hooks(Kind.AFTER, f"{_HOOKS}join_new_requests", f"{_HOOKS}rows_from_schedule_batch")),
    TouchPoint(f"{_BATCH_INFO}.adjusted_filter_batch", "row metadata", _hooks(Kind.AFTER, f"{_HOOKS}rows_filter")),
    TouchPoint(f"{_BATCH_INFO}.adjusted_merge_batch", "row metadata", _hooks(Kind.AFTER, f"{_HOOKS}rows_merge")),
    TouchPoint(f"{_BATCH_INFO}.copy_for_forward", "row metadata",
               _hooks(Kind.AFTER, f"{_HOOKS}rows_copy_for_forward")),
    TouchPoint("sglang.srt.mem_cache.common.release_kv_cache", "a finished request leaves its group",
               _hooks(Kind.AFTER, f"{_HOOKS}leave_on_finish")),
    TouchPoint("sglang.srt.managers.scheduler.Scheduler._release_aborted_request",
               "an aborted request leaves its group", _hooks(Kind.AFTER, f"{_HOOKS}leave_on_abort")),
    # -- the tokenizer side: validation, group ids, DP routing ------------------------------------------
    TouchPoint("sglang.srt.sampling.sampling_params.SamplingParams.verify",
               "HTTP 400 for bad custom_params, and for an exploring request to a server without esamp",
               # validate the params first, then refuse a server without the esamp backend
               _hooks(Kind.AFTER, f"{_HOOKS}validate_custom_params", f"{_SERVING}require_esamp_backend")),
    TouchPoint("sglang.srt.runtime_context.RuntimeContext.config_leaf", "the server's sampling backend, for the 400"),
    TouchPoint(f"{_TOKENIZER}.TokenizerManager._create_tokenized_object", "automatic group id; group-affine DP",
               # route_group_to_dp_rank after stamp_group (AFTER hooks run in registration order): it routes
               # by the stamped group id
               _hooks(Kind.AFTER, f"{_HOOKS}stamp_group", "runtime_patch.dp_routing:route_group_to_dp_rank")),
    TouchPoint(f"{_TOKENIZER}.TokenizerManager.generate_request",
               "routing key header on /generate (X-SMG-Routing-Key as SGLang's routing_key)",
               _hooks(Kind.BEFORE, "runtime_patch.grouping:routing_key_from_header")),
    TouchPoint("sglang.srt.managers.io_struct.GenerateReqInput.routing_key", "a routing key names the group"),
    TouchPoint("sglang.srt.managers.io_struct.TokenizedGenerateReqInput.routed_dp_rank", "group-affine DP routing"),
    TouchPoint("sglang.srt.managers.data_parallel_controller.DataParallelController.maybe_external_dp_rank_routing",
               "every DP load-balance method honours routed_dp_rank first"),
    # -- telemetry on every response path (runtime_patch/serving.py) ------------------------------------
    TouchPoint(f"{_STREAMER}.SchedulerOutputStreamer.is_request_level_customized_info_key",
               "per-request telemetry in meta_info", _hooks(Kind.AROUND, f"{_HOOKS}telemetry_is_request_level")),
    TouchPoint(f"{_STREAMER}._GenerationStreamAccumulator.accept", "telemetry on the final streamed chunk",
               _hooks(Kind.AROUND, f"{_SERVING}telemetry_on_final_stream_chunk")),
    TouchPoint(f"{_TOKENIZER}._slice_streaming_output_meta_info", "telemetry not sliced per chunk",
               _hooks(Kind.AROUND, f"{_SERVING}telemetry_not_token_sliced")),
    TouchPoint(f"{_TOKENIZER}.TokenizerManager._coalesce_streaming_chunks", "telemetry not concatenated",
               _hooks(Kind.AROUND, f"{_SERVING}telemetry_not_concatenated")),
    TouchPoint("sglang.srt.entrypoints.openai.serving_chat.OpenAIServingChat._build_chat_response",
               "OpenAI chat telemetry", _hooks(Kind.AFTER, f"{_HOOKS}chat_response_telemetry")),
    TouchPoint("sglang.srt.entrypoints.openai.serving_completions.OpenAIServingCompletion._build_completion_response",
               "OpenAI completions telemetry", _hooks(Kind.AFTER, f"{_SERVING}completion_response_telemetry")),
    # -- tensor parallelism -----------------------------------------------------------------------------
    TouchPoint(f"{_SAMPLER}.SYNC_TOKEN_IDS_ACROSS_TP", "required under --tp-size > 1"),
    TouchPoint("sglang.srt.distributed.parallel_state.GroupCoordinator",
               "the TP group (get_parallel().tp_group): each rank explores its own groups, tokens exchanged"),
    TouchPoint("sglang.srt.layers.vocab_parallel_embedding.VocabParallelEmbeddingShardIndices",
               "where a TP rank's LM-head rows sit in the vocabulary"),
    # -- online weight updates (RL loops): re-bind the LM head, restart live groups ---------------------
    *(TouchPoint(f"{_WEIGHT_UPDATER}.{method}", "online weight updates re-bind the LM head",
                 _hooks(Kind.AFTER, "runtime_patch.weight_sync:rebind_after_weight_update"))
      for method in ("update_weights_from_disk", "update_weights_from_tensor", "update_weights_from_distributed",
                     "update_weights_from_ipc")),
    # -- the frontend language (runtime_patch/frontend.py; applied by esamp_sgl.lang) -------------------
    TouchPoint("sglang.lang.ir.SglSamplingParams.to_srt_kwargs", "frontend: custom_params reach the /generate body",
               _hooks(Kind.FRONTEND, f"{_FRONTEND}wrap_to_srt_kwargs")),
    TouchPoint("sglang.lang.ir.SglSamplingParams.clone", "frontend: a cloned generation keeps its custom_params",
               _hooks(Kind.FRONTEND, f"{_FRONTEND}wrap_clone")),
    TouchPoint("sglang.lang.interpreter.StreamExecutor._resolve_sampling_params",
               "frontend: gen()'s custom_params merged over the program default",
               _hooks(Kind.FRONTEND, f"{_FRONTEND}wrap_resolve_sampling_params")),
    TouchPoint("sglang.lang.interpreter.StreamExecutor.fork",
               "frontend: fork lineage, from which esamp_sgl.lang derives group ids",
               _hooks(Kind.FRONTEND, f"{_FRONTEND}wrap_fork")),
)


def hooks_of_kinds(*kinds: Kind) -> Iterator[tuple[str, Hook]]:
    """(target, hook) for every hook of these kinds, in table order."""
    for point in TOUCH_POINTS:
        for hook in point.hooks:
            if hook.kind in kinds:
                yield point.target, hook


def plugin_hooks() -> Iterator[tuple[str, Hook]]:
    """What `plugin.load()` registers: every hook but the frontend's."""
    return hooks_of_kinds(*(kind for kind in Kind if kind is not Kind.FRONTEND))
