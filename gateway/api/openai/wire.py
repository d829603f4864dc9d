"""What every /v1 route reads the same way: the JSON body."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from gateway.api.openai.errors import InvalidFieldError
from gateway.core.errors import PayloadTooLargeError


async def read_json(request: web.Request) -> Any:
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLargeError("request body exceeds the server's max_request_bytes") from None
    try:
        return json.loads(body)
    except ValueError as exc:
        raise InvalidFieldError("", f"the request body is not valid JSON: {exc}") from None
