"""``GET /v1/models`` and ``GET /v1/models/{model}``."""

from __future__ import annotations

import json

from aiohttp import web

from gateway.api.openai.errors import error_response
from gateway.api.openai.models_protocol import list_document
from gateway.api.openai.models_serving import ModelsServing
from gateway.core.errors import GatewayError
from gateway.service import InferenceService


def _json(doc: dict) -> web.Response:
    return web.Response(body=json.dumps(doc).encode(), content_type="application/json")


class OpenAIModelsApi:
    def __init__(self, service: InferenceService) -> None:
        self.serving = ModelsServing(service)

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/v1/models", self.list), web.get("/v1/models/{model:.+}", self.retrieve)]

    async def list(self, request: web.Request) -> web.Response:
        return _json(list_document(self.serving.cards()))

    async def retrieve(self, request: web.Request) -> web.Response:
        try:
            card = self.serving.card(request.match_info["model"])
        except GatewayError as exc:
            return error_response(exc)
        return _json(card.document())
