"""Count- and time-based windows over flat histogram vectors, with the clock passed in.

A window is ``panes`` consecutive panes; a tumbling window is one pane. Rows are
counted into the open pane (``current``, a vector the caller fills in place). When
a pane closes, the last ``panes`` panes are summed into a ``ClosedWindow``: a
tumbling window closes every ``size``, a sliding one every ``step`` once it holds
``size``. A count pane closes when it holds its rows (the caller asks ``room()``
and splits a batch at the boundary); a time pane closes at the first ``advance``
at or after its end, and a gap longer than the window closes empty panes.

``totals`` are every row counted since the window began (closed panes and the open
one): what a fleet member publishes so that one member can sum the fleet's rows
into merged windows (gateway.monitoring.drift.fleet). A merged window is fed
whole lumps of rows (``add_lump``), so its count panes close at or just past
``pane_rows``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class ClosedWindow:
    index: int  # 1 for the first window closed
    rows: int
    counts: np.ndarray
    closed_ns: int


class PaneWindow:
    def __init__(self, width: int, *, panes: int, pane_rows: int | None = None, pane_ns: int | None = None, start_ns: int = 0) -> None:
        if (pane_rows is None) == (pane_ns is None):
            raise ValueError("a window is either count-based (pane_rows) or time-based (pane_ns)")
        if panes < 1:
            raise ValueError("panes must be >= 1")
        self.panes = panes
        self.pane_rows = pane_rows
        self.pane_ns = pane_ns
        self.current = np.zeros(width, dtype=np.int64)
        self.current_rows = 0
        self._closed: deque[tuple[np.ndarray, int]] = deque()
        self._sum = np.zeros(width, dtype=np.int64)
        self._sum_rows = 0
        self._pane_end_ns = start_ns + pane_ns if pane_ns is not None else 0
        self.windows_closed = 0
        self._closed_total = np.zeros(width, dtype=np.int64)
        self._closed_total_rows = 0

    def room(self) -> int | None:
        """Rows the open pane still takes (count windows); None for time windows."""
        return None if self.pane_rows is None else self.pane_rows - self.current_rows

    def add_rows(self, rows: int, now_ns: int) -> list[ClosedWindow]:
        """Record that ``rows`` rows were counted into ``current``."""
        room = self.room()
        if room is not None and rows > room:
            raise ValueError(f"{rows} rows do not fit the {room} left in the pane")
        self.current_rows += rows
        if self.pane_rows is not None and self.current_rows == self.pane_rows:
            return self._close_pane(now_ns)
        return []

    def add_lump(self, counts: np.ndarray, rows: int, now_ns: int) -> list[ClosedWindow]:
        """Count ``rows`` rows whose bins are ``counts`` into the open pane at once; a count pane
        closes when it holds ``pane_rows`` or more (a lump is not split: its rows' order is unknown)."""
        self.current += counts
        self.current_rows += rows
        if self.pane_rows is not None and self.current_rows >= self.pane_rows:
            return self._close_pane(now_ns)
        return []

    def totals(self) -> tuple[int, np.ndarray]:
        """Rows and bin counts of everything counted since the window began (a new array)."""
        return self._closed_total_rows + self.current_rows, self._closed_total + self.current

    def advance(self, now_ns: int) -> list[ClosedWindow]:
        """Close every time pane that ended at or before ``now_ns``."""
        if self.pane_ns is None or now_ns < self._pane_end_ns:
            return []
        due = (now_ns - self._pane_end_ns) // self.pane_ns + 1
        closed = self._close_pane(now_ns)
        # Beyond a full window of empty panes nothing more can be learnt: skip the rest.
        for _ in range(min(due - 1, self.panes)):
            closed += self._close_pane(now_ns)
        self._pane_end_ns += due * self.pane_ns
        return closed

    def _close_pane(self, now_ns: int) -> list[ClosedWindow]:
        pane = self.current.copy()
        self._closed.append((pane, self.current_rows))
        self._closed_total += pane
        self._closed_total_rows += self.current_rows
        self._sum += pane
        self._sum_rows += self.current_rows
        self.current[:] = 0
        self.current_rows = 0
        if len(self._closed) > self.panes:
            old, old_rows = self._closed.popleft()
            self._sum -= old
            self._sum_rows -= old_rows
        if len(self._closed) < self.panes:
            return []
        self.windows_closed += 1
        window = ClosedWindow(self.windows_closed, self._sum_rows, self._sum.copy(), now_ns)
        if self.panes == 1:
            self._closed.clear()
            self._sum[:] = 0
            self._sum_rows = 0
        return [window]
