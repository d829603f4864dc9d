"""Adaptive queue delay: wait for more requests only when waiting can pay off.

A fixed ``max_queue_delay_us`` taxes every request at low load: with one
client, nobody else will come, and each request waits the whole window. Here
the window is sized from what the scheduler observes (exponentially weighted):

- the gap between arrivals, and
- the time one batch takes to execute.

When the executor is idle and the next arrival is expected later than a batch
would take to run, waiting only adds latency: the delay is 0. Otherwise the
wait is the time expected to fill the batch, bounded by one batch's execution
time (waiting longer than that loses more than batching gains) and by the
configured ``max_queue_delay_us``.
"""

from __future__ import annotations

_ALPHA = 0.2  # weight of the newest observation


class AdaptiveDelay:
    __slots__ = ("gap_ns", "exec_ns", "_last_arrival_ns")

    def __init__(self) -> None:
        self.gap_ns = 0.0
        self.exec_ns = 0.0
        self._last_arrival_ns = 0

    def observe_arrival(self, now_ns: int) -> None:
        if self._last_arrival_ns:
            gap = now_ns - self._last_arrival_ns
            self.gap_ns = gap if not self.gap_ns else self.gap_ns + _ALPHA * (gap - self.gap_ns)
        self._last_arrival_ns = now_ns

    def observe_execution(self, exec_ns: int) -> None:
        self.exec_ns = exec_ns if not self.exec_ns else self.exec_ns + _ALPHA * (exec_ns - self.exec_ns)

    def delay_ns(self, queued_rows: int, target_rows: int, executor_idle: bool) -> int:
        if queued_rows >= target_rows or not self.gap_ns or not self.exec_ns:
            return 0
        if executor_idle and self.gap_ns >= self.exec_ns:
            return 0
        to_fill = self.gap_ns * (target_rows - queued_rows)
        return int(min(to_fill, self.exec_ns))
