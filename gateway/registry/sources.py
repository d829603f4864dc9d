"""Where the reporter reads serving counters: the daemon's own service, or a daemon over HTTP.

In the daemon the counters are read in process (summed across workers when
there are several); the separate ``gateway registry-sync`` process reads the
same counters from the daemon's ``GET /v2/models/stats`` (Triton's statistics).
"""

from __future__ import annotations

import logging
from typing import Any

import aiohttp

from gateway.core.stats import ModelStats
from gateway.registry.mlflow_client import RegistryError
from gateway.registry.reporting import SnapshotSource, VersionSnapshot

_log = logging.getLogger(__name__)


def snapshot_of(model: str, version: str, s: ModelStats, drift: dict[str, float]) -> VersionSnapshot:
    return VersionSnapshot(
        model=model,
        version=version,
        success_count=s.success.count,
        success_ns=s.success.ns,
        fail_count=s.fail.count,
        queue_count=s.queue.count,
        queue_ns=s.queue.ns,
        compute_ns=int(s.execute_histogram.total),  # ns: observed as ints, an exact sum
        inference_count=s.inference_count,
        execution_count=s.execution_count,
        cache_hits=s.cache_hit.count,
        drift=drift,
    )


def service_source(service: Any) -> SnapshotSource:
    """Counters of every version the daemon serves, and its drift statistics where it keeps them.

    ``drift_metrics(model, version) -> {name: value}`` is looked up at each report,
    so a service without drift statistics reports serving metrics only.
    """

    async def snapshots() -> list[VersionSnapshot]:
        drift_of = getattr(service, "drift_metrics", None)
        out = []
        for loaded in service.statistics():
            drift: dict[str, float] = {}
            if drift_of is not None:
                try:
                    drift = dict(drift_of(loaded.name, loaded.version) or {})
                except Exception as exc:  # noqa: BLE001 - a drift problem must not stop serving metrics
                    _log.debug("no drift metrics for %s:%s: %s", loaded.name, loaded.version, exc)
            out.append(snapshot_of(loaded.name, loaded.version, service.version_stats(loaded), drift))
        return out

    return snapshots


def _duration(doc: dict, name: str) -> tuple[int, int]:
    d = doc.get(name) or {}
    return int(d.get("count", 0)), int(d.get("ns", 0))


def http_source(gateway_url: str, timeout_s: float) -> SnapshotSource:
    """Counters from a running daemon's ``GET /v2/models/stats`` (Triton's JSON: numbers, zeros present;
    ``int()`` also takes the strings older daemons sent)."""
    url = gateway_url.rstrip("/") + "/v2/models/stats"

    async def snapshots() -> list[VersionSnapshot]:
        try:
            async with aiohttp.ClientSession() as http, http.get(
                url, timeout=aiohttp.ClientTimeout(total=timeout_s)
            ) as resp:
                if resp.status != 200:
                    raise RegistryError(f"GET {url}: HTTP {resp.status}")
                doc = await resp.json()
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise RegistryError(f"GET {url}: {type(exc).__name__}: {exc}") from None
        out = []
        for m in doc.get("model_stats", ()):
            st = m.get("inference_stats") or {}
            ok, ok_ns = _duration(st, "success")
            failed, _ = _duration(st, "fail")
            queued, queue_ns = _duration(st, "queue")
            compute_ns = sum(_duration(st, k)[1] for k in ("compute_input", "compute_infer", "compute_output"))
            hits, _ = _duration(st, "cache_hit")
            out.append(VersionSnapshot(
                model=m.get("name", ""), version=str(m.get("version", "")),
                # Triton counts cache hits in queue.count (with no queue time): the mean queue wait
                # is over the requests that queued.
                success_count=ok, success_ns=ok_ns, fail_count=failed, queue_count=max(0, queued - hits), queue_ns=queue_ns,
                compute_ns=compute_ns, inference_count=int(m.get("inference_count", 0)),
                execution_count=int(m.get("execution_count", 0)), cache_hits=hits,
            ))
        return out

    return snapshots
