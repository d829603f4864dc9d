"""KServe v2 REST on aiohttp: health, metadata, config, statistics, repository, infer."""

from __future__ import annotations

import asyncio
import json
import logging
import time

from aiohttp import web

from gateway.api.auth import AccessControl, AdminToken, ApiKeys
from gateway.api.errors import HTTP_STATUS, classify
from gateway.api.limits import ConcurrencyGate, RequestLimits, check_request
from gateway.api.openai.completions_routes import OpenAICompletionsApi
from gateway.api.openai.errors import error_response as openai_error_response
from gateway.api.openai.embeddings_routes import OpenAIEmbeddingsApi
from gateway.api.openai.errors import openai_errors
from gateway.api.openai.models_routes import OpenAIModelsApi
from gateway.api.http_routes import route_template
from gateway.api.http_codec import HEADER_LENGTH_HEADER, decode_infer_request, encode_error, encode_infer_response
from gateway.api.unsupported_http import unsupported_routes
from gateway.api.v2_documents import model_config_document, statistics_document
from gateway.core import context as request_context
from gateway.api.reliability_http import ReliabilityHttp
from gateway.api.routing_http import MODEL_VERSION_HEADER, ROUTE_KEY_HEADER, RoutingHttp
from gateway.api.shared_memory import SharedMemoryRegistry
from gateway.api.shared_memory_http import SharedMemoryHttp
from gateway.api.v2_request_policy import apply_output_plans, output_context_of, output_plans
from gateway.core.errors import GatewayError, InvalidInputError, ModelNotFoundError, PayloadTooLargeError
from gateway.service import InferenceService
from gateway.service.facade import EXTENSIONS, SERVER_NAME, SERVER_VERSION

_log = logging.getLogger(__name__)
_JSON = "application/json"
_HTTP_OK = {"http.response.status_code": 200}


def _json(doc, status: int = 200) -> web.Response:
    return web.Response(body=json.dumps(doc).encode(), status=status, content_type=_JSON)


def error_response(exc: BaseException) -> web.Response:
    code, message = classify(exc)
    return web.Response(body=encode_error(message), status=HTTP_STATUS[code], content_type=_JSON)


def _version(request: web.Request) -> str:
    return request.match_info.get("version", "")


class HttpApi:
    def __init__(
        self, service: InferenceService, max_request_bytes: int, limits: RequestLimits | None = None,
        shared_memory: SharedMemoryRegistry | None = None, admin: AdminToken | None = None,
    ) -> None:
        self.service = service
        self.max_request_bytes = max_request_bytes
        self.limits = limits or RequestLimits()
        self.shared_memory = shared_memory if shared_memory is not None else SharedMemoryRegistry()
        self._output_context = output_context_of(service)
        self.admin = admin or AdminToken("")

    def _model_control(self, request: web.Request) -> None:
        """Repository index, load and unload need the admin token when one is set."""
        self.admin.check_model_control(request.headers.get("Authorization"), request.remote)

    def routes(self) -> list[web.RouteDef]:
        model = "/v2/models/{model}"
        versioned = "/v2/models/{model}/versions/{version}"
        r = [
            web.get("/v2/health/live", self.live),
            web.get("/v2/health/ready", self.ready),
            web.get("/v2", self.server_metadata),
            web.get("/v2/models/stats", self.statistics),
            web.post("/v2/repository/index", self.repository_index),
            web.post("/v2/repository/models/{model}/load", self.load),
            web.post("/v2/repository/models/{model}/unload", self.unload),
            web.get("/metrics", self.metrics),
            web.get("/v2/cache/stats", self.cache_stats),
        ]
        for base in (model, versioned):
            r += [
                web.get(base, self.model_metadata),
                web.get(base + "/ready", self.model_ready),
                web.get(base + "/config", self.model_config),
                web.get(base + "/stats", self.statistics),
                web.post(base + "/infer", self.infer),
            ]
        r += [web.get(model + "/drift", self.drift), web.get(versioned + "/drift", self.drift)]
        return r

    async def live(self, request: web.Request) -> web.Response:
        return _json({"live": True})

    async def ready(self, request: web.Request) -> web.Response:
        ok = self.service.ready
        return _json({"ready": ok}, 200 if ok else 503)

    async def server_metadata(self, request: web.Request) -> web.Response:
        return _json({"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": list(EXTENSIONS)})

    async def model_metadata(self, request: web.Request) -> web.Response:
        try:
            md = self.service.model_metadata(request.match_info["model"], _version(request))
        except GatewayError as exc:
            return error_response(exc)

        def tensors(specs):
            return [{"name": s.name, "datatype": s.datatype, "shape": list(s.shape)} for s in specs]

        return _json({
            "name": md.name,
            "versions": list(md.versions),
            "platform": md.platform,
            "inputs": tensors(md.inputs),
            "outputs": tensors(md.outputs),
        })

    async def model_ready(self, request: web.Request) -> web.Response:
        name = request.match_info["model"]
        ok = self.service.model_ready(name, _version(request))
        if not ok:
            try:
                self.service.loaded(name, _version(request))
            except ModelNotFoundError as exc:  # no such model or version: 404, not "not ready"
                return error_response(exc)
            except GatewayError:
                pass
        return _json({"name": name, "ready": ok}, 200 if ok else 503)

    async def model_config(self, request: web.Request) -> web.Response:
        try:
            loaded = self.service.loaded(request.match_info["model"], _version(request))
        except GatewayError as exc:
            return error_response(exc)
        return _json(model_config_document(loaded))

    async def statistics(self, request: web.Request) -> web.Response:
        try:
            versions = self.service.statistics(request.match_info.get("model", ""), _version(request))
        except GatewayError as exc:
            return error_response(exc)
        peers = await self.service.peer_statistics()
        # queue_depth is ours (Triton's statistics have no such field); clients ignore unknown keys.
        return _json({
            "model_stats": [
                {**statistics_document(v, self.service.version_stats(v, peers)), "queue_depth": self.service.scheduler_state(v).queued}
                for v in versions
            ]
        })

    async def cache_stats(self, request: web.Request) -> web.Response:
        return _json(self.service.cache_snapshot())

    async def drift(self, request: web.Request) -> web.Response:
        name, version = request.match_info["model"], _version(request)
        try:
            reports = self.service.drift_report(name, version)
        except GatewayError as exc:
            return error_response(exc)
        return _json(reports[0] if version else {"model": name, "versions": reports})

    async def repository_index(self, request: web.Request) -> web.Response:
        try:
            self._model_control(request)
        except GatewayError as exc:
            return error_response(exc)
        ready_only = False
        if request.can_read_body:
            try:
                body = await request.json() if await request.read() else {}
            except ValueError:
                return error_response(InvalidInputError("repository index body must be JSON"))
            ready_only = bool(isinstance(body, dict) and body.get("ready"))
        rows = [
            {"name": row.name, **({"version": row.version} if row.version else {}), "state": row.state, "reason": row.reason}
            for row in self.service.repository_index()
            if not ready_only or row.state == "READY"
        ]
        return _json(rows)

    async def load(self, request: web.Request) -> web.Response:
        try:
            self._model_control(request)
            # Shielded: a client hanging up must not cancel a load half way.
            await asyncio.shield(self.service.load_model(request.match_info["model"]))
        except GatewayError as exc:
            return error_response(exc)
        return _json({})

    async def unload(self, request: web.Request) -> web.Response:
        try:
            self._model_control(request)
            await asyncio.shield(self.service.unload_model(request.match_info["model"]))
        except GatewayError as exc:
            return error_response(exc)
        return _json({})

    async def infer(self, request: web.Request) -> web.Response:
        start = time.monotonic_ns()
        model, version = request.match_info["model"], _version(request)
        telemetry = self.service.telemetry
        trace = None
        if telemetry.tracing is not None:
            route = route_template(request)
            trace = telemetry.tracing.begin("POST " + route, request.headers, start, {
                "http.request.method": "POST", "http.route": route, "gateway.model.name": model,
            })
        try:
            req, fmt = await self._decode(request, model, version)
            plans = output_plans(req.outputs, self.shared_memory) if req.outputs else None
            check_request(req, self.limits)
            request_context.request_id.set(req.id or request.headers.get("X-Request-ID", ""))
            req.route_key = request.headers.get(ROUTE_KEY_HEADER, "")
            resp = await self.service.infer_traced(req, trace)
            placed: frozenset[str] = frozenset()
            if plans:
                resp, placed = apply_output_plans(resp, plans, self._output_context)
            payload, headers = encode_infer_response(resp, fmt, placed)
            headers[MODEL_VERSION_HEADER] = resp.version
        except Exception as exc:  # noqa: BLE001 - every failure becomes a status, never a crash
            code, message = classify(exc)
            status = HTTP_STATUS[code]
            telemetry.request_done("http", model, version, code.value, start, time.monotonic_ns(), trace, message,
                                   {"http.response.status_code": status})
            return web.Response(body=encode_error(message), status=status, content_type=_JSON)
        telemetry.request_done("http", resp.model, resp.version, "ok", start, time.monotonic_ns(), trace, None, _HTTP_OK)
        return web.Response(body=payload, headers=headers)

    async def _decode(self, request: web.Request, model: str, version: str):
        if request.content_length is not None and request.content_length > self.max_request_bytes:
            raise PayloadTooLargeError(
                f"request body of {request.content_length} bytes exceeds the limit of {self.max_request_bytes}"
            )
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise PayloadTooLargeError(f"request body exceeds the limit of {self.max_request_bytes} bytes") from None
        header_length = None
        header_text = request.headers.get(HEADER_LENGTH_HEADER)
        if header_text is not None:
            try:
                header_length = int(header_text)
            except ValueError:
                raise InvalidInputError(f"{HEADER_LENGTH_HEADER} must be an integer, got '{header_text}'") from None
        return decode_infer_request(
            body, content_type=request.content_type, header_length=header_length, model=model, version=version,
            max_tensor_elements=self.limits.max_tensor_elements, shared_memory=self.shared_memory,
        )

    async def metrics(self, request: web.Request) -> web.Response:
        body, content_type = self.service.telemetry.render_metrics(request.headers.get("Accept"))
        return web.Response(body=body, headers={"Content-Type": content_type})


@web.middleware
async def json_errors(request: web.Request, handler):
    """Framework-level errors (unknown route, wrong method) get the same JSON shape."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return web.Response(body=encode_error(exc.reason or str(exc)), status=exc.status, content_type=_JSON)


# Inference routes of the v2 API; every /v1 route also needs an API key (as vLLM's --api-key).
_INFER_ROUTES = frozenset({"/v2/models/{model}/infer", "/v2/models/{model}/versions/{version}/infer"})


def _needs_api_key(request: web.Request) -> bool:
    if request.path == "/v1" or request.path.startswith(("/v1/", "/v2/systemsharedmemory")):
        return True
    return route_template(request) in _INFER_ROUTES


def api_key_check(keys: ApiKeys):
    """Inference needs ``Authorization: Bearer <api key>``; health, metadata and /metrics stay open."""

    @web.middleware
    async def check(request: web.Request, handler):
        if _needs_api_key(request):
            try:
                keys.check(request.headers.get("Authorization"))
            except GatewayError as exc:
                openai = request.path.startswith("/v1")
                response = openai_error_response(exc) if openai else error_response(exc)
                response.headers["WWW-Authenticate"] = "Bearer"
                return response
        return await handler(request)

    return check


# Probes and scrapes must answer even when the request limit is reached.
_UNGATED_PATHS = frozenset({"/v2/health/live", "/v2/health/ready", "/metrics"})


def concurrency_limit(gate: ConcurrencyGate):
    @web.middleware
    async def limit(request: web.Request, handler):
        if request.path in _UNGATED_PATHS:
            return await handler(request)
        try:
            gate.enter()
        except GatewayError as exc:
            return error_response(exc)
        try:
            return await handler(request)
        finally:
            gate.leave()

    return limit


def build_app(
    service: InferenceService, max_request_bytes: int, limits: RequestLimits | None = None,
    access: AccessControl | None = None, shared_memory: SharedMemoryRegistry | None = None,
) -> web.Application:
    limits = limits or RequestLimits()
    access = access or AccessControl.open()
    shared_memory = shared_memory if shared_memory is not None else SharedMemoryRegistry()
    gate = ConcurrencyGate(limits.max_concurrent_requests, limits.concurrency_words())
    # No limit (no keys), no middleware: nothing to pay per request. Keys are checked first (an
    # unknown /v1 route without a key is a 401, not a 404; the check answers in each API's own
    # error shape), then /v1 errors leave in OpenAI's envelope, then a request takes a slot.
    middlewares = [openai_errors, json_errors]
    if access.api_keys.enabled:
        middlewares.insert(0, api_key_check(access.api_keys))
    if gate.limit:
        middlewares.append(concurrency_limit(gate))
    app = web.Application(client_max_size=max_request_bytes, middlewares=middlewares)
    app.add_routes(HttpApi(service, max_request_bytes, limits, shared_memory, access.admin).routes())
    app.add_routes(SharedMemoryHttp(shared_memory, error_response).routes())
    app.add_routes(RoutingHttp(service, access.admin, error_response).routes())
    app.add_routes(OpenAICompletionsApi(service).routes())
    app.add_routes(OpenAIEmbeddingsApi(service).routes())
    app.add_routes(OpenAIModelsApi(service).routes())
    app.add_routes(ReliabilityHttp(service, access.admin, error_response, gate).routes())
    app.add_routes(unsupported_routes())
    return app
