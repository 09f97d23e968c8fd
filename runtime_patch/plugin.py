"""SGLang plugin entry point (`sglang.srt.plugins`: esamp = runtime_patch.plugin:load).

SGLang calls `load()` in the CLI before argument parsing, in `Engine.__init__`, and first thing in
every scheduler / detokenizer / DP-controller process. It registers the `esamp` sampler backend,
the server-argument resolution steps it needs, and the hooks in `runtime_patch.hooks`.
"""

from __future__ import annotations

import logging

from runtime_patch.backend import BACKEND

logger = logging.getLogger("esamp_sgl.plugin")

_loaded = False


def _register_resolution_hooks() -> None:
    from sglang.srt.arg_groups.overrides import declare_resolution, resolving_view
    from sglang.srt.arg_groups.resolution_hooks import register_resolution_hook

    @register_resolution_hook("handle_cpu_backends")
    def keep_esamp_on_cpu(server_args, previous):
        # SGLang forces `pytorch` on --device cpu; our sampler wraps that path, so keep `esamp`.
        requested = resolving_view(server_args).sampling_backend
        previous(server_args)
        if requested == BACKEND:
            declare_resolution(server_args, "esamp:keep_backend", sampling_backend=BACKEND)

    @register_resolution_hook("handle_return_hidden_states_mode")
    def capture_last_hidden_states(server_args, previous):
        # The taps reach the sampler only if every forward captures the last position's states.
        view = resolving_view(server_args)
        if view.sampling_backend != BACKEND:
            return previous(server_args)
        if view.return_hidden_states_mode == "full":
            raise ValueError("--sampling-backend esamp needs --return-hidden-states-mode last (or unset), got full")
        if view.enable_return_aux_hidden_states:
            raise ValueError("--sampling-backend esamp owns the aux hidden-state capture; "
                             "drop --enable-return-aux-hidden-states")
        declare_resolution(server_args, "esamp:capture_last", return_hidden_states_mode="last",
                           enable_return_hidden_states=True)


def _register_hooks() -> None:
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    from runtime_patch import dp_routing, head_mix, hooks, taps

    after, around = HookType.AFTER, HookType.AROUND
    for target, fn, kind in (
        ("sglang.srt.model_executor.model_runner.ModelRunner.init_attention_backends", hooks.bind_model, after),
        ("sglang.srt.layers.logits_processor.LogitsProcessor._get_hidden_states_to_store",
         taps.append_final_norm_state, around),
        ("sglang.srt.layers.logits_processor.LogitsProcessor.forward", hooks.on_logits_forward, around),
        ("sglang.srt.layers.logits_processor.LogitsProcessor._get_logits", head_mix.project_mixed, around),
        ("sglang.srt.managers.schedule_batch.Req._compute_max_prefix_len", hooks.recompute_uncaptured_prompt, around),
        ("sglang.srt.sampling.sampling_batch_info.SamplingBatchInfo.adjusted_from_schedule_batch",
         hooks.rows_from_schedule_batch, after),
        ("sglang.srt.sampling.sampling_batch_info.SamplingBatchInfo.adjusted_filter_batch", hooks.rows_filter, after),
        ("sglang.srt.sampling.sampling_batch_info.SamplingBatchInfo.adjusted_merge_batch", hooks.rows_merge, after),
        ("sglang.srt.sampling.sampling_batch_info.SamplingBatchInfo.copy_for_forward",
         hooks.rows_copy_for_forward, after),
        ("sglang.srt.mem_cache.common.release_kv_cache", hooks.leave_on_finish, after),
        ("sglang.srt.managers.scheduler.Scheduler._release_aborted_request", hooks.leave_on_abort, after),
        ("sglang.srt.managers.scheduler_components.output_streamer.SchedulerOutputStreamer"
         ".is_request_level_customized_info_key", hooks.telemetry_is_request_level, around),
        ("sglang.srt.sampling.sampling_params.SamplingParams.verify", hooks.validate_custom_params, after),
        ("sglang.srt.managers.tokenizer_manager.TokenizerManager._create_tokenized_object", hooks.stamp_group, after),
        # after stamp_group (AFTER hooks run in registration order): routes by the stamped group id
        ("sglang.srt.managers.tokenizer_manager.TokenizerManager._create_tokenized_object",
         dp_routing.route_group_to_dp_rank, after),
        ("sglang.srt.entrypoints.openai.serving_chat.OpenAIServingChat._build_chat_response",
         hooks.chat_response_telemetry, after),
    ):
        HookRegistry.register(target, fn, kind)
    # online weight updates (RL loops): re-bind the LM head, restart live groups
    from runtime_patch import weight_sync

    for method in weight_sync.UPDATE_METHODS:
        HookRegistry.register(f"{weight_sync.MANAGER}.{method}", weight_sync.rebind_after_weight_update, after)
    # /generate: the X-SMG-Routing-Key header as SGLang's routing_key (a group id, runtime_patch/grouping.py)
    from runtime_patch import grouping

    HookRegistry.register("sglang.srt.managers.tokenizer_manager.TokenizerManager.generate_request",
                          grouping.routing_key_from_header, HookType.BEFORE)
    # what a client sees (runtime_patch/serving.py): 400 without the esamp backend, telemetry on every path
    from runtime_patch import serving

    for target, fn, kind in serving.HOOK_SPECS:
        HookRegistry.register(target, fn, HookType[kind])


def load() -> None:
    """Entry point. Raises (and SGLang logs) if the installed SGLang lacks a symbol we touch."""
    global _loaded
    if _loaded:
        return
    from sglang.srt.layers.sampler import register_sampler_backend

    from runtime_patch.compat import self_check
    from runtime_patch.sampler import ESampSampler

    self_check()
    register_sampler_backend(BACKEND, ESampSampler)
    _register_resolution_hooks()
    _register_hooks()
    _loaded = True
