"""Deterministic sticky assignment of a key to a weighted version (weighted rendezvous hashing).

Each version scores the key with ``-ln(u) / weight``, where ``u`` in (0, 1) comes
from MurmurHash3 (x64, 128-bit, seed 0) of ``"<model>:<version>:<key>"``; the
lowest score wins. Every replica, in any language, computes the same answer.

Why rendezvous rather than cumulative buckets: a key's score for one version
does not depend on the other versions, so raising a version's weight never
ejects a key already assigned to it, lowering it (or tripping the version to 0)
moves only that version's keys, and adding or removing a version moves only
the keys it gains or loses. Each version still receives a share of keys equal
to ``weight / sum(weights)`` (the minimum of exponential races).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import mmh3

_TOP_53 = 11  # keep 53 bits: exactly representable in a float
_U64 = (1 << 64) - 1


def unit_hash(model: str, version: str, key: str) -> float:
    """A value in the open interval (0, 1), uniform over keys."""
    # Keywords, and the mask: some mmh3 releases ignore ``signed`` when passed by position.
    high, _ = mmh3.hash64(f"{model}:{version}:{key}", seed=0, x64arch=True, signed=False)
    return (((high & _U64) >> _TOP_53) + 0.5) / (1 << 53)


def sticky_choice(model: str, key: str, weights: Iterable[tuple[str, float]]) -> str | None:
    """The version for ``key`` among (version, weight > 0) pairs; None when there are none."""
    best, best_score = None, math.inf
    for version, weight in weights:
        score = -math.log(unit_hash(model, version, key)) / weight
        if score < best_score:
            best, best_score = version, score
    return best
