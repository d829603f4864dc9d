"""Logit adjustments that depend on a sequence's own history, applied to a whole step's
batch of logits rows at once, in numpy: ``logit_bias``, ``repetition_penalty``,
``frequency_penalty`` and ``presence_penalty``, as OpenAI and vLLM define them.

Order (vLLM's): the bias is added to the model's logits first, then the repetition penalty
divides the positive logits (multiplies the negative ones) of every token seen in the
prompt or the output, then ``logit -= frequency * count + presence * (count > 0)`` over
the output tokens alone.

A sequence that asks for none of them has no ``SequencePenalties`` at all and its row is
never touched or copied. One that does keeps its output-token counts in a ``[vocab]``
array updated as each token is chosen (``add``), plus the list of distinct tokens seen, so a
step never recounts the history and touches only the columns those tokens name (work in
proportion to the tokens generated, not to the vocabulary).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from gateway.core.generation import SamplingParams


@dataclass(slots=True)
class SequencePenalties:
    """One sequence's penalty settings and the history they need."""

    presence: float = 0.0
    frequency: float = 0.0
    repetition: float = 1.0
    bias_ids: np.ndarray | None = None  # int64 token ids, unique
    bias_values: np.ndarray | None = None  # float32, same length
    counts: np.ndarray | None = None  # int32 [vocab]: how often each token was generated so far
    generated_ids: list[int] = field(default_factory=list)  # distinct generated tokens, first-seen order
    seen: np.ndarray | None = None  # bool [vocab]: in the prompt or generated (repetition penalty only)
    seen_ids: list[int] = field(default_factory=list)  # the True entries of ``seen``

    def add(self, token: int) -> None:
        """Count a chosen token (constant time)."""
        counts = self.counts
        if counts is None or not 0 <= token < counts.shape[0]:
            return
        if counts[token] == 0:
            self.generated_ids.append(token)
        counts[token] += 1
        seen = self.seen
        if seen is not None and not seen[token]:
            seen[token] = True
            self.seen_ids.append(token)


def penalties_for(params: SamplingParams, prompt_ids: np.ndarray, vocab: int) -> SequencePenalties | None:
    """The sequence's penalty state, or None when its sampling settings ask for none (the free path).
    ``logit_bias`` ids must already be checked to lie in ``0..vocab-1``."""
    history = params.presence_penalty != 0.0 or params.frequency_penalty != 0.0
    repetition = params.repetition_penalty != 1.0
    if not (history or repetition or params.logit_bias):
        return None
    state = SequencePenalties(params.presence_penalty, params.frequency_penalty, params.repetition_penalty)
    if params.logit_bias:
        state.bias_ids = np.fromiter((t for t, _ in params.logit_bias), dtype=np.int64, count=len(params.logit_bias))
        state.bias_values = np.fromiter((b for _, b in params.logit_bias), dtype=np.float32, count=len(params.logit_bias))
    if history or repetition:
        state.counts = np.zeros(vocab, dtype=np.int32)
    if repetition:
        ids = np.unique(np.asarray(prompt_ids, dtype=np.int64))
        ids = ids[(ids >= 0) & (ids < vocab)]
        state.seen = np.zeros(vocab, dtype=bool)
        state.seen[ids] = True
        state.seen_ids = ids.tolist()
    return state


def _columns(rows: list[int], columns: list[np.ndarray], width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row index, column, position in the concatenation) of every column below ``width``."""
    row_idx = np.repeat(np.asarray(rows, dtype=np.int64), [c.shape[0] for c in columns])
    col_idx = np.concatenate(columns) if columns else np.zeros(0, dtype=np.int64)
    keep = np.flatnonzero(col_idx < width)
    return row_idx[keep], col_idx[keep], keep


def apply_penalties(logits: np.ndarray, states: list[SequencePenalties]) -> np.ndarray:
    """Adjust ``logits`` (``[rows, width]``, row i belongs to ``states[i]``) and return it.

    Float32 (or wider) arrays are changed in place; other dtypes are promoted to float32 in a
    new array. Every (row, token) pair is touched at most once per adjustment (ids are unique
    within a row), so fancy-indexed writes never drop one."""
    if not states:
        return logits
    if logits.dtype.kind != "f" or logits.dtype.itemsize < 4:
        logits = logits.astype(np.float32)
    if logits.shape[0] != len(states):
        raise ValueError(f"{logits.shape[0]} logits rows for {len(states)} penalty states")
    width = logits.shape[1]

    biased = [i for i, s in enumerate(states) if s.bias_ids is not None]
    if biased:
        r, c, keep = _columns(biased, [states[i].bias_ids for i in biased], width)  # type: ignore[misc]
        values = np.concatenate([states[i].bias_values for i in biased])[keep]
        logits[r, c] += values.astype(logits.dtype, copy=False)

    repeating = [i for i, s in enumerate(states) if s.seen is not None and s.seen_ids]
    if repeating:
        columns = [np.asarray(states[i].seen_ids, dtype=np.int64) for i in repeating]
        r, c, keep = _columns(repeating, columns, width)
        factor = np.repeat(np.array([states[i].repetition for i in repeating], dtype=logits.dtype),
                           [x.shape[0] for x in columns])[keep]
        values = logits[r, c]
        logits[r, c] = np.where(values > 0, values / factor, values * factor)

    counted = [i for i, s in enumerate(states) if s.generated_ids and (s.frequency != 0.0 or s.presence != 0.0)]
    if counted:
        columns = [np.asarray(states[i].generated_ids, dtype=np.int64) for i in counted]
        r, c, keep = _columns(counted, columns, width)
        sizes = [x.shape[0] for x in columns]
        times = np.concatenate([states[i].counts[x] for i, x in zip(counted, columns)])[keep]  # type: ignore[index]
        freq = np.repeat(np.array([states[i].frequency for i in counted]), sizes)[keep]
        pres = np.repeat(np.array([states[i].presence for i in counted]), sizes)[keep]
        logits[r, c] -= (freq * times + pres).astype(logits.dtype)
    return logits
