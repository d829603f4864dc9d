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


class InvalidFieldError(InvalidInputError):
    """A request field is missing, of the wrong type or out of range; ``param`` names it."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


def check_unicode(value, param: str) -> None:
    """JSON's ``\\ud800`` escapes decode to lone surrogates, which no tokenizer (and no UTF-8
    encoder) takes: refused here as the field's error rather than failing deep inside a model."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            bad = value[exc.start]
            raise InvalidFieldError(
                param, f"'{param}' is not valid Unicode: it holds a lone surrogate \\u{ord(bad):04x} at character {exc.start}"
            ) from None
    elif isinstance(value, (list, tuple)):
        for item in value:
            check_unicode(item, param)


def error_document(exc: BaseException) -> tuple[int, dict]:
    """The HTTP status and OpenAI-shaped body of ``exc``."""
    code, message = classify(exc)
    # Field errors raised below the api layer (generation limits) name their param too.
    param = exc.param if isinstance(exc, InvalidFieldError) else getattr(exc, "param", None)
    body = {"message": message, "type": OPENAI_TYPE[code], "param": param,
            "code": getattr(exc, "openai_code", None) or OPENAI_CODE.get(code)}
    return HTTP_STATUS[code], {"error": body}


def error_response(exc: BaseException) -> web.Response:
    status, doc = error_document(exc)
    return web.Response(body=json.dumps(doc).encode(), status=status, content_type="application/json")


def sse_error_event(exc: BaseException) -> bytes:
    """An error met after a stream has begun: sent as one ``data:`` event, as OpenAI does."""
    _, doc = error_document(exc)
    return b"data: " + json.dumps(doc).encode() + b"\n\n"
