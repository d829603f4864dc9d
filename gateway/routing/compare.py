"""Comparing a shadow's answer with the live one: agreement, mean absolute difference, predictions.

Rows are the leading dim. Argmax agreement applies to numeric outputs whose
last dim has more than one element (class scores); other outputs are compared
for exact equality only. Each version's prediction distribution counts the
argmax classes it answered on compared requests.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

MAX_CLASSES = 1024  # a larger class index is counted in the last bucket: memory stays bounded


@dataclass(slots=True)
class Comparison:
    rows: int
    exact: bool
    disagreed_rows: int  # by argmax where it applies, else every row of an inexact answer
    argmax_rows: int = 0
    argmax_agreed: int = 0
    abs_diff_sum: float = 0.0
    elements: int = 0
    live_classes: np.ndarray | None = None
    shadow_classes: np.ndarray | None = None
    tokens: int = 0  # generations: token positions compared (the longer answer's length, per choice)
    tokens_agreed: int = 0


def _classes(a: np.ndarray) -> np.ndarray | None:
    if a.ndim < 1 or a.shape[-1] < 2 or a.dtype.kind not in "fiub":
        return None
    return a.reshape(-1, a.shape[-1]).argmax(axis=1)


def compare_arrays(live: np.ndarray, shadow: np.ndarray) -> Comparison:
    rows = int(live.shape[0]) if live.ndim else 1
    if live.shape != shadow.shape:
        return Comparison(rows=rows, exact=False, disagreed_rows=rows)
    exact = bool(np.array_equal(live, shadow))
    c = Comparison(rows=rows, exact=exact, disagreed_rows=0 if exact else rows)
    numeric = live.dtype.kind in "fiub" and shadow.dtype.kind in "fiub"
    if numeric and live.size:
        c.abs_diff_sum = float(np.abs(live.astype(np.float64) - shadow.astype(np.float64)).sum())
        c.elements = int(live.size)
        lc, sc = _classes(live), _classes(shadow)
        if lc is not None and sc is not None:
            c.live_classes, c.shadow_classes = lc, sc
            c.argmax_rows = int(lc.size)
            c.argmax_agreed = int(np.count_nonzero(lc == sc))
            c.disagreed_rows = c.argmax_rows - c.argmax_agreed
            c.rows = c.argmax_rows
    return c


def compare_generations(
    live: Sequence[tuple[str, Sequence[int]]], shadow: Sequence[tuple[str, Sequence[int]]]
) -> Comparison:
    """Two generations of the same request, as (text, token ids) per choice: exact when every
    choice's text is the same; token agreement position by position (a missing token disagrees).
    A row is a choice: one whose text differs is a disagreed row."""
    rows = max(len(live), len(shadow))
    c = Comparison(rows=rows, exact=True, disagreed_rows=0)
    for i in range(rows):
        (live_text, live_ids) = live[i] if i < len(live) else ("", ())
        (shadow_text, shadow_ids) = shadow[i] if i < len(shadow) else ("", ())
        same = min(len(live_ids), len(shadow_ids))
        c.tokens += max(len(live_ids), len(shadow_ids))
        c.tokens_agreed += sum(1 for a, b in zip(live_ids[:same], shadow_ids[:same]) if a == b)
        if live_text != shadow_text or i >= len(live) or i >= len(shadow):
            c.exact = False
            c.disagreed_rows += 1
    return c


def pick_output(live: Mapping[str, np.ndarray], shadow: Mapping[str, np.ndarray], preferred: str) -> str | None:
    """The output to compare: ``preferred`` when both have it, else the first output both have."""
    if preferred:
        return preferred if preferred in live and preferred in shadow else None
    return next((n for n in live if n in shadow), None)


@dataclass(slots=True)
class PairStats:
    """Live answers of one version against one shadow target."""

    sent: int = 0
    dropped: int = 0  # shadow queue full, or shadows stopped
    failed: int = 0
    compared: int = 0
    exact: int = 0
    rows: int = 0
    disagreed_rows: int = 0
    argmax_rows: int = 0
    argmax_agreed: int = 0
    abs_diff_sum: float = 0.0
    elements: int = 0
    tokens: int = 0
    tokens_agreed: int = 0

    def add(self, c: Comparison) -> None:
        self.compared += 1
        self.exact += c.exact
        self.rows += c.rows
        self.disagreed_rows += c.disagreed_rows
        self.argmax_rows += c.argmax_rows
        self.argmax_agreed += c.argmax_agreed
        self.abs_diff_sum += c.abs_diff_sum
        self.elements += c.elements
        self.tokens += c.tokens
        self.tokens_agreed += c.tokens_agreed

    def to_json(self) -> dict:
        return {
            "sent": self.sent,
            "dropped": self.dropped,
            "failed": self.failed,
            "compared": self.compared,
            "agreement_exact": self.exact / self.compared if self.compared else None,
            "agreement_argmax": self.argmax_agreed / self.argmax_rows if self.argmax_rows else None,
            "disagreement": self.disagreed_rows / self.rows if self.rows else None,
            "mean_abs_diff": self.abs_diff_sum / self.elements if self.elements else None,
            "agreement_tokens": self.tokens_agreed / self.tokens if self.tokens else None,
            "rows": self.rows,
        }


@dataclass(slots=True)
class ClassDistribution:
    counts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def add(self, classes: np.ndarray) -> None:
        if not classes.size:
            return
        top = int(classes.max())
        if top >= MAX_CLASSES:
            classes = np.minimum(classes, MAX_CLASSES - 1)
            top = MAX_CLASSES - 1
        if top >= self.counts.size:
            grown = np.zeros(top + 1, dtype=np.int64)
            grown[: self.counts.size] = self.counts
            self.counts = grown
        self.counts += np.bincount(classes, minlength=self.counts.size)

    def to_json(self) -> dict:
        total = int(self.counts.sum())
        return {
            "rows": total,
            "counts": self.counts.tolist(),
            "share": [round(c / total, 6) for c in self.counts.tolist()] if total else [],
        }
