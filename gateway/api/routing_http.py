"""HTTP routes of traffic routing: a model's routing status, and the token-protected admin endpoint.

    GET    /v2/models/{m}/routing               status: weights, rollbacks, shadow comparison (public)
    GET    /v2/admin/models/{m}/routing         the same, for operators
    PUT    /v2/admin/models/{m}/routing         set fields of the routing section at run time
    DELETE /v2/admin/models/{m}/routing         drop the run-time settings: back to model.yaml
    POST   /v2/admin/models/{m}/routing/reset   give rolled-back versions their weight back

Admin routes need ``Authorization: Bearer <admin_token>`` (gateway.api.auth); with no
token set they answer 404, as if they did not exist.
"""

from __future__ import annotations

import json
import logging

from aiohttp import web

from gateway.api.auth import AdminToken
from gateway.core.errors import InvalidInputError
from gateway.service import InferenceService

_log = logging.getLogger(__name__)

ROUTE_KEY_HEADER = "x-route-key"
MODEL_VERSION_HEADER = "x-model-version"


def _json(doc, status: int = 200) -> web.Response:
    return web.Response(body=json.dumps(doc).encode(), status=status, content_type="application/json")


def authorize_admin(request: web.Request, admin: AdminToken) -> None:
    """Raises unless the request carries ``Authorization: Bearer <admin_token>``; no token set = admin off."""
    admin.require(request.headers.get("Authorization"), request.remote)


class RoutingHttp:
    def __init__(self, service: InferenceService, admin: AdminToken, error_response) -> None:
        self.service = service
        self._admin = admin
        self._error = error_response

    def routes(self) -> list[web.RouteDef]:
        admin = "/v2/admin/models/{model}/routing"
        return [
            web.get("/v2/models/{model}/routing", self.status),
            web.get(admin, self.admin_get),
            web.put(admin, self.admin_put),
            web.delete(admin, self.admin_delete),
            web.post(admin + "/reset", self.admin_reset),
        ]

    def _authorize(self, request: web.Request) -> None:
        authorize_admin(request, self._admin)

    async def _body(self, request: web.Request):
        raw = await request.read()
        if not raw:
            return {}
        try:
            return json.loads(raw)
        except ValueError:
            raise InvalidInputError("the body must be JSON") from None

    async def _answer(self, request: web.Request, action, *, admin: bool = True) -> web.Response:
        try:
            if admin:
                self._authorize(request)
            return _json(await action(request.match_info["model"], request))
        except Exception as exc:  # noqa: BLE001 - every failure becomes a status
            return self._error(exc)

    async def status(self, request: web.Request) -> web.Response:
        return await self._answer(request, self._status, admin=False)

    async def admin_get(self, request: web.Request) -> web.Response:
        return await self._answer(request, self._status)

    async def admin_put(self, request: web.Request) -> web.Response:
        return await self._answer(request, self._put)

    async def admin_delete(self, request: web.Request) -> web.Response:
        return await self._answer(request, self._delete)

    async def admin_reset(self, request: web.Request) -> web.Response:
        return await self._answer(request, self._reset)

    async def _status(self, model: str, request: web.Request) -> dict:
        return self.service.routing.status(model)

    async def _put(self, model: str, request: web.Request) -> dict:
        patch = await self._body(request)
        _log.info("admin: PUT routing of model %s from %s", model, request.remote)
        return await self.service.routing.admin_set(model, patch)

    async def _delete(self, model: str, request: web.Request) -> dict:
        return await self.service.routing.admin_clear(model)

    async def _reset(self, model: str, request: web.Request) -> dict:
        body = await self._body(request)
        versions = body.get("versions") if isinstance(body, dict) else None
        if versions is not None and (
            not isinstance(versions, list) or not all(isinstance(v, int | str) for v in versions)
        ):
            raise InvalidInputError("'versions' must be a list of version numbers")
        return await self.service.routing.admin_reset(model, [str(v) for v in versions] if versions is not None else None)
