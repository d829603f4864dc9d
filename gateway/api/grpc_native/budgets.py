"""Budgets that bound what a peer can make the transport do or hold."""

from __future__ import annotations


class TokenBucket:
    """`burst` events at once, then `rate` per second; `take` says whether one more is allowed."""

    __slots__ = ("_burst", "_rate", "_tokens", "_at")

    def __init__(self, burst: int, rate: float, now: float) -> None:
        self._burst = float(burst)
        self._rate = rate
        self._tokens = float(burst)
        self._at = now

    def take(self, now: float, cost: float = 1.0) -> bool:
        tokens = self._tokens + (now - self._at) * self._rate
        self._at = now
        if tokens > self._burst:
            tokens = self._burst
        if tokens < cost:
            self._tokens = tokens
            return False
        self._tokens = tokens - cost
        return True


class ByteBudget:
    """Bytes held process-wide for one purpose (answers not yet sendable, unfinished requests)."""

    __slots__ = ("limit", "used")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def fits(self, extra: int) -> bool:
        return self.used + extra <= self.limit
