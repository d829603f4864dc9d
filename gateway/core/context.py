"""Per-request context that log records pick up without being passed around.

The api layer sets it for the task serving a request; the log formatter reads it.
"""

from __future__ import annotations

from contextvars import ContextVar

# The client's request id (v2 ``id`` field, or the ``x-request-id`` header); "" when none.
request_id: ContextVar[str] = ContextVar("gateway_request_id", default="")
# Hex trace id of the request's span when it is traced; "" otherwise.
trace_id: ContextVar[str] = ContextVar("gateway_trace_id", default="")
