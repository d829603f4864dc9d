"""Choosing the next token from a logits row, in numpy: greedy, temperature, top-k, top-p, min-p.

Each sequence has its own ``numpy.random.Generator`` (seeded from the request's seed and
the choice index), so a seeded request draws the same tokens whatever else shares its
steps. Logprobs are of the model's distribution before temperature and filters, as OpenAI
reports them (after logit_bias and the penalties, which change the model's row itself; see
``penalties.py``).
"""

from __future__ import annotations

import numpy as np

from gateway.core.generation import SamplingParams


def log_softmax(row: np.ndarray) -> np.ndarray:
    x = row.astype(np.float64)
    x = x - x.max()
    return x - np.log(np.exp(x).sum())


def is_greedy(params: SamplingParams) -> bool:
    """The most likely token every time: nothing is drawn, so no random generator is needed."""
    return params.temperature == 0.0 or params.top_k == 1


def sample_token(row: np.ndarray, params: SamplingParams, rng: np.random.Generator | None) -> int:
    if is_greedy(params):
        return int(row.argmax())  # the method: np.argmax's dispatch costs 4x the work on a small vocabulary
    if rng is None:
        raise ValueError("sampling with a temperature needs a random generator")
    x = row.astype(np.float64) / params.temperature
    vocab = x.shape[0]
    if 0 < params.top_k < vocab:
        kth = np.partition(x, vocab - params.top_k)[vocab - params.top_k]
        x = np.where(x < kth, -np.inf, x)
    probs = np.exp(x - x.max())
    probs /= probs.sum()
    if params.top_p < 1.0:
        order = np.argsort(-probs, kind="stable")
        sorted_probs = probs[order]
        # Keep the smallest prefix whose mass reaches top_p (always at least one token).
        before = np.cumsum(sorted_probs) - sorted_probs
        keep = order[before < params.top_p]
        kept = np.zeros_like(probs)
        kept[keep] = probs[keep]
        probs = kept / kept.sum()
    if params.min_p > 0.0:
        # vLLM's min-p: keep tokens at least min_p times as likely as the most likely one.
        probs = np.where(probs < params.min_p * probs.max(), 0.0, probs)
        probs /= probs.sum()
    cdf = np.cumsum(probs)
    return int(min(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"), vocab - 1))


def top_logprobs(logprobs: np.ndarray, k: int) -> list[tuple[int, float]]:
    """The k most likely tokens, most likely first."""
    if k <= 0:
        return []
    k = min(k, logprobs.shape[0])
    idx = np.argpartition(-logprobs, k - 1)[:k]
    idx = idx[np.argsort(-logprobs[idx], kind="stable")]
    return [(int(i), float(logprobs[i])) for i in idx]


def sequence_rng(seed: int | None, index: int) -> np.random.Generator:
    if seed is None:
        return np.random.default_rng()
    return np.random.default_rng([seed & 0xFFFFFFFFFFFFFFFF, index])
