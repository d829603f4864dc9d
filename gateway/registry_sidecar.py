"""``gateway registry-sync``: the registry client as its own process, beside a daemon sharing the repository.

It runs the same ``RegistrySync`` as the daemon does. Serving counters for the
reports come from the daemon's HTTP statistics (``--gateway-url``); without it
the process only follows the aliases. ``--metrics-port`` serves its own
Prometheus counters. Process glue, like ``daemon.py``: the client itself is
``gateway.registry.sync``.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from prometheus_client import CollectorRegistry, start_http_server

from gateway.core.settings import ServerSettings
from gateway.monitoring.metrics import RegistryCollector
from gateway.registry.sources import http_source
from gateway.registry.sync import RegistrySync

_log = logging.getLogger(__name__)


async def run_sidecar(settings: ServerSettings, *, gateway_url: str = "", once: bool = False,
                      metrics_port: int | None = None) -> int:
    source = http_source(gateway_url, settings.registry_timeout_s) if gateway_url else None
    sync = RegistrySync(settings, source)
    if once:
        try:
            ok = await sync.poll_once()
            if ok and sync.reporter is not None:
                await sync.report_once()
        finally:
            await sync.client.close()
        problems = sync.health.problems
        return 0 if ok and not problems else 1
    if metrics_port is not None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(RegistryCollector(sync.health))
        start_http_server(metrics_port, registry=registry)
        _log.info("registry-sync: metrics on :%d/metrics", metrics_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with sync:
        _log.info("registry-sync: running for repository %s", settings.model_repository)
        await stop.wait()
    _log.info("registry-sync: stopped")
    return 0
