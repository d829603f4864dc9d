"""InferenceService: what the api layer sees of the gateway.

The api layer never touches executors, schedulers or the model manager; it hands over decoded
requests and gets responses or typed errors back, and reads served versions (``LoadedVersion``,
re-exported here as the api's type for them) and their state through this facade.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from gateway.cache import ResponseCache
from gateway.core.errors import GatewayError, InvalidInputError, ModelNotFoundError, ShuttingDownError, VersionRetiredError
from gateway.core.generation import GenerationRequest, GenerationStream
from gateway.core.stats import ModelStats
from gateway.core.types import InferRequest, InferResponse, ModelMetadata, TensorSpec
from gateway.monitoring import ModelSample, RequestTrace, Telemetry
from gateway.monitoring.cache_metrics import CacheCollector
from gateway.routing.compare import Comparison, compare_arrays
from gateway.service.models import LoadedVersion, ModelManager
from gateway.service.prompt_cache import PromptCache
from gateway.service.shadowing import ShadowDispatcher
from gateway.service.traffic import TrafficRouter
from gateway.service.validation import validate_request
from gateway.service.worker_stats import WorkerStats

T = TypeVar("T")
SERVER_NAME = "gateway"
SERVER_VERSION = "0.1.0"
# KServe v2 extensions this server implements.
EXTENSIONS = (
    "classification",
    "binary_tensor_data",
    "model_repository",
    "statistics",
    "schedule_policy",
    "model_configuration",
    "system_shared_memory",
)


__all__ = [
    "EXTENSIONS", "SERVER_NAME", "SERVER_VERSION", "InferenceService", "LoadedVersion", "RepositoryRow", "SchedulerState",
]


@dataclass(frozen=True, slots=True)
class RepositoryRow:
    """One row of the repository index (RepositoryIndex, ``POST /v2/repository/index``)."""

    name: str
    version: str  # "" for a model with no version known
    state: str  # READY | UNAVAILABLE | LOADING | UNLOADING
    reason: str


@dataclass(frozen=True, slots=True)
class SchedulerState:
    """A served version's queue and instances, as statistics and debug state report them."""

    queued: int
    busy_instances: int
    stuck_instances: int
    instances: int


def _int_param(req: InferRequest, name: str) -> int:
    value = req.parameters.get(name, 0)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInputError(f"request parameter '{name}' must be an integer, got {value!r}")
    if value < 0:
        raise InvalidInputError(f"request parameter '{name}' must be >= 0, got {value}")
    return value


class InferenceService:
    def __init__(
        self, manager: ModelManager, telemetry: Telemetry | None = None, cache: ResponseCache | None = None
    ) -> None:
        self.models = manager
        self.cache = cache if cache is not None else ResponseCache()
        self.prompt_cache = PromptCache(self.cache)
        self.accepting = True
        # Requests between decode and answer, both protocols (debug state: leak checks).
        self.in_flight = 0
        # Set when running as one of several worker processes.
        self.worker_stats: WorkerStats | None = None
        self.telemetry = telemetry or Telemetry()
        self.telemetry.bind(self._model_samples, self._metric_labels)
        self.telemetry.add_collector(CacheCollector(self.cache.metrics.snapshot))
        # Started and stopped by the daemon (``async with service.shadows``).
        self.shadows = ShadowDispatcher(manager)
        self.routing = TrafficRouter(manager, self._infer_on, self.shadows)
        self.telemetry.bind_drift(self._drift_monitors)

    # -- health -------------------------------------------------------------------

    @property
    def live(self) -> bool:
        return True

    @property
    def ready(self) -> bool:
        return self.accepting and self.models.all_ready

    def model_ready(self, name: str, version: str = "") -> bool:
        return self.models.is_ready(name, version)

    # -- inference --------------------------------------------------------------------

    async def infer(self, req: InferRequest) -> InferResponse:
        if not self.accepting:
            raise ShuttingDownError("server is shutting down")
        if not req.version:
            router = self.routing.router_for(req.model)
            if router is not None:
                return await self.routing.infer(router, req)
        return await self._infer_on(self.models.get(req.model, req.version), req)

    async def _infer_on(self, loaded: LoadedVersion, req: InferRequest) -> InferResponse:
        rows, key = validate_request(loaded, req)
        priority = _int_param(req, "priority") if "priority" in req.parameters else 0
        timeout_deadline = 0
        if "timeout" in req.parameters:
            timeout_us = _int_param(req, "timeout")
            if timeout_us:
                timeout_deadline = time.monotonic_ns() + timeout_us * 1000
        cache_cfg = loaded.config.cache
        if self.cache.applies(cache_cfg, req):
            def run() -> Awaitable[InferResponse]:
                return self._execute(loaded, req, rows, key, priority, timeout_deadline)

            wait_deadline = loaded.scheduler.waiting_deadline(req, timeout_deadline, time.monotonic_ns())
            return await self.cache.serve(loaded.name, loaded.version, cache_cfg, req, loaded.stats, run, wait_deadline)
        return await self._execute(loaded, req, rows, key, priority, timeout_deadline)

    async def _execute(
        self, loaded: LoadedVersion, req: InferRequest, rows: int, key: tuple, priority: int, timeout_deadline: int
    ) -> InferResponse:
        try:
            outputs = await loaded.scheduler.submit(req, rows, key, priority, timeout_deadline)
        except VersionRetiredError:
            # A hot reload swapped the version while this request awaited (e.g. a cache lookup):
            # the request goes to what serves now, never fails for the swap.
            loaded = self._replacement(loaded, req)
            rows, key = validate_request(loaded, req)
            outputs = await loaded.scheduler.submit(req, rows, key, priority, timeout_deadline)
        index = loaded.output_index
        return InferResponse(
            model=loaded.name,
            version=loaded.version,
            outputs=outputs,
            datatypes={n: index[n].datatype for n in outputs},
            id=req.id,
        )

    def _replacement(self, retired: LoadedVersion, req: InferRequest) -> LoadedVersion:
        """The same version reloaded; or, when it is gone and the request named none, the latest."""
        try:
            return self.models.get(retired.name, retired.version)
        except ModelNotFoundError:
            if req.version:
                raise
            return self.models.get(retired.name)

    async def infer_traced(self, req: InferRequest, trace: RequestTrace | None) -> InferResponse:
        """``infer`` for the api layer, stamping the request's hops when it is traced."""
        self.in_flight += 1
        try:
            if trace is None:
                return await self.infer(req)
            trace.attach(req)
            resp = await self.infer(req)
            trace.served_ns = time.monotonic_ns()
            return resp
        finally:
            self.in_flight -= 1

    async def generate(self, req: GenerationRequest) -> GenerationStream:
        """Admit a text-generation request on the model's engine (the version its routing picks,
        when the model has a ``routing:`` section); the stream yields its tokens."""
        if not self.accepting:
            raise ShuttingDownError("server is shutting down")
        router = self.routing.router_for(req.model)
        if router is not None:
            return await self.routing.generate(router, req, self._generate_on)
        return await self._generate_on(self.models.get(req.model), req)

    async def _generate_on(self, loaded: LoadedVersion, req: GenerationRequest) -> GenerationStream:
        if loaded.generator is None:
            raise InvalidInputError(
                f"model '{req.model}' does not generate text (its model.yaml has no generation: section)", param="model"
            )
        if req.constraint is not None:
            await asyncio.to_thread(loaded.generator.prepare, req)
        semantic = loaded.config.cache.semantic
        if semantic.enabled:
            engine = loaded.generator
            return await self.prompt_cache.generate(
                loaded.name, loaded.version, semantic, engine, req,
                chat_template=engine.tokenizer.chat_template, generation=loaded.config.generation,
            )
        return loaded.generator.submit(req)

    async def routed_call(
        self, model: str, call: Callable[[LoadedVersion], Awaitable[T]], array_of: Callable[[T], np.ndarray],
        version_of: Callable[[T], str], route_key: str = "", user: str = "",
    ) -> T:
        """``call`` on the served version the model's routing picks (canary, fallback, shadows whose
        ``array_of`` answers are compared with the live one's), or on its default version when it
        has no routing: the door for whole-answer calls other than v2 infer (embeddings)."""
        if not self.accepting:
            raise ShuttingDownError("server is shutting down")
        router = self.routing.router_for(model)
        if router is None:
            return await call(self.models.get(model))

        def compare(live: T, shadow: T) -> Comparison:
            return compare_arrays(array_of(live), array_of(shadow))

        return await self.routing.call(router, model, route_key, user, call, compare, version_of)

    # -- repository control -------------------------------------------------------------

    def repository_index(self) -> list[RepositoryRow]:
        return [RepositoryRow(*row) for row in self.models.index()]

    async def load_model(self, name: str) -> None:
        await self.models.load(name)

    async def unload_model(self, name: str) -> None:
        await self.models.unload(name)

    # -- metadata -----------------------------------------------------------------------

    def served_names(self) -> list[str]:
        """Models with at least one version serving, sorted."""
        return sorted(name for name, versions in self.models.serving.items() if versions)

    def latest_served(self, name: str) -> LoadedVersion | None:
        """The highest serving version of ``name``; None when none serves (never raises)."""
        versions = self.models.serving.get(name)
        return versions[max(versions, key=int)] if versions else None

    @staticmethod
    def scheduler_state(loaded: LoadedVersion) -> SchedulerState:
        s = loaded.scheduler
        return SchedulerState(s.queue_depth, s.busy_instances, s.stuck_instances, s.instances)

    def loaded(self, name: str, version: str = "") -> LoadedVersion:
        return self.models.get(name, version)

    def model_metadata(self, name: str, version: str = "") -> ModelMetadata:
        loaded = self.models.get(name, version)
        batch = (-1,) if loaded.max_batch_size > 0 else ()
        def full(specs):
            return tuple(TensorSpec(s.name, s.datatype, batch + s.shape) for s in specs)

        versions = tuple(sorted(self.models.serving.get(name, {}), key=int)) if not version else (loaded.version,)
        return ModelMetadata(
            name=loaded.name,
            versions=versions,
            platform=loaded.platform,
            inputs=full(loaded.inputs),
            outputs=full(loaded.outputs),
            max_batch_size=loaded.max_batch_size,
        )

    def statistics(self, name: str = "", version: str = "") -> list[LoadedVersion]:
        if name:
            if version:
                return [self.models.get(name, version)]
            self.models.get(name)  # raises for unknown models
            return list(self.models.serving[name].values())
        return [v for versions in self.models.serving.values() for v in versions.values()]

    async def peer_statistics(self) -> list[dict] | None:
        """The other workers' statistics as of now (each asked for a snapshot, bounded wait), for
        ``version_stats``; None with one worker. Statistics requests read them first, so counts
        never go backwards between two requests that different workers answer."""
        return None if self.worker_stats is None else await self.worker_stats.fresh_peer_docs()

    def version_stats(self, loaded: LoadedVersion, peers: list[dict] | None = None) -> ModelStats:
        """This process's counters, summed with the other workers' when there are several (``peers``
        from ``peer_statistics``; else their latest periodic snapshots, up to 0.5 s old)."""
        if self.worker_stats is None:
            return loaded.stats
        return self.worker_stats.merged(loaded.name, loaded.version, loaded.stats, peers)

    def cache_snapshot(self) -> dict:
        """The response caches' counters and sizes (``GET /v2/cache``)."""
        return self.cache.snapshot()

    # -- telemetry sources ------------------------------------------------------------------

    def _model_samples(self) -> list[ModelSample]:
        docs = self.worker_stats.peer_docs() if self.worker_stats is not None else []
        return [self._model_sample(v, docs) for versions in self.models.serving.values() for v in versions.values()]

    def _model_sample(self, v: LoadedVersion, docs: list[dict]) -> ModelSample:
        """Counters and scheduler gauges summed over the workers under --workers (the others' are up
        to 0.5 s old, ``docs`` read once per scrape); generation gauges are this process's."""
        queued, instances, busy = v.scheduler.queue_depth, v.scheduler.instances, v.scheduler.busy_instances
        stats = v.stats
        if self.worker_stats is not None:
            q, i, b = self.worker_stats.peer_gauges(v.name, v.version, docs)
            queued, instances, busy = queued + q, instances + i, busy + b
            stats = self.worker_stats.merged(v.name, v.version, v.stats, docs)
        return ModelSample(v.name, v.version, stats, queued, instances, busy,
                           v.generator.stats if v.generator is not None else None)

    def _metric_labels(self, name: str, version: str) -> tuple[str, str]:
        try:
            loaded = self.models.get(name, version)
        except GatewayError:
            return ("", "") if name not in self.models.status else (name, version)
        return loaded.name, loaded.version

    # -- drift ------------------------------------------------------------------------------

    def _drift_monitors(self) -> list:
        return [v.drift for versions in self.models.serving.values() for v in versions.values() if v.drift is not None]

    def drift_metrics(self, model: str, version: str) -> dict[str, float]:
        """Flat ``drift.<feature>.<statistic>`` values (``severity`` 0 none, 1 warning, 2 critical) of the
        latest judged window; empty when the version has no drift config or no reference yet."""
        loaded = self.models.get(model, version)
        return loaded.drift.flat_metrics() if loaded.drift is not None else {}

    def drift_report(self, model: str, version: str = "") -> list[dict]:
        """Drift state of one version, or of every served version of the model when ``version`` is ""."""
        versions = [self.models.get(model, version)] if version else self.statistics(model)
        return [
            v.drift.report() if v.drift is not None else {"model": v.name, "version": v.version, "state": "off"}
            for v in sorted(versions, key=lambda v: int(v.version))
        ]
