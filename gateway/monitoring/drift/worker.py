"""The drift thread: executed batches are handed over after their futures are resolved.

``submit`` runs on the event loop and only appends to a queue (well under a
microsecond); counting and judging happen here, off the response path. The
histogram loop releases the GIL. A version whose backlog reaches its
``queue_batches`` loses batches (counted in ``dropped``) rather than memory.
"""

from __future__ import annotations

import logging
import queue
import threading
import weakref

from gateway.monitoring.drift.monitor import VersionDrift

_log = logging.getLogger("gateway.drift")
_STOP = object()


class DriftWorker:
    def __init__(self, tick_s: float = 1.0) -> None:
        self.tick_s = tick_s
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._monitors: weakref.WeakSet[VersionDrift] = weakref.WeakSet()
        self._lock = threading.Lock()

    def register(self, monitor: VersionDrift) -> None:
        with self._lock:
            self._monitors.add(monitor)

    def submit(self, monitor: VersionDrift, feeds: dict, outputs: dict) -> None:
        if monitor.submitted - monitor.processed >= monitor.cfg.queue_batches:
            monitor.dropped += 1
            return
        monitor.submitted += 1
        if self._thread is None:
            self._start()
        self._queue.put((monitor, feeds, outputs))

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="drift", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=self.tick_s)
            except queue.Empty:
                self._tick()
                continue
            if item is _STOP:
                return
            monitor, feeds, outputs = item
            try:
                monitor.observe(feeds, outputs)
            except Exception:  # noqa: BLE001 - a bad batch must not stop drift monitoring
                monitor.errors += 1
                if monitor.errors <= 3:
                    _log.exception("drift: model %s version %s: batch not counted", monitor.model, monitor.version)
            if self._queue.empty():
                self._tick()

    def _tick(self) -> None:
        with self._lock:
            monitors = list(self._monitors)
        for m in monitors:
            try:
                m.tick()
            except Exception:  # noqa: BLE001
                m.errors += 1

    def close(self, timeout_s: float = 5.0) -> None:
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join(timeout_s)
            self._thread = None
