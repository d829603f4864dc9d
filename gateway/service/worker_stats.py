"""Model statistics, request metrics and scheduler gauges across worker processes.

With ``--workers N`` each process keeps its own counters. Every worker
publishes a snapshot to a shared directory (atomic file replace, twice a
second); a statistics request sums the other workers' latest snapshots with
its own live counters, so any worker answers for the whole server. A
statistics request first asks the other workers for a snapshot now (SIGUSR1)
and waits for them (bounded): otherwise two requests answered by different
workers could go backwards, and perf_analyzer, which needs the count of its
model to grow over each measurement window, failed at one client connection
("failed to find the requested model version"). The same
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
import signal
import time

from gateway.core.stats import ModelStats, merge_stats, stats_from_dict, stats_to_dict
from gateway.core.tasks import cancel_and_wait
from gateway.monitoring.metrics import RequestMetrics

_log = logging.getLogger(__name__)
PUBLISH_INTERVAL_S = 0.5
GAUGE_MAX_AGE_S = 4 * PUBLISH_INTERVAL_S
# How long a statistics request waits for the other workers' fresh snapshots (a worker too busy
# to answer in time is summed with its last one).
FRESH_WAIT_S = 0.25
_FRESH_POLL_S = 0.002
PUBLISH_NOW = signal.SIGUSR1


class WorkerStats:
    def __init__(self, directory: str, index: int) -> None:
        self.directory = directory
        self.index = index
        self._task: asyncio.Task | None = None
        self._asked: asyncio.Event | None = None

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

    async def fresh_peer_docs(self) -> list[dict]:
        """The other workers' snapshots taken after this call began: each live peer (a fresh snapshot,
        the same supervisor) is asked to publish now, and the directory is read until all have, for at
        most FRESH_WAIT_S."""
        asked_at = time.monotonic()
        waiting = set()
        for doc in self.peer_docs():
            try:
                pid = int(doc["pid"])
            except (KeyError, TypeError, ValueError):
                continue
            fresh = asked_at - _taken_at(doc) <= GAUGE_MAX_AGE_S
            # A dead worker's pid may be reused: never signal one whose snapshot is old or a process
            # whose parent is not our supervisor.
            if fresh and _parent_of(pid) == os.getppid():
                try:
                    os.kill(pid, PUBLISH_NOW)
                    waiting.add(pid)
                except OSError:
                    continue
        docs = self.peer_docs()
        deadline = asked_at + FRESH_WAIT_S
        while waiting and time.monotonic() < deadline:
            waiting -= {d.get("pid") for d in docs if _taken_at(d) >= asked_at}
            if waiting:
                await asyncio.sleep(_FRESH_POLL_S)
                docs = self.peer_docs()
        return docs

    def merged(self, name: str, version: str, own: ModelStats, docs: list[dict] | None = None) -> ModelStats:
        return merge_stats([own, *self.peers(name, version, docs)])

    def peer_requests(self) -> list[list]:
        """The other workers' published request series (``RequestMetrics.to_json``)."""
        return [doc["requests"] for doc in self.peer_docs() if isinstance(doc.get("requests"), list)]

    def start(self, serving_source, requests: RequestMetrics | None = None) -> None:
        asked = self._asked = asyncio.Event()
        loop_ = asyncio.get_running_loop()
        # Before the first snapshot: a peer signals only workers that have published one.
        loop_.add_signal_handler(PUBLISH_NOW, asked.set)

        async def loop() -> None:
            while True:
                asked.clear()
                try:
                    await asyncio.to_thread(self.write, self.snapshot(serving_source(), requests))
                except OSError as exc:
                    _log.warning("cannot publish worker statistics: %s", exc)
                try:
                    await asyncio.wait_for(asked.wait(), PUBLISH_INTERVAL_S)
                except TimeoutError:
                    pass

        self._task = loop_.create_task(loop(), name="worker-stats")

    async def stop(self) -> None:
        if self._asked is not None:
            asyncio.get_running_loop().remove_signal_handler(PUBLISH_NOW)
            # Our snapshot stays fresh for a while and peers may still ask: the default action of
            # SIGUSR1 would end this worker in the middle of its drain.
            signal.signal(PUBLISH_NOW, signal.SIG_IGN)
        await cancel_and_wait(self._task)


def _taken_at(doc: dict) -> float:
    try:
        return float(doc["at"])
    except (KeyError, TypeError, ValueError):
        return 0.0


def _parent_of(pid: int) -> int:
    """The parent pid of a live process (/proc), or -1."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
        return int(stat[stat.rindex(b")") + 2:].split()[1])  # after "pid (comm) state"
    except (OSError, ValueError, IndexError):
        return -1
