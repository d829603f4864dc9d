"""Reports serving (and drift) metrics of each served registry version back to MLflow.

Choice: metrics on an MLflow run tied to the model version, not model-version
tags. Metrics keep their history (a value per report, with its step and time),
so MLflow's UI plots error rate or drift over the version's life; tags would
keep only the last value. One run per (model version, gateway process), in the
``registry_experiment`` experiment, tagged with the registered model, the
version and the host; the model version gets the tag ``gateway.serving_run_id``
pointing at the newest such run.

Values are per report interval (requests, failures, rates, mean latencies),
computed from the gateway's cumulative counters; a counter that went down (the
version was reloaded) starts a new interval from zero.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from gateway.registry.mlflow_client import MlflowClient

_log = logging.getLogger(__name__)
_UNSAFE_KEY = re.compile(r"[^A-Za-z0-9_\-. /]")


@dataclass(frozen=True, slots=True)
class VersionSnapshot:
    """Cumulative counters of one served version (ns durations), as the gateway keeps them."""

    model: str
    version: str
    success_count: int = 0
    success_ns: int = 0  # queue + compute of answered requests
    fail_count: int = 0
    queue_count: int = 0
    queue_ns: int = 0
    compute_ns: int = 0  # gather + run + scatter, summed over batches
    inference_count: int = 0  # rows executed
    execution_count: int = 0  # batches executed
    cache_hits: int = 0
    drift: dict[str, float] = field(default_factory=dict)


SnapshotSource = Callable[[], Awaitable[list[VersionSnapshot]]]


def interval_metrics(now: VersionSnapshot, before: VersionSnapshot | None, seconds: float) -> dict[str, float]:
    """Metrics of one report interval; ``before`` is the previous report's snapshot of the same version."""
    if before is None or now.success_count < before.success_count or now.fail_count < before.fail_count:
        before = VersionSnapshot(now.model, now.version)
    ok = now.success_count - before.success_count
    failed = now.fail_count - before.fail_count
    requests = ok + failed
    rows = now.inference_count - before.inference_count
    batches = now.execution_count - before.execution_count
    queued = now.queue_count - before.queue_count
    out = {
        "serving.requests": float(requests),
        "serving.failures": float(failed),
        "serving.error_rate": failed / requests if requests else 0.0,
        "serving.requests_per_s": requests / seconds if seconds > 0 else 0.0,
        "serving.rows": float(rows),
        "serving.batches": float(batches),
        "serving.cache_hits": float(now.cache_hits - before.cache_hits),
    }
    if ok:
        out["serving.mean_request_ms"] = (now.success_ns - before.success_ns) / ok / 1e6
    if queued:
        out["serving.mean_queue_ms"] = (now.queue_ns - before.queue_ns) / queued / 1e6
    if batches:
        out["serving.mean_batch_ms"] = (now.compute_ns - before.compute_ns) / batches / 1e6
        out["serving.mean_batch_size"] = rows / batches
    for name, value in now.drift.items():
        out[metric_key(name)] = float(value)
    return out


def metric_key(name: str) -> str:
    """MLflow metric keys allow letters, digits, ``_ - . /`` and space."""
    return _UNSAFE_KEY.sub("_", name)[:250]


class Reporter:
    def __init__(
        self,
        client: MlflowClient,
        experiment: str,
        source: SnapshotSource,
        registered: Callable[[str], str | None],
    ) -> None:
        self.client = client
        self.experiment = experiment
        self.source = source
        self.registered = registered  # local model name -> registered model name (None: not from the registry)
        self.instance = f"{socket.gethostname()}/{os.getpid()}"
        self._experiment_id: str | None = None
        self._runs: dict[tuple[str, str], str] = {}
        self._before: dict[tuple[str, str], tuple[VersionSnapshot, float]] = {}
        self._step = 0
        self._started = time.monotonic()

    async def report_once(self) -> int:
        """Log one interval's metrics for every served registry version; returns how many versions."""
        snapshots = await self.source()
        now_s = time.monotonic()
        stamp_ms = int(time.time() * 1000)
        done = 0
        for snap in snapshots:
            name = self.registered(snap.model)
            if name is None or not snap.version.isdigit():
                continue
            key = (snap.model, snap.version)
            before, at = self._before.get(key, (None, self._started))
            metrics = interval_metrics(snap, before, now_s - at)
            run_id = await self._run_for(name, snap)
            await self.client.log_metrics(run_id, metrics, self._step, stamp_ms)
            self._before[key] = (snap, now_s)
            done += 1
        self._step += 1
        return done

    async def _run_for(self, registered: str, snap: VersionSnapshot) -> str:
        key = (snap.model, snap.version)
        run_id = self._runs.get(key)
        if run_id is not None:
            return run_id
        if self._experiment_id is None:
            self._experiment_id = await self.client.experiment_id(self.experiment)
        run_id = await self.client.create_run(
            self._experiment_id,
            f"serving {registered} v{snap.version} @ {self.instance}",
            {
                "gateway.registered_model": registered,
                "gateway.model_version": snap.version,
                "gateway.model": snap.model,
                "gateway.instance": self.instance,
            },
            int(time.time() * 1000),
        )
        await self.client.set_version_tag(registered, int(snap.version), "gateway.serving_run_id", run_id)
        _log.info("registry: reporting %s version %s to MLflow run %s", registered, snap.version, run_id)
        self._runs[key] = run_id
        return run_id
