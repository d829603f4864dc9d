"""In-process nearest-neighbour index of prompt embeddings, partitioned by scope.

Only prompts of the same scope (model, version, system prompt, prior
conversation, sampling settings) may answer each other, so a search is an
exact cosine scan (one matrix-vector product) over one scope's vectors. The
index is bounded by a total entry count, oldest evicted first, and every entry
has a TTL on the monotonic clock (passed in, for tests).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True, slots=True)
class Match:
    entry_id: str
    similarity: float
    answer: Any


class _Scope:
    """Vectors of one scope in a growable matrix; removal swaps in the last row."""

    def __init__(self, dim: int) -> None:
        self.vectors = np.empty((4, dim), dtype=np.float32)
        self.ids: list[str] = []
        self.answers: list[Any] = []
        self.expires_ns: list[int] = []
        self.row: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, entry_id: str, vector: np.ndarray, answer: Any, expires_ns: int) -> None:
        n = len(self.ids)
        if n == len(self.vectors):
            grown = np.empty((2 * n, self.vectors.shape[1]), dtype=np.float32)
            grown[:n] = self.vectors
            self.vectors = grown
        self.vectors[n] = vector
        self.ids.append(entry_id)
        self.answers.append(answer)
        self.expires_ns.append(expires_ns)
        self.row[entry_id] = n

    def remove(self, entry_id: str) -> None:
        i = self.row.pop(entry_id)
        last = len(self.ids) - 1
        if i != last:
            self.vectors[i] = self.vectors[last]
            self.ids[i], self.answers[i], self.expires_ns[i] = self.ids[last], self.answers[last], self.expires_ns[last]
            self.row[self.ids[i]] = i
        self.ids.pop()
        self.answers.pop()
        self.expires_ns.pop()

    def best(self, query: np.ndarray, now_ns: int) -> tuple[int, float] | None:
        n = len(self.ids)
        if n == 0:
            return None
        sims = self.vectors[:n] @ query
        for i in np.argsort(-sims)[:8]:  # the best live one; expired ones are rare and dropped on sight
            if self.expires_ns[i] > now_ns:
                return int(i), float(sims[i])
        return None


class VectorIndex:
    def __init__(self, dim: int, max_entries: int) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be >= 1")
        self.dim = dim
        self.max_entries = max_entries
        self.evictions = 0
        self._scopes: dict[bytes, _Scope] = {}
        self._age: OrderedDict[tuple[bytes, str], int] = OrderedDict()  # insertion order -> expiry

    def __len__(self) -> int:
        return len(self._age)

    def contains(self, scope: bytes, entry_id: str) -> bool:
        return (scope, entry_id) in self._age

    def add(self, scope: bytes, entry_id: str, vector: np.ndarray, answer: Any, expires_ns: int, now_ns: int) -> None:
        if vector.shape != (self.dim,):
            raise ValueError(f"vector shape {vector.shape} != ({self.dim},)")
        if self.contains(scope, entry_id):
            self._remove(scope, entry_id)
        self._purge_expired_front(now_ns)
        s = self._scopes.get(scope)
        if s is None:
            s = self._scopes[scope] = _Scope(self.dim)
        s.add(entry_id, vector, answer, expires_ns)
        self._age[(scope, entry_id)] = expires_ns
        while len(self._age) > self.max_entries:
            (old_scope, old_id), _ = next(iter(self._age.items()))
            self._remove(old_scope, old_id)
            self.evictions += 1

    def search(self, scope: bytes, query: np.ndarray, now_ns: int) -> Match | None:
        """The most similar live entry of ``scope`` (whatever its similarity)."""
        s = self._scopes.get(scope)
        if s is None:
            return None
        found = s.best(query, now_ns)
        if found is None:
            return None
        i, sim = found
        return Match(s.ids[i], sim, s.answers[i])

    def resize(self, max_entries: int) -> None:
        self.max_entries = max_entries
        while len(self._age) > max_entries:
            (scope, entry_id), _ = next(iter(self._age.items()))
            self._remove(scope, entry_id)
            self.evictions += 1

    def _purge_expired_front(self, now_ns: int) -> None:
        while self._age:
            (scope, entry_id), expires_ns = next(iter(self._age.items()))
            if expires_ns > now_ns:
                return
            self._remove(scope, entry_id)

    def _remove(self, scope: bytes, entry_id: str) -> None:
        del self._age[(scope, entry_id)]
        s = self._scopes[scope]
        s.remove(entry_id)
        if not len(s):
            del self._scopes[scope]
