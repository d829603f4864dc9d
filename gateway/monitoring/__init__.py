"""Telemetry: Prometheus metrics, OpenTelemetry traces and log set-up, behind one object.

The service facade owns a ``Telemetry`` and the api layer reaches it through
the facade: ``telemetry.tracing`` is None when tracing is off (the api then
creates nothing), and ``request_done`` is the one call per answered request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Any

from gateway.monitoring.gpu import GpuSampler
from gateway.monitoring.metrics import DriftCollector, GatewayCollector, ModelSample, RequestMetrics, build_registry, render
from gateway.monitoring.tracing import RequestTrace, Tracing

__all__ = ["ModelSample", "RequestTrace", "Telemetry", "Tracing"]

_requests_log = logging.getLogger("gateway.requests")


def _no_models() -> Iterable[ModelSample]:
    return ()


def _unresolved(model: str, version: str) -> tuple[str, str]:
    return model, version


class Telemetry:
    def __init__(self, tracing: Tracing | None = None, *, gpu: bool = False) -> None:
        self.tracing = tracing
        self.requests = RequestMetrics()
        self.gpu = GpuSampler() if gpu else None
        self._models: Callable[[], Iterable[ModelSample]] = _no_models
        self._resolve: Callable[[str, str], tuple[str, str]] = _unresolved
        self._collector = GatewayCollector(self.requests, lambda: self._models(), self.gpu.collect if self.gpu else None)
        self.registry = build_registry(self._collector)
        self._drift_monitors: Callable[[], Iterable] = tuple
        self.registry.register(DriftCollector(lambda: self._drift_monitors()))

    @classmethod
    def from_settings(cls, settings, service_version: str) -> Telemetry:
        tracing = Tracing.from_settings(settings.tracing, settings.trace_sample_ratio, service_version)
        return cls(tracing, gpu=True)

    def bind(
        self, models: Callable[[], Iterable[ModelSample]], resolve: Callable[[str, str], tuple[str, str]]
    ) -> None:
        """``models`` lists the versions served; ``resolve`` maps a failed request's (model, version)
        to the labels to count it under ("", "") for names that match nothing, so garbage
        names cannot grow the series without bound)."""
        self._models = models
        self._resolve = resolve

    def add_collector(self, collector) -> None:
        """Another source of families for /metrics (a prometheus_client custom collector)."""
        self.registry.register(collector)

    def bind_peer_requests(self, peers: Callable[[], Iterable[list]]) -> None:
        """``peers`` gives the other workers' published request series (``RequestMetrics.to_json``),
        summed into this process's on /metrics."""
        self._collector.peer_requests = peers

    def bind_drift(self, monitors: Callable[[], Iterable]) -> None:
        """``monitors`` lists the drift monitors of the versions served."""
        self._drift_monitors = monitors

    def request_done(
        self,
        protocol: str,
        model: str,
        version: str,
        code: str,
        start_ns: int,
        end_ns: int,
        trace: RequestTrace | None,
        error: str | None = None,
        attributes: dict[str, Any] | None = None,
    ) -> None:
        """Count an answered request (``code`` is "ok" or an ErrorCode value) and close its trace."""
        if error is not None:
            model, version = self._resolve(model, version)
        self.requests.observe(model, version, protocol, code, end_ns - start_ns)
        if trace is not None:
            trace.finish(end_ns, error, attributes)
        if _requests_log.isEnabledFor(logging.DEBUG):
            _requests_log.debug(
                "%s %s:%s %s in %.3f ms%s", protocol, model, version or "-", code,
                (end_ns - start_ns) / 1e6, f": {error}" if error else "",
            )

    def render_metrics(self, accept: str | None) -> tuple[bytes, str]:
        return render(self.registry, accept)

    async def close(self) -> None:
        if self.tracing is not None:
            await asyncio.to_thread(self.tracing.shutdown)
        if self.gpu is not None:
            self.gpu.close()
