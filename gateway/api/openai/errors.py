"""Errors in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.

The HTTP status still comes from the one table in :mod:`gateway.api.errors`; this module
only adds the OpenAI ``type`` (what the official clients switch on) and the ``param``
a field error names.
"""

from __future__ import annotations

import json

from aiohttp import web

from gateway.api.errors import HTTP_STATUS, classify
from gateway.core.errors import ErrorCode, InvalidInputError

# The ``type`` strings OpenAI's API returns for each kind of failure.
OPENAI_TYPE: dict[ErrorCode, str] = {
    ErrorCode.INVALID_ARGUMENT: "invalid_request_error",
    ErrorCode.NOT_FOUND: "invalid_request_error",
    ErrorCode.ALREADY_EXISTS: "invalid_request_error",
    ErrorCode.PAYLOAD_TOO_LARGE: "invalid_request_error",
    ErrorCode.RESOURCE_EXHAUSTED: "rate_limit_error",
    ErrorCode.DEADLINE_EXCEEDED: "timeout_error",
    ErrorCode.UNAVAILABLE: "server_error",
    ErrorCode.CANCELLED: "invalid_request_error",
    ErrorCode.UNIMPLEMENTED: "invalid_request_error",
    ErrorCode.INTERNAL: "server_error",
    ErrorCode.UNAUTHENTICATED: "authentication_error",
    ErrorCode.PERMISSION_DENIED: "permission_error",
}

# OpenAI's machine-readable ``code`` where it has a well-known one.
OPENAI_CODE: dict[ErrorCode, str] = {
    ErrorCode.NOT_FOUND: "model_not_found",
    ErrorCode.RESOURCE_EXHAUSTED: "rate_limit_exceeded",
}


def check_unicode(value, param: str) -> None:
    """JSON's ``\\ud800`` escapes decode to lone surrogates, which no tokenizer (and no UTF-8
    encoder) takes: refused here as the field's error rather than failing deep inside a model."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            bad = value[exc.start]
            raise InvalidInputError(
                f"'{param}' is not valid Unicode: it holds a lone surrogate \\u{ord(bad):04x} at character {exc.start}",
                param=param,
            ) from None
    elif isinstance(value, (list, tuple)):
        for item in value:
            check_unicode(item, param)


def error_document(exc: BaseException) -> tuple[int, dict]:
    """The HTTP status and OpenAI-shaped body of ``exc``."""
    code, message = classify(exc)
    param = exc.param if isinstance(exc, InvalidInputError) else None
    body = {"message": message, "type": OPENAI_TYPE[code], "param": param,
            "code": getattr(exc, "openai_code", None) or OPENAI_CODE.get(code)}
    return HTTP_STATUS[code], {"error": body}


def error_response(exc: BaseException) -> web.Response:
    status, doc = error_document(exc)
    return web.Response(body=json.dumps(doc).encode(), status=status, content_type="application/json")


# OpenAI's ``type`` for a bare HTTP status (errors raised outside the /v1 handlers).
_STATUS_TYPE: dict[int, str] = {HTTP_STATUS[c]: t for c, t in OPENAI_TYPE.items() if c is not ErrorCode.CANCELLED}


def envelope_response(status: int, message: str, *, code: str | None = None, headers=None) -> web.Response:
    doc = {"error": {"message": message, "type": _STATUS_TYPE.get(status, "server_error" if status >= 500 else "invalid_request_error"),
                     "param": None, "code": code}}
    return web.Response(body=json.dumps(doc).encode(), status=status, content_type="application/json", headers=headers)


def is_openai_path(path: str) -> bool:
    return path == "/v1" or path.startswith("/v1/")


def _route_error(request: web.Request, exc: web.HTTPException) -> web.Response:
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(exc.allowed_methods))
        return envelope_response(405, f"Method {request.method} is not allowed on {request.path} (allowed: {allowed})",
                                 code="method_not_allowed", headers={"Allow": allowed})
    if exc.status == 404:
        return envelope_response(404, f"Invalid URL ({request.method} {request.path})", code="unknown_url")
    return envelope_response(exc.status, exc.reason or str(exc))


def _rewrapped(response: web.StreamResponse) -> web.StreamResponse:
    """An error answered by a layer in front of the /v1 handlers (request limit, auth) in the v2
    shape ``{"error": "..."}``: the same status and headers, in OpenAI's envelope."""
    if not isinstance(response, web.Response) or response.status < 400 or not isinstance(response.body, bytes):
        return response
    try:
        doc = json.loads(response.body)
    except ValueError:
        return response
    if not isinstance(doc, dict) or not isinstance(doc.get("error"), str):
        return response
    headers = {k: v for k, v in response.headers.items() if k.lower() not in ("content-type", "content-length")}
    return envelope_response(response.status, doc["error"], headers=headers)


@web.middleware
async def openai_errors(request: web.Request, handler):
    """Every /v1 error leaves in OpenAI's envelope, whoever raised it: an unknown route (404), a
    wrong method (405), a framework exception, or a plain-shaped error from a middleware."""
    if not is_openai_path(request.path):
        return await handler(request)
    routing_error = request.match_info.http_exception
    if routing_error is not None:
        return _route_error(request, routing_error)
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return envelope_response(exc.status, exc.reason or str(exc), headers={
            k: v for k, v in exc.headers.items() if k.lower() not in ("content-type", "content-length")})
    return _rewrapped(response)


def sse_error_event(exc: BaseException) -> bytes:
    """An error met after a stream has begun: sent as one ``data:`` event, as OpenAI does."""
    _, doc = error_document(exc)
    return b"data: " + json.dumps(doc).encode() + b"\n\n"
