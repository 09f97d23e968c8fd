"""Named profiles: complete bundles of the settings that define an ESamp method.

* `paper`     — the method as arXiv 2604.24927v1 specifies it (§4, Alg. 1, App. B–E;
                shared/reference/paper-method-and-results.md): source = output of the first decoder
                layer (the residual stream entering layer 1), target = the final-norm state the LM
                head reads, a two-block gated-SwiGLU Distiller with intermediate width 384 and no
                norm, MSE, Adam lr 4e-4 / eps 1e-4 / gradient-norm clip 0.5, one step per decode
                token over every sequence of the group, decode tokens only (no warm start),
                ℓ' = (1+β)·ℓ − β·d with β = 0.25, no tilt bound, no gate, and rows without a filter
                mixed in latent space (one projection of the error; the paper's App. E.2).
* `reference` — the official release's defaults (tLLM on vLLM; esamp-reference-implementation.md):
                layer 0's input-norm output → the last layer's input-norm output, a rank-64
                low-rank gated residual with output LayerNorm, AdamW lr 1e-3 with PyTorch's
                defaults (eps 1e-8, weight decay 0.01), the (1+β) rule at its starter β 0.8 after
                the filters, no warm start, gate or bound. Two departures remain: the release
                trains on the first sample of each prompt only (here every sample of the group
                trains) and does not divide d by T (the same at T = 1).
* `bounded`   — esamp-sgl's own variant (the default before the paper's method was built): the
                residual stream entering layer 2, rank-64 low-rank Distiller, Adam lr 1e-3, a 50-step
                prefill warm start, the `compensated` rule ℓ − β/(1+β)·g·δ̃ at β 1 with d bounded to
                the model's own spread (δ̃) and scaled by the group's fit gate g.

A profile names a value for every field in `PROFILE_FIELDS`; `ESampConfig(profile=NAME, **fields)`
starts from the profile and lets single fields override it. Torch-free (the config imports it).
"""

from __future__ import annotations

from typing import Any

# The fields that make up a method; the others (bank size, seeds, grouping, kernels) are operational.
PROFILE_FIELDS = (
    "rule", "beta", "distiller", "distiller_blocks", "rank", "source_layer", "source_site", "target_site",
    "optimizer", "lr", "adam_eps", "grad_clip", "weight_decay", "train_steps_per_decode", "train_every", "training",
    "prefill_warm_start", "svd_warm_start", "fit_gate", "tilt_bound", "latent_mixing",
)

PROFILES: dict[str, dict[str, Any]] = {
    "paper": {
        "rule": "contrastive", "beta": 0.25,
        "distiller": "swiglu", "distiller_blocks": 2, "rank": 384,
        "source_layer": 1, "source_site": "residual", "target_site": "final_norm",
        "optimizer": "adam", "lr": 4e-4, "adam_eps": 1e-4, "grad_clip": 0.5, "weight_decay": 0.0,
        "train_steps_per_decode": 1, "train_every": 1, "training": True,
        "prefill_warm_start": False, "svd_warm_start": False,
        "fit_gate": False, "tilt_bound": 0.0, "latent_mixing": True,
    },
    "reference": {
        "rule": "contrastive", "beta": 0.8,
        "distiller": "lowrank", "distiller_blocks": 1, "rank": 64,
        "source_layer": 0, "source_site": "first_input_norm", "target_site": "last_input_norm",
        "optimizer": "adamw", "lr": 1e-3, "adam_eps": 1e-8, "grad_clip": 0.0, "weight_decay": 0.01,
        "train_steps_per_decode": 1, "train_every": 1, "training": True,
        "prefill_warm_start": False, "svd_warm_start": False,
        "fit_gate": False, "tilt_bound": 0.0, "latent_mixing": False,
    },
    "bounded": {
        "rule": "compensated", "beta": 1.0,
        "distiller": "lowrank", "distiller_blocks": 1, "rank": 64,
        "source_layer": 2, "source_site": "residual", "target_site": "final_norm",
        "optimizer": "adam", "lr": 1e-3, "adam_eps": 1e-8, "grad_clip": 0.0, "weight_decay": 0.0,
        "train_steps_per_decode": 1, "train_every": 1, "training": True,
        "prefill_warm_start": True, "svd_warm_start": False,
        "fit_gate": True, "tilt_bound": 1.0, "latent_mixing": False,
    },
}

# The server's profile when none is named (ESAMP_SGL_PROFILE / ESampConfig(profile=...)).
DEFAULT_PROFILE = "bounded"


def profile_names() -> tuple[str, ...]:
    return tuple(PROFILES)

