"""Diversity and quality metrics on one prompt's set of samples (pure functions, no engine)."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def mean_output_nll(input_token_logprobs: Sequence[Sequence], output_len: int) -> float:
    """Mean negative log-likelihood per token of a sample's last `output_len` tokens, from SGLang's
    `meta_info["input_token_logprobs"]` ((logprob, token id, text) per position; None where a position
    has no logprob) of a teacher-forced prefill of prompt + sample."""
    logprobs = [lp for lp, _, _ in input_token_logprobs if lp is not None]
    logprobs = logprobs[-output_len:]
    return -sum(logprobs) / max(len(logprobs), 1)


def vendi_score(embeddings: np.ndarray) -> float:
    """exp(entropy of the eigenvalues of K/n), K_ij = cos(e_i, e_j): 1 (all alike) … n (orthogonal)."""
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"embeddings must be a non-empty [n, dim] array, got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x = x / np.where(norms == 0, 1.0, norms)
    eig = np.linalg.eigvalsh(x @ x.T / x.shape[0])
    eig = eig[eig > 1e-12]
    return float(math.exp(-np.sum(eig * np.log(eig))))


def mean_pairwise_cosine_distance(embeddings: np.ndarray) -> float:
    """1 − mean over pairs i<j of cos(e_i, e_j); 0 for fewer than two samples."""
    x = np.asarray(embeddings, dtype=np.float64)
    n = x.shape[0]
    if n < 2:
        return 0.0
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    sim = x @ x.T
    return float(1.0 - (sim.sum() - np.trace(sim)) / (n * (n - 1)))


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Unique word n-grams / all word n-grams across the set (1.0 = no n-gram repeated)."""
    grams = [tuple(words[i:i + n]) for words in (t.split() for t in texts)
             for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def repetition_rate(token_ids: Sequence[int], n: int = 3) -> float:
    """Within one sample: the fraction of its token n-grams that repeat an earlier n-gram of it."""
    grams = [tuple(token_ids[i:i + n]) for i in range(len(token_ids) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct: 1 − C(n−c, k)/C(n, k)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def mean_and_sem(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (0 for fewer than two values); NaNs are dropped."""
    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], dtype=np.float64)
    if v.size == 0:
        return math.nan, math.nan
    sem = float(v.std(ddof=1) / math.sqrt(v.size)) if v.size > 1 else 0.0
    return float(v.mean()), sem
