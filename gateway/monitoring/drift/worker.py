"""The drift thread: executed batches are handed over after their futures are resolved.

``submit`` runs on the event loop and only appends to the version's deque (a
fraction of a microsecond, no thread wake-up). The drift thread wakes every
``interval_s``, takes what piled up, joins consecutive batches into one array per
tensor and counts them in one pass: waking per batch would cost a GIL hand-off
and a context switch per batch (measured in benchmarks/drift_bench.py), which on
a small host is most of the price. A version whose backlog reaches its
``queue_batches`` loses batches (counted in ``dropped``) rather than memory.
"""

from __future__ import annotations

import logging
import threading
import weakref

import numpy as np

from gateway.monitoring.drift.monitor import VersionDrift

_log = logging.getLogger(__name__)


def coalesce(batches: list[tuple[dict, dict]]) -> list[tuple[dict, dict]]:
    """The batches joined row-wise into one, when they hold the same tensors with the same trailing
    dims (the usual case); else each alone."""
    if len(batches) == 1:
        return batches
    in_keys, out_keys = batches[0][0].keys(), batches[0][1].keys()
    if all(b[0].keys() == in_keys and b[1].keys() == out_keys for b in batches):
        try:
            return [(
                {k: np.concatenate([b[0][k] for b in batches]) for k in in_keys},
                {k: np.concatenate([b[1][k] for b in batches]) for k in out_keys},
            )]
        except ValueError:  # ragged inputs: trailing dims differ between batches
            pass
    return batches


class DriftWorker:
    def __init__(self, interval_s: float = 0.05) -> None:
        self.interval_s = interval_s
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._monitors: weakref.WeakSet[VersionDrift] = weakref.WeakSet()
        self._lock = threading.Lock()

    def register(self, monitor: VersionDrift) -> None:
        with self._lock:
            self._monitors.add(monitor)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="drift", daemon=True)
                self._thread.start()

    @staticmethod
    def submit(monitor: VersionDrift, feeds: dict, outputs: dict) -> None:
        pending = monitor.pending
        if len(pending) >= monitor.cfg.queue_batches:
            monitor.dropped += 1
            return
        pending.append((feeds, outputs))  # deque.append: atomic, the drift thread pops

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.drain()
        self.drain()

    def drain(self) -> None:
        """Count everything pending and close due time windows (the drift thread; tests call it directly)."""
        with self._lock:
            monitors = list(self._monitors)
        for m in monitors:
            batches = []
            try:
                while True:
                    batches.append(m.pending.popleft())
            except IndexError:
                pass
            try:
                if batches:
                    m.processed += len(batches)
                    for feeds, outputs in coalesce(batches):
                        m.observe(feeds, outputs)
                m.tick()
            except Exception:  # noqa: BLE001 - a bad batch must not stop drift monitoring
                m.errors += 1
                if m.errors <= 3:
                    _log.exception("drift: model %s version %s: batches not counted", m.model, m.version)

    def close(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
