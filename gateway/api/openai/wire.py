"""What every /v1 route reads and writes the same way: JSON bodies."""

from __future__ import annotations

import json
from typing import Any

import orjson
from aiohttp import web

from gateway.core.errors import InvalidInputError, PayloadTooLargeError


def json_bytes(doc: Any) -> bytes:
    """``doc`` as compact UTF-8 JSON; numpy arrays as JSON arrays (float64 rows print exactly as
    ``json.dumps`` of their list would). orjson: the per-token SSE chunks and the embedding
    vectors are the OpenAI routes' hottest encoding."""
    return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)


def without_nulls(data: Any) -> Any:
    """OpenAI's schema lets every optional field be ``null`` and several SDKs send it for "not set":
    a null is the field's default, never a type error."""
    if isinstance(data, dict) and None in data.values():
        return {k: v for k, v in data.items() if v is not None}
    return data


async def read_json(request: web.Request) -> Any:
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLargeError("request body exceeds the server's max_request_bytes") from None
    try:
        return json.loads(body)
    except ValueError as exc:
        raise InvalidInputError(f"the request body is not valid JSON: {exc}", param="") from None
