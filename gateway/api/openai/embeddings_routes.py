"""``POST /v1/embeddings``: JSON in, OpenAI's embedding list out, errors in OpenAI's shape."""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from gateway.api.errors import HTTP_STATUS, classify
from gateway.api.openai.embeddings_protocol import parse_request, response_document
from gateway.api.openai.embeddings_serving import EmbeddingServing
from gateway.api.openai.errors import error_response
from gateway.api.openai.wire import json_bytes, read_json
from gateway.api.routing_http import MODEL_VERSION_HEADER, ROUTE_KEY_HEADER
from gateway.service import InferenceService

# Above this many floats the JSON body is encoded off the event loop.
_INLINE_ENCODE_FLOATS = 1 << 16


class OpenAIEmbeddingsApi:
    def __init__(self, service: InferenceService) -> None:
        self.service = service
        self.serving = EmbeddingServing(service)

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/v1/embeddings", self.create)]

    async def create(self, request: web.Request) -> web.Response:
        start = time.monotonic_ns()
        model = ""
        try:
            doc = await read_json(request)
            if isinstance(doc, dict) and isinstance(doc.get("model"), str):
                model = doc["model"]
            parsed = parse_request(doc)
            result = await self.serving.create(parsed, route_key=request.headers.get(ROUTE_KEY_HEADER, ""))
            if result.vectors.size <= _INLINE_ENCODE_FLOATS:
                body = _encode(result, parsed.encoding_format)
            else:
                body = await asyncio.to_thread(_encode, result, parsed.encoding_format)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a status, never a crash
            code, message = classify(exc)
            self.service.telemetry.request_done(
                "http", model, "", code.value, start, time.monotonic_ns(), None, message,
                {"http.response.status_code": HTTP_STATUS[code]},
            )
            return error_response(exc)
        self.service.telemetry.request_done("http", result.model, result.version, "ok", start, time.monotonic_ns(), None)
        return web.Response(body=body, content_type="application/json", headers={MODEL_VERSION_HEADER: result.version})


def _encode(result, encoding_format: str) -> bytes:
    return json_bytes(response_document(result.model, result.vectors, encoding_format, result.prompt_tokens))

