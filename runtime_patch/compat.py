"""The SGLang symbols esamp-sgl touches, checked at plugin load (docs/touch-points.md has one row each)."""

from __future__ import annotations

import pkgutil

SUPPORTED_SGLANG = "0.5.23"

# dotted path -> why we need it (docs/touch-points.md says what breaks if it changes)
TOUCH_POINTS: dict[str, str] = {
    "sglang.srt.layers.sampler.Sampler._sample_from_probs": "the esamp sampler overrides it",
    "sglang.srt.layers.sampler.Sampler.forward": "the esamp sampler wraps it",
    "sglang.srt.sampling.sampling_batch_info.SamplingBatchInfo.sampling_mask_batch_indices":
        "rows whose sampling mask SGLang captures inside the stock draw",
    "sglang.srt.layers.sampler._SamplingMaskCapture.selected_weight":
        "cleared for redrawn rows, so SGLang reads the emitted token's weight",
    "sglang.srt.layers.logits_processor.SamplingMaskStatus": "INVALID for a greedy row whose token ESamp moved",
    "sglang.srt.layers.logits_processor.LogitsProcessorOutput.sampling_mask_output":
        "its statuses are rewritten on the all-greedy path",
    "sglang.srt.layers.sampler.register_sampler_backend": "registers `--sampling-backend esamp`",
    "sglang.srt.arg_groups.resolution_hooks.register_resolution_hook": "keeps `esamp` on --device cpu",
    "sglang.srt.arg_groups.overrides.declare_resolution": "keeps `esamp` on --device cpu",
    "sglang.srt.arg_groups.overrides.resolving_view": "reads the requested backend during resolution",
    "sglang.srt.plugins.hook_registry.HookRegistry": "installs the hooks below",
    "sglang.srt.runtime_context.get_exec": "scoped stock-backend override for the stock sampling path",
    "sglang.srt.model_executor.model_runner.ModelRunner.init_attention_backends": "taps + model handles",
    "sglang.srt.layers.logits_processor.LogitsProcessor._get_hidden_states_to_store": "final-norm target",
    "sglang.srt.layers.logits_processor.LogitsProcessor.forward":
        "every prompt position, for the warm start; latent mixing before the LM head (decode)",
    "sglang.srt.layers.logits_processor.LogitsProcessor._get_logits": "projects the mixed final states",
    "sglang.srt.managers.schedule_batch.Req._compute_max_prefix_len":
        "an ESamp prompt cached without its warm-start pairs is recomputed",
    "sglang.srt.sampling.sampling_batch_info.SamplingBatchInfo.adjusted_from_schedule_batch": "row metadata",
    "sglang.srt.sampling.sampling_batch_info.SamplingBatchInfo.adjusted_filter_batch": "row metadata",
    "sglang.srt.sampling.sampling_batch_info.SamplingBatchInfo.adjusted_merge_batch": "row metadata",
    "sglang.srt.sampling.sampling_batch_info.SamplingBatchInfo.copy_for_forward": "row metadata",
    "sglang.srt.sampling.sampling_params.SamplingParams.verify": "HTTP 400 for bad custom_params",
    "sglang.srt.managers.tokenizer_manager.TokenizerManager._create_tokenized_object": "automatic group id",
    "sglang.srt.mem_cache.common.release_kv_cache": "a finished request leaves its group",
    "sglang.srt.managers.scheduler.Scheduler._release_aborted_request": "an aborted request leaves its group",
    "sglang.srt.managers.scheduler_components.output_streamer.SchedulerOutputStreamer"
    ".is_request_level_customized_info_key": "per-request telemetry in meta_info",
    "sglang.srt.entrypoints.openai.serving_chat.OpenAIServingChat._build_chat_response": "OpenAI telemetry",
    "sglang.srt.managers.io_struct.TokenizedGenerateReqInput.routed_dp_rank": "group-affine DP routing",
    "sglang.srt.managers.data_parallel_controller.DataParallelController.maybe_external_dp_rank_routing":
        "every DP load-balance method honours routed_dp_rank first",
    "sglang.srt.layers.sampler.SYNC_TOKEN_IDS_ACROSS_TP": "required under --tp-size > 1",
    "sglang.srt.layers.sampler.Sampler._sync_token_ids_across_tp": "TP token sync of explored greedy ids",
    "sglang.srt.layers.vocab_parallel_embedding.VocabParallelEmbeddingShardIndices":
        "where a TP rank's LM-head rows sit in the vocabulary",
    **{f"sglang.srt.managers.scheduler_components.weight_updater.SchedulerWeightUpdaterManager.{m}":
       "online weight updates re-bind the LM head" for m in ("update_weights_from_disk", "update_weights_from_tensor",
                                                           "update_weights_from_distributed", "update_weights_from_ipc")},
    "sglang.srt.managers.tokenizer_manager.TokenizerManager.generate_request": "routing key header on /generate",
    "sglang.srt.managers.io_struct.GenerateReqInput.routing_key": "a routing key names the group",
}

# The modules that keep their own list: runtime_patch/serving.py (the 400 without the esamp backend,
# telemetry on every response path), frontend.py (sglang.lang) and the sgl_kernel stand-in.
from runtime_patch.cpu_compat import TOUCH_POINTS as _STANDIN_TOUCH_POINTS  # noqa: E402
from runtime_patch.frontend import TOUCH_POINTS as _FRONTEND_TOUCH_POINTS  # noqa: E402
from runtime_patch.serving import TOUCH_POINTS as _SERVING_TOUCH_POINTS  # noqa: E402

for _points in (_SERVING_TOUCH_POINTS, _FRONTEND_TOUCH_POINTS, _STANDIN_TOUCH_POINTS):
    TOUCH_POINTS.update(_points)


class IncompatibleSGLang(RuntimeError):
    pass


def self_check() -> None:
    """Fail with a message naming the missing symbol and the supported SGLang version."""
    import sglang

    version = getattr(sglang, "__version__", "unknown")
    missing = []
    for dotted in TOUCH_POINTS:
        try:
            pkgutil.resolve_name(dotted)  # what HookRegistry.apply_hooks resolves targets with
        except (ImportError, AttributeError):
            missing.append(dotted)
    if missing:
        raise IncompatibleSGLang(
            f"esamp-sgl supports sglang=={SUPPORTED_SGLANG}; the installed sglang {version} lacks "
            + ", ".join(missing)
        )
