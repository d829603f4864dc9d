"""Triton REST routes this server does not offer: 501 with a JSON error saying why, not a bare 404."""

from __future__ import annotations

import json

from aiohttp import web

from gateway.api.unsupported import CUDA_SHARED_MEMORY, LOG_SETTINGS, TRACE_SETTINGS

_NOT_IMPLEMENTED = 501  # Triton's answer to an UNSUPPORTED error


def _answer(message: str):
    body = json.dumps({"error": message}).encode()

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body, status=_NOT_IMPLEMENTED, content_type="application/json")

    return handler


def unsupported_routes() -> list[web.RouteDef]:
    cuda, trace, logging = _answer(CUDA_SHARED_MEMORY), _answer(TRACE_SETTINGS), _answer(LOG_SETTINGS)
    return [
        web.route("*", "/v2/cudasharedmemory/{action:status|register|unregister}", cuda),
        web.route("*", "/v2/cudasharedmemory/region/{region}/{action:status|register|unregister}", cuda),
        web.route("*", "/v2/trace/setting", trace),
        web.route("*", "/v2/models/{model}/trace/setting", trace),
        web.route("*", "/v2/models/{model}/versions/{version}/trace/setting", trace),
        web.route("*", "/v2/logging", logging),
    ]
