"""Typed errors of the gateway.

Each failure has its own class carrying an :class:`ErrorCode`. The wire layers
map codes to gRPC status and HTTP status in exactly one table each
(``gateway/api/errors.py``); nothing else decides a status.
"""

from __future__ import annotations

import enum


class ErrorCode(enum.Enum):
    INVALID_ARGUMENT = "invalid_argument"
    NOT_FOUND = "not_found"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    RESOURCE_EXHAUSTED = "resource_exhausted"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    UNAVAILABLE = "unavailable"
    CANCELLED = "cancelled"
    UNIMPLEMENTED = "unimplemented"
    INTERNAL = "internal"
    UNAUTHENTICATED = "unauthenticated"
    PERMISSION_DENIED = "permission_denied"
    ALREADY_EXISTS = "already_exists"


class GatewayError(Exception):
    """Base of every expected failure; the message is shown to the client."""

    code: ErrorCode = ErrorCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInputError(GatewayError):
    """A request is malformed: wrong name, datatype, shape, length or value.

    ``param`` names the request field at fault where there is one (OpenAI's error envelope
    carries it so clients can point at the field); None when the whole request is wrong.
    """

    code = ErrorCode.INVALID_ARGUMENT

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class ModelNotFoundError(GatewayError):
    code = ErrorCode.NOT_FOUND


class SharedMemoryNotFoundError(GatewayError):
    """A request or status call names a shared memory region that is not registered (Triton: NOT_FOUND)."""

    code = ErrorCode.NOT_FOUND


class AlreadyExistsError(GatewayError):
    """A shared memory region is registered under a name already taken."""

    code = ErrorCode.ALREADY_EXISTS


class PayloadTooLargeError(GatewayError):
    code = ErrorCode.PAYLOAD_TOO_LARGE


class QueueFullError(GatewayError):
    """The model's queue is at ``max_queue_size``; the client may retry later."""

    code = ErrorCode.RESOURCE_EXHAUSTED


class DeadlineExceededError(GatewayError):
    code = ErrorCode.DEADLINE_EXCEEDED


class ExecuteTimeoutError(GatewayError):
    """A batch ran longer than the model's ``execute_timeout_s``; its instance was told to abort."""

    code = ErrorCode.DEADLINE_EXCEEDED


class TooManyRequestsError(GatewayError):
    """More requests in progress than ``max_concurrent_requests``; the client may retry later."""

    code = ErrorCode.RESOURCE_EXHAUSTED


class ModelNotReadyError(GatewayError):
    code = ErrorCode.UNAVAILABLE


class VersionRetiredError(ModelNotReadyError):
    """The version a request resolved to was replaced (hot reload) before the request could queue."""


class ShuttingDownError(GatewayError):
    code = ErrorCode.UNAVAILABLE


class FleetStateUnavailableError(GatewayError):
    """An operator's routing change is in force on this replica but did not reach the fleet's shared state."""

    code = ErrorCode.UNAVAILABLE


class RequestCancelledError(GatewayError):
    """The client gave up on a request (HTTP 499, gRPC CANCELLED). Named apart from
    ``asyncio.CancelledError`` so an ``except`` never catches one meaning the other."""

    code = ErrorCode.CANCELLED


class UnsupportedError(GatewayError):
    code = ErrorCode.UNIMPLEMENTED


class ExecutorError(GatewayError):
    """The runtime raised while executing a batch; the daemon keeps serving."""

    code = ErrorCode.INTERNAL


class UnauthenticatedError(GatewayError):
    """A request without the bearer token (admin token or API key) its route needs."""

    code = ErrorCode.UNAUTHENTICATED


class InvalidApiKeyError(UnauthenticatedError):
    """An inference request whose API key matches none configured (401, as OpenAI and vLLM answer)."""

    openai_code = "invalid_api_key"


class PermissionDeniedError(GatewayError):
    """An admin request whose bearer token is wrong."""

    code = ErrorCode.PERMISSION_DENIED


class AdminDisabledError(GatewayError):
    """Admin endpoints are off (no admin_token set): answered as if they did not exist."""

    code = ErrorCode.NOT_FOUND


class ConfigError(Exception):
    """A configuration file is invalid. Carries the file, the field and why."""

    def __init__(self, file: str, field: str, reason: str) -> None:
        super().__init__(f"{file}: {field}: {reason}")
        self.file = file
        self.field = field
        self.reason = reason
