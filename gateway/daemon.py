"""The daemon: one uvloop event loop serving gRPC and HTTP over one InferenceService."""

from __future__ import annotations

import asyncio
import gc
import logging
import resource
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from multiprocessing.connection import Connection

import uvloop
from aiohttp import web

from gateway import native
from gateway.api.auth import AccessControl
from gateway.api.grpc_server import HealthMirror, build_server
from gateway.api.http_connections import GatewaySite
from gateway.api.http_server import build_app
from gateway.api.shared_memory import SharedMemoryRegistry
from gateway.api.limits import ConnectionTimeouts, RequestLimits
from gateway.api.tls import grpc_credentials, http_ssl_context
from gateway.cache import build_response_cache
from gateway.core.secrets import redact_url
from gateway.core.settings import ServerSettings
from gateway.monitoring import Telemetry
from gateway.monitoring.logs import configure_logging
from gateway.monitoring.metrics import RegistryCollector
from gateway.registry.sources import service_source
from gateway.registry.sync import RegistrySync
from gateway.service import InferenceService
from gateway.service.facade import SERVER_VERSION
from gateway.service.models import ModelManager
from gateway.service.repository_watcher import RepositoryWatcher
from gateway.service.fleet_drift import PART as FLEET_DRIFT_PART
from gateway.service.fleet_drift import FleetDrift
from gateway.service.fleet_state import FleetChannel, FleetState
from gateway.service.worker_stats import WorkerStats

_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WorkerRole:
    """Set when this process is one of several workers under the supervisor."""

    index: int
    stats_dir: str
    ready: Connection
    count: int = 1  # workers on this host: host-wide limits are split between them


def raise_open_file_limit() -> tuple[int, int]:
    """Soft RLIMIT_NOFILE up to the hard limit: each connection holds a descriptor, and the usual
    soft default (1024 under systemd and containerd) is spent by about a thousand idle clients."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:
            _log.warning("open file limit: soft %s, hard %s; could not raise the soft limit: %s", soft, hard, exc)
            return soft, hard
    new_soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    _log.info("open file limit: %s (soft was %s, hard %s)", new_soft, soft, hard)
    return new_soft, hard


@dataclass(frozen=True, slots=True)
class Running:
    """What ``started`` yields: the service and the ports it listens on (the real ones when 0 was asked)."""

    service: InferenceService
    grpc_port: int
    http_port: int
    health_changed: Callable[[], Awaitable[None]]


@asynccontextmanager
async def started(settings: ServerSettings, worker: WorkerRole | None = None) -> AsyncIterator[Running]:
    """The composition root: every component of one daemon process, started in order and stopped in
    the reverse order by one exit stack, so a failure half-way stops what had started and leaves
    nothing behind. On exit, the servers stop listening and let accepted requests finish (bounded
    by the grace period) before the models, caches and telemetry close."""
    grace = settings.grace_period_s
    async with AsyncExitStack() as stack:
        cache = build_response_cache(settings.cache_url, settings.cache_timeout_ms)
        stack.push_async_callback(cache.close)
        _log.info("response cache: in-process%s", f" + shared {redact_url(settings.cache_url)}" if settings.cache_url else " only")
        telemetry = Telemetry.from_settings(settings, SERVER_VERSION)
        stack.push_async_callback(telemetry.close)  # flushes the spans still queued
        manager = ModelManager(settings.model_repository, drain_timeout_s=grace)
        stack.push_async_callback(manager.close, grace)
        service = InferenceService(manager, telemetry, cache)
        stack.push_async_callback(service.prompt_cache.close)

        # The registry client runs in one process only (worker 0 under --workers): it writes the
        # repository, which every worker's watcher follows.
        if settings.registry_url and (worker is None or worker.index == 0):
            registry_sync = RegistrySync(settings, service_source(service))
            telemetry.registry.register(RegistryCollector(registry_sync.health))
            await stack.enter_async_context(registry_sync)
            await registry_sync.wait_first_poll(settings.registry_timeout_s)

        if worker is not None:
            # Load before listening: the kernel hands connections to every socket in the
            # SO_REUSEPORT group, so a worker must not listen before it can serve.
            await manager.reconcile()
            service.worker_stats = WorkerStats(worker.stats_dir, worker.index)
            service.worker_stats.start(lambda: manager.serving, telemetry.requests)
            telemetry.bind_peer_requests(service.worker_stats.peer_requests)
            stack.push_async_callback(service.worker_stats.stop)
        # Routing overrides and rollback verdicts are the replicas' (state_url) or the host's
        # (--workers), not this process's.
        # Drift windows are merged over the same members, on the same channel.
        channel: FleetChannel | None = None
        if settings.state_url:
            _log.info("routing and drift state: shared by the replicas on %s", redact_url(settings.state_url))
            # redis is imported only when a daemon uses it (half a second of every start otherwise).
            from gateway.service.fleet_redis import RedisFleetState

            channel = RedisFleetState(settings.state_url, worker.index if worker else 0)
        elif worker is not None:
            channel = FleetState(worker.stats_dir, worker.index)
        if channel is not None:
            drift = FleetDrift(manager, channel)
            channel.parts[FLEET_DRIFT_PART] = drift.document
            stack.callback(drift.leave)  # after the channel stopped (callbacks run last first)
            await service.routing.join_fleet(channel, also=[drift.on_poll])
            stack.push_async_callback(service.routing.leave_fleet)

        shared_memory = SharedMemoryRegistry(allowed=settings.allow_client_shm)  # one per process, both protocols
        stack.callback(shared_memory.close)
        # max_concurrent_requests holds for the host: each worker admits its share.
        limits = (RequestLimits.from_settings(settings) if worker is None
                  else RequestLimits.from_settings(settings, worker.index, worker.count))
        grpc_port, http_port, mirror = await _listen(stack, settings, service, shared_memory, limits)
        _log.info("listening grpc=%s:%d http=%s:%d", settings.host, grpc_port, settings.host, http_port)

        async def health_changed() -> None:
            if mirror is not None:
                await mirror.update()

        if worker is None:
            await manager.reconcile()
        await health_changed()
        await stack.enter_async_context(service.shadows)
        await stack.enter_async_context(RepositoryWatcher(manager, settings.repository_poll_s, health_changed))
        _log.info("ready: %s", ", ".join(f"{n}:{v}" for n, vs in manager.serving.items() for v in vs) or "no models")
        yield Running(service, grpc_port, http_port, health_changed)
        _log.info("stopping: draining accepted requests (grace %.1fs)", grace)
        service.accepting = False
        await health_changed()
    _log.info("stopped")


async def _listen(
    stack: AsyncExitStack, settings: ServerSettings, service: InferenceService, shared_memory: SharedMemoryRegistry,
    limits: RequestLimits,
) -> tuple[int, int, HealthMirror]:
    """Both servers, listening; the stack stops them together (each drains within the grace period)."""
    grpc_creds = grpc_ssl = ssl_context = None
    if settings.tls:
        tls_files = (settings.tls_cert_file, settings.tls_key_file, settings.tls_ca_file)
        ssl_context = http_ssl_context(*tls_files)
        if settings.grpc_transport == "native":
            grpc_ssl = http_ssl_context(*tls_files)  # its own: ALPN says h2 on this one
        else:
            grpc_creds = grpc_credentials(*tls_files)
        _log.info("TLS on both ports (certificate %s, key %s, client certificates %s)", settings.tls_cert_file,
                  settings.tls_key_file, f"required, CA {settings.tls_ca_file}" if settings.tls_ca_file else "not required")
    access = AccessControl.from_settings(settings)
    if access.api_keys.enabled:
        _log.info("inference needs an API key (%d configured)", len(access.api_keys))
    timeouts = ConnectionTimeouts.from_settings(settings)
    grace = settings.grace_period_s
    grpc_server, mirror, grpc_port = build_server(
        service, settings.host, settings.grpc_port, settings.max_request_bytes,
        limits=limits, max_metadata_bytes=settings.max_header_bytes, credentials=grpc_creds,
        transport=settings.grpc_transport, ssl_context=grpc_ssl, timeouts=timeouts, access=access,
        shared_memory=shared_memory,
    )
    await grpc_server.start()
    runner = web.AppRunner(
        build_app(service, settings.max_request_bytes, access=access, limits=limits, shared_memory=shared_memory),
        access_log=None,
        handle_signals=False,
        shutdown_timeout=grace,
        # A client that hangs up cancels its request: one still queued never runs the model.
        handler_cancellation=True,
        max_line_size=settings.max_header_bytes,
        max_field_size=settings.max_header_bytes,
        keepalive_timeout=timeouts.idle_s,
    )

    async def stop_servers() -> None:
        await asyncio.gather(grpc_server.stop(grace), runner.cleanup())

    stack.push_async_callback(stop_servers)
    await runner.setup()
    site = GatewaySite(runner, settings.host, settings.http_port, ssl_context=ssl_context,
                       header_timeout_s=timeouts.header_s, tls_handshake_timeout_s=timeouts.tls_handshake_s)
    await site.start()
    return grpc_port, site.port, mirror


async def serve(settings: ServerSettings, worker: WorkerRole | None = None) -> None:
    """One daemon process until SIGTERM or SIGINT."""
    native.log_choice()
    raise_open_file_limit()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with started(settings, worker) as running:
        # What exists now (modules, sessions, config) lives as long as the process: keep it out of
        # the collector's full passes.
        gc.freeze()
        if worker is not None:
            worker.ready.send(("ready", running.grpc_port, running.http_port))
        await stop.wait()


def setup_logging(settings: ServerSettings, role: str = "") -> None:
    configure_logging(settings.log_level, settings.log_format, settings.module_levels, role)


def run(settings: ServerSettings) -> None:
    """One daemon in this process (``--workers N`` is gateway.supervisor's)."""
    setup_logging(settings)
    settings.apply_to_interpreter()
    uvloop.run(serve(settings))
