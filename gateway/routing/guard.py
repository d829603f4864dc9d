"""Rollback guard: per-canary counters over a sliding window, checked against thresholds.

The window is cut into slices so that recording is O(1) and old events leave
in steps of ``window / SLICES``. The p99 latency test needs no distribution:
p99 exceeds the threshold exactly when more than 1 % of the window's requests
took longer than it, so only the requests over the threshold are counted.

Under ``--workers N`` each worker sees 1/N of a canary's traffic: the other
workers' window counts are handed in (``set_peer_counts``) and every verdict is
on the sum, so ``min_requests`` and the rates count across the fleet.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from gateway.core.routing_config import RollbackConfig

SLICES = 10


@dataclass(slots=True)
class WindowCounts:
    requests: int = 0
    errors: int = 0
    slow: int = 0  # requests over max_p99_latency_ms
    compared_rows: int = 0
    disagreed_rows: int = 0

    def add(self, other: WindowCounts, sign: int = 1) -> None:
        self.requests += sign * other.requests
        self.errors += sign * other.errors
        self.slow += sign * other.slow
        self.compared_rows += sign * other.compared_rows
        self.disagreed_rows += sign * other.disagreed_rows

    def plus(self, other: WindowCounts | None) -> WindowCounts:
        out = WindowCounts(self.requests, self.errors, self.slow, self.compared_rows, self.disagreed_rows)
        if other is not None:
            out.add(other)
        return out

    def to_json(self) -> dict:
        return {"requests": self.requests, "errors": self.errors, "slow": self.slow,
                "compared_rows": self.compared_rows, "disagreed_rows": self.disagreed_rows}

    @classmethod
    def from_json(cls, doc: dict) -> WindowCounts:
        return cls(int(doc["requests"]), int(doc["errors"]), int(doc["slow"]),
                   int(doc["compared_rows"]), int(doc["disagreed_rows"]))

    @classmethod
    def total(cls, counts) -> WindowCounts:
        out = cls()
        for c in counts:
            out.add(c)
        return out


class SlidingWindow:
    """Counts of the last ``window_ns`` (to within one slice)."""

    def __init__(self, window_ns: int) -> None:
        self.slice_ns = max(1, window_ns // SLICES)
        self._slices: deque[tuple[int, WindowCounts]] = deque()
        self.totals = WindowCounts()

    def current(self, now_ns: int) -> WindowCounts:
        """The slice to add to at ``now_ns`` (expired slices are dropped first)."""
        index = now_ns // self.slice_ns
        self.expire(now_ns)
        if not self._slices or self._slices[-1][0] != index:
            self._slices.append((index, WindowCounts()))
        return self._slices[-1][1]

    def expire(self, now_ns: int) -> None:
        oldest = now_ns // self.slice_ns - SLICES + 1
        while self._slices and self._slices[0][0] < oldest:
            self.totals.add(self._slices.popleft()[1], -1)

    def clear(self) -> None:
        self._slices.clear()
        self.totals = WindowCounts()


class RollbackGuard:
    """Watches the canaries (every weighted version but the champion) of one model."""

    def __init__(self, cfg: RollbackConfig) -> None:
        self.cfg = cfg
        self.window_ns = int(cfg.window_s * 1e9)
        self._slow_ns = int(cfg.max_p99_latency_ms * 1e6) if cfg.max_p99_latency_ms is not None else None
        self._windows: dict[str, SlidingWindow] = {}
        self._peers: dict[str, WindowCounts] = {}  # the other workers' windows, summed

    def _window(self, version: str) -> SlidingWindow:
        w = self._windows.get(version)
        if w is None:
            w = self._windows[version] = SlidingWindow(self.window_ns)
        return w

    def record_result(self, version: str, now_ns: int, ok: bool, latency_ns: int) -> str | None:
        """Count one live request; returns why the version must be rolled back, or None."""
        w = self._window(version)
        c = w.current(now_ns)
        slow = self._slow_ns is not None and latency_ns > self._slow_ns
        c.requests += 1
        w.totals.requests += 1
        if not ok:
            c.errors += 1
            w.totals.errors += 1
        if slow:
            c.slow += 1
            w.totals.slow += 1
        return self._judge(version, w.totals)

    def record_comparison(self, version: str, now_ns: int, rows: int, disagreed_rows: int) -> str | None:
        """Count one comparison of the canary's answer with the champion's."""
        w = self._window(version)
        c = w.current(now_ns)
        c.compared_rows += rows
        c.disagreed_rows += disagreed_rows
        w.totals.compared_rows += rows
        w.totals.disagreed_rows += disagreed_rows
        return self._judge(version, w.totals)

    def _judge(self, version: str, own: WindowCounts) -> str | None:
        peers = self._peers.get(version)
        return self.verdict(own if peers is None else own.plus(peers))

    def verdict(self, t: WindowCounts) -> str | None:
        cfg = self.cfg
        window = f"in the last {cfg.window_s:g} s"
        if t.requests >= cfg.min_requests:
            if cfg.max_error_rate is not None and t.errors > cfg.max_error_rate * t.requests:
                return (f"error rate {t.errors / t.requests:.3f} > max_error_rate {cfg.max_error_rate:g} "
                        f"({t.errors} of {t.requests} requests {window})")
            if self._slow_ns is not None and t.slow > 0.01 * t.requests:
                return (f"p99 latency > max_p99_latency_ms {cfg.max_p99_latency_ms:g} "
                        f"({t.slow} of {t.requests} requests slower {window})")
        if (cfg.max_disagreement is not None and t.compared_rows >= cfg.min_requests
                and t.disagreed_rows > cfg.max_disagreement * t.compared_rows):
            return (f"disagreement with the champion {t.disagreed_rows / t.compared_rows:.3f} > max_disagreement "
                    f"{cfg.max_disagreement:g} ({t.disagreed_rows} of {t.compared_rows} rows {window})")
        return None

    def counts(self, version: str, now_ns: int) -> WindowCounts:
        """This process's own window."""
        w = self._window(version)
        w.expire(now_ns)
        return w.totals

    def fleet_counts(self, version: str, now_ns: int) -> WindowCounts:
        """The window the verdicts judge: this process's and the other workers'."""
        return self.counts(version, now_ns).plus(self._peers.get(version))

    def set_peer_counts(self, version: str, counts: WindowCounts | None) -> None:
        """The other workers' window counts for ``version`` (None: none known)."""
        if counts is None:
            self._peers.pop(version, None)
        else:
            self._peers[version] = counts

    def judge(self, version: str, now_ns: int) -> str | None:
        """The verdict on the fleet's window now (peer counts arrive between this process's requests)."""
        return self.verdict(self.fleet_counts(version, now_ns))

    def clear(self, version: str) -> None:
        self._peers.pop(version, None)
        w = self._windows.get(version)
        if w is not None:
            w.clear()
