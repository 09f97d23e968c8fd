"""Latent mixing (the paper's App. E.2) and the paper's noise control.

With no filter, the paper mixes in latent space, h_mix = (1+β)·h − β·ĥ, and projects once with the LM
head: W_U·h_mix = W_U·h + β·W_U·(h − ĥ). Here the model's own (processed, temperature-scaled) scores
ℓ stand for W_U·h/T, so one projection of the error e = h − ĥ gives the same scores,
ℓ' = ℓ + β·W_U·e/T — equal to (1+β)·ℓ − β·W_U·ĥ/T when ℓ = W_U·h/T — and SGLang's logit processors
(penalties, logit bias, grammar masks) stay applied once, as they are to W_U·h_mix in the paper.

The noise control (Tables 10–11) replaces e by Gaussian noise ε of the same per-row norm: the
same size of tilt, no direction.
"""

from __future__ import annotations

import torch
from torch import Tensor


def error_noise(target: Tensor, h_hat: Tensor, generator: torch.Generator | None) -> Tensor:
    """ε [R, H] fp32: Gaussian, rescaled to ‖h − ĥ‖ per row."""
    error = target.float() - h_hat
    eps = torch.randn(error.shape, generator=generator, device=error.device, dtype=torch.float32)
    scale = torch.linalg.vector_norm(error, dim=-1, keepdim=True) / torch.linalg.vector_norm(
        eps, dim=-1, keepdim=True).clamp(min=1e-12)
    return eps * scale


def latent_scores(scaled_logits: Tensor, lm_head_weight: Tensor, vector: Tensor, temperature: Tensor,
                  beta: Tensor) -> Tensor:
    """ℓ' = ℓ + β·W_U·v/T over the whole vocabulary ([R, V] fp32). ℓ: scaled logits or log-probs
    [R, V] (a per-row constant does not matter); v [R, H]; temperature, beta [R]."""
    proj = torch.mm(vector.to(lm_head_weight.dtype), lm_head_weight.t()).float()  # [R, V], one GEMM
    coef = (beta.float() / temperature.float()).unsqueeze(-1)
    return torch.addcmul(scaled_logits.float(), proj, coef)
