"""The paper's method (arXiv 2604.24927v1): the `paper` profile's settings, the SwiGLU Distiller with
Adam eps and gradient clipping against torch's own, latent mixing against the full-vocabulary rule,
and the noise control."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from esamp_sgl.core.config import ESampConfig, ExploreRequest, check_request_profile
from esamp_sgl.core.distiller import DistillerBank
from esamp_sgl.core.explorer import Explorer
from esamp_sgl.core.latent import error_noise
from esamp_sgl.core.plan import StepPlan
from esamp_sgl.core.step import StepBatch, explore_batch, latent_rows, mix_before_head, mix_latent, predict
from esamp_sgl.core.telemetry import Telemetry
from esamp_sgl.core.trainer import TestTimeTrainer
from runtime_patch.settings import load_server_config

# The paper's column, row by row (shared/reference/paper-method-and-results.md, §4, Alg. 1, App. E.2).
PAPER = {
    "source_layer": 1, "source_site": "residual",  # output of the first decoder layer
    "target_site": "final_norm",  # the state the LM head reads
    "distiller": "swiglu", "distiller_blocks": 2, "rank": 384,  # two gated SwiGLU blocks, intermediate 384
    "optimizer": "adam", "lr": 4e-4, "adam_eps": 1e-4, "grad_clip": 0.5, "weight_decay": 0.0,
    "train_steps_per_decode": 1, "train_every": 1, "training": True,  # a step per decode token, every sequence
    "prefill_warm_start": False, "svd_warm_start": False,  # decode tokens only, random init
    "rule": "contrastive", "beta": 0.25,  # (1+β)ℓ − βd, β = 0.25 for every task
    "fit_gate": False, "tilt_bound": 0.0,  # neither is in the paper
    "latent_mixing": True,  # no filter: h_mix = (1+β)h − βĥ, one projection
}
H, V = 16, 200


def test_the_paper_profile_resolves_to_the_papers_column_and_single_fields_override_it():
    cfg = ESampConfig(profile="paper")
    assert cfg.method() == PAPER
    assert cfg.profile_overrides() == {}
    tuned = ESampConfig(profile="paper", beta=0.5)
    assert tuned.method() == {**PAPER, "beta": 0.5} and tuned.profile_overrides() == {"beta": 0.5}
    served = load_server_config({"ESAMP_SGL_PROFILE": "paper", "ESAMP_SGL_LR": "0.001"})
    assert served.profile == "paper" and served.method() == {**PAPER, "lr": 0.001}
    assert ESampConfig().profile == "bounded" and ESampConfig().rule == "compensated"


def test_a_requests_profile_must_be_the_servers_and_a_bad_name_is_refused_by_name():
    with pytest.raises(ValueError, match=r"esamp_profile must be one of 'paper', 'reference', 'bounded'"):
        ExploreRequest.from_custom_params({"esamp": True, "esamp_profile": "papr"})
    request = ExploreRequest.from_custom_params({"esamp": True, "esamp_profile": "paper"})
    check_request_profile(request, ESampConfig(profile="paper"))
    with pytest.raises(ValueError, match=r"esamp_profile must be the server's profile 'bounded', got 'paper'"):
        check_request_profile(request, ESampConfig())


def test_swiglu_training_with_eps_and_clipping_equals_torch_adam_after_clip_grad_norm():
    """One decode step of two groups: each group's update is torch.optim.Adam(lr, eps) after
    clip_grad_norm_(0.5) of that group's own gradient, on the same SwiGLU written with autograd."""
    gen = torch.Generator().manual_seed(3)
    bank = DistillerBank(2, H, 8, "cpu", 0, distiller="swiglu", blocks=2)
    start = {k: v.clone() for k, v in bank.params.items()}
    tr = TestTimeTrainer(bank, Telemetry(2, H), lr=4e-4, adam_eps=1e-4, grad_clip=0.5)
    slots = torch.tensor([0, 1, 0, 1, 0])
    x = torch.randn(5, H, generator=gen) * 3
    y = torch.randn(5, H, generator=gen) * 3
    tr.schedule(x, y, slots, torch.ones(5, dtype=torch.bool))
    for slot in (0, 1):
        leaves = [torch.nn.Parameter(start[k][slot].clone()) for k in bank.layout]
        opt = torch.optim.Adam(leaves, lr=4e-4, eps=1e-4)
        p = {k: leaf.unsqueeze(0) for k, leaf in zip(bank.layout, leaves)}
        rows = slots == slot
        pred = bank.arch.forward(x[rows].unsqueeze(0), p).squeeze(0)
        (pred - y[rows]).square().mean(-1).mean().backward()
        norm = torch.nn.utils.clip_grad_norm_(leaves, 0.5)
        assert norm > 0.5  # the clip is active in this test
        opt.step()
        for k, leaf in zip(bank.layout, leaves):
            assert torch.allclose(bank.params[k][slot], leaf.detach(), atol=1e-6, rtol=1e-5), k


def _paper_explorer(**kw):
    w = torch.randn(V, H, generator=torch.Generator().manual_seed(5), dtype=torch.float32)
    return Explorer(ESampConfig(profile="paper", rank=8, max_groups=4, **kw), H, w, device="cpu")


def _unfiltered_batch(ex, gen, rows=4, rules="contrastive", temps=None, min_p=None):
    slot = ex.join_group("g")
    temps = torch.full((rows,), 0.7) if temps is None else temps
    target = torch.randn(rows, H, generator=gen)
    logits = (target @ ex.lm_head_weight.t()) / temps[:, None]  # ℓ = W·h/T: the model's own logits
    return StepBatch(logits=logits, temperatures=temps, top_k=torch.full((rows,), 1 << 30),
                     top_p=torch.ones(rows), min_p=torch.zeros(rows) if min_p is None else min_p,
                     is_greedy=torch.zeros(rows, dtype=torch.bool),
                     plan=StepPlan(slots=torch.full((rows,), slot, dtype=torch.int64),
                                   betas=torch.full((rows,), 0.25), any_active=True, rules=rules),
                     source=torch.randn(rows, H, generator=gen), target=target)


def test_latent_mixing_equals_the_full_vocabulary_rule():
    ex = _paper_explorer()
    batch = _unfiltered_batch(ex, torch.Generator().manual_seed(1))
    h_hat = predict(ex, batch)
    scores, applied = mix_latent(ex, batch, h_hat)
    d = (h_hat @ ex.lm_head_weight.t()) / batch.temperatures[:, None]
    want = 1.25 * batch.logits - 0.25 * d  # (1+β)·ℓ − β·W·ĥ/T, every token of the vocabulary
    assert scores.shape == (4, V) and applied.all()
    assert torch.allclose(scores, want, atol=1e-4, rtol=1e-5)
    # From the engine's probabilities (log p = ℓ + a per-row constant) the distribution is the same.
    from_probs = mix_latent(ex, StepBatch(**{**batch.__dict__, "logits": None,
                                             "probs": torch.softmax(batch.logits, -1)}), h_hat)[0]
    assert torch.allclose(torch.softmax(from_probs, -1), torch.softmax(want, -1), atol=1e-6)


def test_rows_with_a_filter_keep_the_candidate_path_and_draw_only_survivors():
    ex = _paper_explorer()
    gen = torch.Generator().manual_seed(2)
    min_p = torch.tensor([0.0, 0.2, 0.0, 0.2])
    batch = _unfiltered_batch(ex, gen, min_p=min_p)
    assert latent_rows(ex, batch).tolist() == [True, False, True, False]
    assert latent_rows(_paper_explorer(latent_mixing=False), batch) is None
    assert latent_rows(ex, StepBatch(**{**batch.__dict__, "plan": replace(batch.plan, rules="compensated")})) is None
    probs = torch.softmax(batch.logits, -1)
    survivors = probs >= 0.2 * probs.max(-1, keepdim=True).values
    for _ in range(20):
        tokens = explore_batch(ex, batch, lambda: torch.zeros(4, dtype=torch.int64))
        assert survivors[1, tokens[1]] and survivors[3, tokens[3]]
    assert ex.report("g")["predictions"] == 80


def test_the_noise_control_has_the_errors_norm_and_no_direction():
    gen = torch.Generator().manual_seed(4)
    target, h_hat = torch.randn(64, H, generator=gen) * 2, torch.randn(64, H, generator=gen)
    eps = error_noise(target, h_hat, torch.Generator().manual_seed(0))
    error = target - h_hat
    assert torch.allclose(eps.norm(dim=-1), error.norm(dim=-1), rtol=1e-5)
    cos = torch.nn.functional.cosine_similarity(eps, error, dim=-1)
    assert cos.mean().abs() < 0.1  # independent of the error's direction (H 16: sd of cos ≈ 0.25/√64)
    ex = _paper_explorer()
    batch = _unfiltered_batch(ex, gen, rules="noise")
    scores, _ = mix_latent(ex, batch, predict(ex, batch))
    tilt = (scores - batch.logits) * batch.temperatures[:, None] / 0.25  # = W·ε
    assert not torch.allclose(tilt, (batch.target - predict(ex, batch)) @ ex.lm_head_weight.t(), atol=1e-3)


def test_the_paper_profile_steers_from_the_first_token_and_trains_every_row():
    """No gate and no warm start: the paper's Distiller acts from its random init, and every sample of
    the group trains it once per decode step."""
    ex = _paper_explorer()
    gen = torch.Generator().manual_seed(8)
    batch = _unfiltered_batch(ex, gen)
    stock_calls = []
    explore_batch(ex, batch, lambda: stock_calls.append(1) or torch.zeros(4, dtype=torch.int64))
    tel = ex.report("g")
    assert stock_calls == [] and tel["tokens_reweighted"] == 4 and tel["steps_trained"] == 1
    assert tel["profile"] == "paper" and tel["settings"]["distiller"] == "swiglu"


def test_the_profiles_table_in_the_docs_is_generated_from_the_code():
    from pathlib import Path

    from esamp_sgl.core.config import profiles_markdown

    doc = (Path(__file__).resolve().parents[2] / "docs" / "profiles.md").read_text()
    assert profiles_markdown() in doc, "regenerate docs/profiles.md's table with profiles.profiles_markdown()"


def test_mixing_before_the_lm_head_gives_the_same_distribution_without_a_second_projection():
    """W_U·h_mix/T, the engine's own logits of the mixed state, equals mix_latent's scores up to a
    per-row constant; filtered and non-exploring rows keep h bit for bit."""
    ex = _paper_explorer()
    gen = torch.Generator().manual_seed(6)
    batch = _unfiltered_batch(ex, gen, min_p=torch.tensor([0.0, 0.2, 0.0, 0.0]))
    batch.slots[3] = -1  # a stock row in the same batch
    head = mix_before_head(ex, StepBatch(**{**batch.__dict__, "logits": None}))  # no logits in the forward
    assert head.mixed.tolist() == [True, False, True, False]
    assert torch.equal(head.hidden[1], batch.target[1]) and torch.equal(head.hidden[3], batch.target[3])
    engine = (head.hidden @ ex.lm_head_weight.t()) / batch.temperatures[:, None]
    after, _ = mix_latent(ex, batch, head.h_hat)
    for row in (0, 2):
        assert torch.allclose(torch.softmax(engine[row], -1), torch.softmax(after[row], -1), atol=1e-6)
    assert torch.allclose(head.h_hat[:3], predict(ex, batch)[:3], atol=1e-6)  # the step's own prediction


def test_a_non_finite_prediction_is_not_mixed_and_keeps_the_row_finite():
    ex = _paper_explorer()
    batch = _unfiltered_batch(ex, torch.Generator().manual_seed(7))
    ex.bank.flat[0, :5] = float("nan")  # the group's Distiller predicts NaN
    head = mix_before_head(ex, StepBatch(**{**batch.__dict__, "logits": None}))
    assert not head.mixed.any() and torch.equal(head.hidden, batch.target)


def test_premixed_rows_keep_the_engines_draw_and_still_count_and_train():
    """The step after a mix before the head: the engine's token stands for the mixed rows (ESamp draws
    nothing for them), the telemetry counts them as explored, the Distiller trains on h (not h_mix)."""
    ex = _paper_explorer()
    gen = torch.Generator().manual_seed(8)
    batch = _unfiltered_batch(ex, gen, min_p=torch.tensor([0.0, 0.0, 0.2, 0.0]))
    head = mix_before_head(ex, StepBatch(**{**batch.__dict__, "logits": None}))
    before = ex.bank.flat[0].clone()
    state = ex.generator.get_state()
    engine_tokens = torch.tensor([5, 6, 7, 8])
    mixed = StepBatch(**{**batch.__dict__, "h_hat": head.h_hat, "premixed": head.mixed})
    tokens = explore_batch(ex, mixed, lambda: engine_tokens)
    assert tokens[[0, 1, 3]].tolist() == [5, 6, 8]  # the mixed rows: the engine's draw
    survivors = torch.softmax(batch.logits[2], -1) >= 0.2 * torch.softmax(batch.logits[2], -1).max()
    assert survivors[tokens[2]]  # the filtered row: ESamp's candidate draw
    tel = ex.report("g")
    # CPU: the latent and the candidate rows are two sub-steps, each trains once (explored_row_sets)
    assert tel["predictions"] == 4 and tel["tokens_reweighted"] == 4 and tel["steps_trained"] == 2
    assert not torch.equal(ex.bank.flat[0], before)
    assert not torch.equal(ex.generator.get_state(), state)  # only the filtered row drew


def test_an_unfiltered_batch_on_the_cuda_path_runs_no_candidate_set_and_no_second_projection():
    """The engine's flags say no row has a filter: after the mix before the head, the static (CUDA)
    path neither builds candidates nor projects anything over the vocabulary."""
    from esamp_sgl.bench.opcount import OpCounter

    ex = _paper_explorer()
    ex.host_reads.free = False  # the CUDA code path, on the CPU
    batch = _unfiltered_batch(ex, torch.Generator().manual_seed(9))
    batch = StepBatch(**{**batch.__dict__, "unfiltered": True})
    with OpCounter() as in_forward:
        head = mix_before_head(ex, StepBatch(**{**batch.__dict__, "logits": None}))
    mixed = StepBatch(**{**batch.__dict__, "h_hat": head.h_hat, "premixed": head.mixed})
    engine_tokens = torch.tensor([1, 2, 3, 4])
    with OpCounter() as counter:
        tokens = explore_batch(ex, mixed, lambda: engine_tokens)
    assert torch.equal(tokens, engine_tokens)
    assert not {"topk", "sort", "mm"} & set(counter.by_op), counter.by_op
    assert in_forward.host_reads == 0 and counter.host_reads == 0  # no sync inside the forward or after
