"""A decode forward's last part as SGLang runs it, through the esamp hooks: the batch (rows 0 and 1
explore in group "g", row 2 is stock) and LogitsProcessor.forward with the LM head stood in by a sum,
recording the states the head projected. Shared by the head-mix and beside tests."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from esamp_sgl.core.config import ExploreRequest
from runtime_patch import head_mix
from runtime_patch.rows import ROWS_ATTR, BatchRows

ROWS = 3
REQUEST = ExploreRequest(group="g")


def join_rows(runtime) -> None:
    """Rows 0 and 1 ("a", "b") join group "g"."""
    runtime.join("a", REQUEST)
    runtime.join("b", REQUEST)


def decode_batch(min_p: list[float], mode: str = "DECODE") -> SimpleNamespace:
    """The forward batch SGLang hands its hooks: forward mode and sampling info with the rows."""
    from sglang.srt.model_executor.forward_batch_info import ForwardMode

    info = SimpleNamespace(temperatures=torch.ones(ROWS, 1), top_ks=torch.full((ROWS,), 1 << 30),
                           top_ps=torch.ones(ROWS), min_ps=torch.tensor(min_p), need_top_k_sampling=False,
                           need_top_p_sampling=False, need_min_p_sampling=any(m > 0 for m in min_p))
    setattr(info, ROWS_ATTR, BatchRows(("a", "b", "c"), (REQUEST, REQUEST, None)))
    return SimpleNamespace(forward_mode=getattr(ForwardMode, mode), sampling_info=info)


def logits_forward(runtime, batch, final: torch.Tensor, aux) -> tuple[torch.Tensor, SimpleNamespace]:
    """LogitsProcessor.forward of a decode batch through the head-mix hooks: (the states the LM head
    projected, the forward's output)."""
    projected = []

    def get_logits(processor, states, *args, **kwargs):
        projected.append(states)
        return states.sum(-1)  # stands for the LM head; the tests read `projected`

    def forward(processor, input_ids, hidden_states, lm_head, logits_metadata, *args, **kwargs):
        # SGLang's decode: the pruned states are the final states themselves
        return SimpleNamespace(next_token_logits=head_mix.project_mixed(get_logits, processor, hidden_states))

    out = head_mix.mix_on_decode(runtime, forward, None, None, final, None, batch, aux)
    return projected[0], out
