"""Model statistics, request metrics and scheduler gauges across worker processes.

With ``--workers N`` each process keeps its own counters. Every worker
publishes a snapshot to a shared directory (atomic file replace, twice a
second); a statistics request sums the other workers' latest snapshots with
its own live counters, so any worker answers for the whole server. The same
goes for the scheduler gauges of ``/metrics`` (queue depth, executor instances,
busy instances), so a scrape that lands on one worker sees the host; a
snapshot older than ``GAUGE_MAX_AGE_S`` (a worker that died) adds nothing to
them. CLOCK_MONOTONIC is one clock for every process of the host.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time

from gateway.core.stats import ModelStats, merge_stats, stats_from_dict, stats_to_dict
from gateway.core.tasks import cancel_and_wait
from gateway.monitoring.metrics import RequestMetrics

_log = logging.getLogger(__name__)
PUBLISH_INTERVAL_S = 0.5
GAUGE_MAX_AGE_S = 4 * PUBLISH_INTERVAL_S


class WorkerStats:
    def __init__(self, directory: str, index: int) -> None:
        self.directory = directory
        self.index = index
        self._task: asyncio.Task | None = None

    def _path(self, index: int) -> str:
        return os.path.join(self.directory, f"worker-{index}.json")

    @staticmethod
    def snapshot(serving: dict, requests: RequestMetrics | None = None) -> dict:
        """Taken on the event loop, so the counters are not read mid-update."""
        return {
            "pid": os.getpid(),
            "at": time.monotonic(),
            "requests": requests.to_json() if requests is not None else [],
            "models": {
                name: {v: stats_to_dict(loaded.stats) for v, loaded in versions.items()}
                for name, versions in serving.items()
            },
            # [queue depth, executor instances, busy instances] per version
            "gauges": {
                name: {
                    v: [loaded.scheduler.queue_depth, loaded.scheduler.instances, loaded.scheduler.busy_instances]
                    for v, loaded in versions.items()
                }
                for name, versions in serving.items()
            },
        }

    def write(self, doc: dict) -> None:
        tmp = self._path(self.index) + ".tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(doc, fh)
        os.replace(tmp, self._path(self.index))

    def peer_docs(self) -> list[dict]:
        """The other workers' latest snapshots: read once per use (a scrape passes them to every
        version's sum instead of re-reading the directory per version)."""
        out = []
        own = f"worker-{self.index}.json"
        for entry in os.listdir(self.directory):
            if not entry.startswith("worker-") or not entry.endswith(".json") or entry == own:
                continue
            try:
                with open(os.path.join(self.directory, entry), encoding="utf-8") as fh:
                    doc = json.load(fh)
            except (OSError, ValueError):
                continue  # a worker that is restarting
            if isinstance(doc, dict):
                out.append(doc)
        return out

    def peers(self, name: str, version: str, docs: list[dict] | None = None) -> list[ModelStats]:
        out = []
        for doc in self.peer_docs() if docs is None else docs:
            try:
                out.append(stats_from_dict(doc["models"][name][version]))
            except (KeyError, TypeError, ValueError):
                continue  # a worker that has not served this version
        return out

    def peer_gauges(self, name: str, version: str, docs: list[dict] | None = None) -> tuple[int, int, int]:
        """The other workers' queue depth, executor instances and busy instances of a version, summed
        over their fresh snapshots (at most GAUGE_MAX_AGE_S old)."""
        now = time.monotonic()
        queued = instances = busy = 0
        for doc in self.peer_docs() if docs is None else docs:
            try:
                if now - float(doc["at"]) > GAUGE_MAX_AGE_S:
                    continue
                q, i, b = doc["gauges"][name][version]
                queued, instances, busy = queued + int(q), instances + int(i), busy + int(b)
            except (KeyError, TypeError, ValueError):
                continue
        return queued, instances, busy

    def merged(self, name: str, version: str, own: ModelStats, docs: list[dict] | None = None) -> ModelStats:
        return merge_stats([own, *self.peers(name, version, docs)])

    def peer_requests(self) -> list[list]:
        """The other workers' published request series (``RequestMetrics.to_json``)."""
        return [doc["requests"] for doc in self.peer_docs() if isinstance(doc.get("requests"), list)]

    def start(self, serving_source, requests: RequestMetrics | None = None) -> None:
        async def loop() -> None:
            while True:
                try:
                    await asyncio.to_thread(self.write, self.snapshot(serving_source(), requests))
                except OSError as exc:
                    _log.warning("cannot publish worker statistics: %s", exc)
                await asyncio.sleep(PUBLISH_INTERVAL_S)

        self._task = asyncio.get_running_loop().create_task(loop(), name="worker-stats")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
