"""HTTP routes for operators and tools: the OpenAPI document, and the admin-only debug state.

    GET /v2/openapi.json          OpenAPI 3 description of the v2 REST API (public)
    GET /v2/admin/debug/state     requests in progress, queues, stuck instances, asyncio tasks, threads

The debug state lets tests (and operators) see that cancelled or failed requests
leave nothing behind; it needs the admin token, like every ``/v2/admin`` route.
"""

from __future__ import annotations

import asyncio
import functools
import json
import threading
from pathlib import Path

import yaml
from aiohttp import web

from gateway.api.auth import AdminToken
from gateway.api.limits import ConcurrencyGate
from gateway.api.routing_http import authorize_admin
from gateway.service import InferenceService

OPENAPI_FILE = Path(__file__).with_name("openapi.yaml")


@functools.cache
def openapi_document() -> bytes:
    with OPENAPI_FILE.open(encoding="utf-8") as fh:
        return json.dumps(yaml.safe_load(fh)).encode()


class ReliabilityHttp:
    def __init__(self, service: InferenceService, admin: AdminToken, error_response, gate: ConcurrencyGate) -> None:
        self.service = service
        self._admin = admin
        self._error = error_response
        self._gate = gate

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/v2/openapi.json", self.openapi),
            web.get("/v2/admin/debug/state", self.debug_state),
        ]

    async def openapi(self, request: web.Request) -> web.Response:
        return web.Response(body=openapi_document(), content_type="application/json")

    async def debug_state(self, request: web.Request) -> web.Response:
        try:
            authorize_admin(request, self._admin)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a status
            return self._error(exc)
        return web.Response(body=json.dumps(self.snapshot()).encode(), content_type="application/json")

    def snapshot(self) -> dict:
        models: dict[str, dict] = {}
        for v in self.service.statistics():
            state = self.service.scheduler_state(v)
            models.setdefault(v.name, {})[v.version] = {
                "queued": state.queued,
                "busy_instances": state.busy_instances,
                "stuck_instances": state.stuck_instances,
                "instances": state.instances,
                "execute_timeouts": v.stats.execute_timeouts,
            }
        return {
            "requests_in_progress": self.service.in_flight,
            # Counted only when max_concurrent_requests is set (this request included).
            "http_requests_in_progress": self._gate.active,
            "http_requests_refused": self._gate.refused,
            "asyncio_tasks": len(asyncio.all_tasks()),
            "threads": threading.active_count(),
            "models": models,
        }
