"""Hidden-state taps: SGLang's aux-hidden-state capture, switched on before any graph capture.

`model.set_eagle3_layers_to_capture(ids)` makes the model's layer loop record the residual stream
entering layer `id + 1` (index 0 = the embedding output), and `--return-hidden-states-mode last`
(forced by the plugin) makes every forward, CUDA-graph replays included, hand the sampler those
streams for each row's sampled position as one `[rows, K*H]` tensor. This is traced model code, so it
survives CUDA graphs and torch.compile and costs no device-to-host copy.

With aux capture on, SGLang stores the aux streams *instead of* the final normalised state, so the
`final_norm` target is appended by an AROUND hook on `LogitsProcessor._get_hidden_states_to_store`
(also inside the forward, also captured).

The prefill warm start needs every prompt position, not only the last: `prompt_positions` slices
them from the logits processor's inputs (all positions of an extend), in the same layout.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from esamp_sgl.core.config import ESampConfig

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM")

# Set in the scheduler process once the taps are configured; read inside the forward.
APPEND_FINAL_NORM = {"enabled": False}


@dataclass
class Taps:
    capture_indices: list[int]  # residual-stream indices recorded by the model (0 = embeddings)
    hidden_size: int
    source_index: int
    source_norm: torch.nn.Module | None  # first layer's input norm (reference's source), or None
    target_index: int | None  # None = the appended final-norm state
    target_norm: torch.nn.Module | None  # last layer's input norm (reference's target), or None

    @property
    def width(self) -> int:
        return self.hidden_size * (len(self.capture_indices) + (self.target_index is None))

    def _column(self, hidden: torch.Tensor, index: int | None) -> torch.Tensor:
        k = len(self.capture_indices) if index is None else self.capture_indices.index(index)
        return hidden[:, k * self.hidden_size:(k + 1) * self.hidden_size]

    def split(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[rows, width] -> (source [rows, H], target [rows, H])."""
        if hidden is None or hidden.dim() != 2 or hidden.shape[1] != self.width:
            shape = None if hidden is None else tuple(hidden.shape)
            raise RuntimeError(f"esamp: expected captured hidden states [rows, {self.width}], got {shape}")
        source = self._column(hidden, self.source_index)
        target = self._column(hidden, self.target_index)
        if self.source_norm is not None:
            source = self.source_norm(source.contiguous())
        if self.target_norm is not None:
            target = self.target_norm(target.contiguous())
        return source, target


def configure_taps(model: torch.nn.Module, config: ESampConfig, num_layers: int, hidden_size: int) -> Taps:
    """Switch on aux capture for the configured source/target sites. Call before graph capture."""
    arch = type(model).__name__
    if arch not in SUPPORTED_ARCHITECTURES or not hasattr(model, "set_eagle3_layers_to_capture"):
        raise RuntimeError(
            f"--sampling-backend esamp supports {', '.join(SUPPORTED_ARCHITECTURES)}; this model is {arch}"
        )
    config.validate_for_model(hidden_size, num_layers)
    layers = model.model.layers
    if config.source_site == "residual":
        source_index, source_norm = config.source_layer, None
    else:  # the reference's source: the first layer's input-norm output (a function of the token only)
        source_index, source_norm = 0, layers[0].input_layernorm
    if config.target_site == "final_norm":
        target_index, target_norm = None, None
    else:  # the reference's target: the last layer's input-norm output
        target_index, target_norm = num_layers - 1, layers[num_layers - 1].input_layernorm
    indices = sorted({source_index} | ({target_index} if target_index is not None else set()))
    model.set_eagle3_layers_to_capture([i - 1 for i in indices])  # the model adds 1 back
    if model.model.layers_to_capture != indices:
        raise RuntimeError(f"esamp: the model did not accept the taps {indices}")
    APPEND_FINAL_NORM["enabled"] = target_index is None
    return Taps(indices, hidden_size, source_index, source_norm, target_index, target_norm)


def prompt_positions(aux_hidden_states, hidden_states: torch.Tensor, start: int, count: int) -> torch.Tensor:
    """[count, width] taps of positions start .. start + count - 1 of an extend forward, laid out as
    the sampler receives the last position's: [aux streams | final normed state if appended]."""
    if isinstance(aux_hidden_states, torch.Tensor):
        parts = [aux_hidden_states[start:start + count]]
    else:
        parts = [h[start:start + count] for h in aux_hidden_states]
    if APPEND_FINAL_NORM["enabled"]:
        parts.append(hidden_states[start:start + count].to(parts[0].dtype))
    return torch.cat(parts, dim=-1)


def append_final_norm_state(original, self, hidden_states, hidden_states_before_norm, aux_hidden_states,
                            pruned_states, pruned_states_before_norm, aux_pruned_states, sample_indices,
                            logits_metadata):
    """AROUND hook on LogitsProcessor._get_hidden_states_to_store: [aux streams | final normed state]."""
    stored = original(self, hidden_states, hidden_states_before_norm, aux_hidden_states, pruned_states,
                      pruned_states_before_norm, aux_pruned_states, sample_indices, logits_metadata)
    if (
        APPEND_FINAL_NORM["enabled"]
        and aux_hidden_states is not None
        and stored is not None
        and logits_metadata.capture_hidden_mode.is_last()
    ):
        final = pruned_states[sample_indices] if sample_indices is not None else pruned_states
        stored = torch.cat([stored, final.to(stored.dtype)], dim=-1)
    return stored
