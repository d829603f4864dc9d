"""HTTP routes of Triton's system shared-memory extension (the registry is ``shared_memory.py``).

    GET  /v2/systemsharedmemory[/region/{name}]/status       [{name, key, offset, byte_size}, ...]
    POST /v2/systemsharedmemory/region/{name}/register       body {"key", "offset", "byte_size"}
    POST /v2/systemsharedmemory[/region/{name}]/unregister   one region, or all

Errors are ``{"error": "..."}``: 400 for a bad body, an unopenable key or a name already
registered (Triton's ALREADY_EXISTS is a 400 over HTTP), 404 for the status of an unknown
region, 403 when the server runs without ``allow_client_shm``.
"""

from __future__ import annotations

import json

from aiohttp import web

from gateway.api.shared_memory import SharedMemoryRegistry
from gateway.core.errors import InvalidInputError

_BASE = "/v2/systemsharedmemory"


def _json(doc) -> web.Response:
    return web.Response(body=json.dumps(doc).encode(), content_type="application/json")


class SharedMemoryHttp:
    def __init__(self, registry: SharedMemoryRegistry, error_response) -> None:
        self.registry = registry
        self._error = error_response

    def routes(self) -> list[web.RouteDef]:
        region = _BASE + "/region/{name}"
        return [
            web.get(_BASE + "/status", self.status),
            web.get(region + "/status", self.status),
            web.post(region + "/register", self.register),
            web.post(_BASE + "/unregister", self.unregister),
            web.post(region + "/unregister", self.unregister),
        ]

    async def status(self, request: web.Request) -> web.Response:
        try:
            return _json(self.registry.status(request.match_info.get("name", "")))
        except Exception as exc:  # noqa: BLE001 - every failure becomes a status
            return self._error(exc)

    async def register(self, request: web.Request) -> web.Response:
        try:
            key, offset, byte_size = _register_body(await request.read())
            self.registry.register(request.match_info["name"], key, offset, byte_size)
        except Exception as exc:  # noqa: BLE001
            return self._error(exc)
        return _json({})

    async def unregister(self, request: web.Request) -> web.Response:
        try:
            self.registry.unregister(request.match_info.get("name", ""))
        except Exception as exc:  # noqa: BLE001
            return self._error(exc)
        return _json({})


def _register_body(raw: bytes) -> tuple[str, int, int]:
    try:
        doc = json.loads(raw) if raw else None
    except ValueError:
        raise InvalidInputError("the register request body must be JSON") from None
    if not isinstance(doc, dict):
        raise InvalidInputError('the register request body must be an object {"key", "offset", "byte_size"}')
    key = doc.get("key")
    if not isinstance(key, str) or not key:
        raise InvalidInputError("the register request needs 'key', a non-empty string")
    return key, _count(doc, "offset", 0), _count(doc, "byte_size", None)


def _count(doc: dict, field: str, default: int | None) -> int:
    value = doc.get(field, default)
    if type(value) is not int or value < 0:
        raise InvalidInputError(f"the register request needs '{field}', a non-negative integer, got {value!r}")
    return value
