"""Per-request limits the wire layers enforce before a request reaches the service.

The body size is bounded by the transports (aiohttp ``client_max_size``, gRPC
``max_receive_message_length``); decoding never allocates more than the body
holds. These checks bound what a request may ask of the model: elements per
tensor and rows per request, plus the number of requests in progress at once.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.core.errors import InvalidInputError, TooManyRequestsError
from gateway.core.tensors import element_count
from gateway.core.types import InferRequest


@dataclass(frozen=True, slots=True)
class RequestLimits:
    max_tensor_elements: int = 1 << 28
    max_request_rows: int = 65536
    # Requests in progress at once per protocol; 0 = no limit.
    max_concurrent_requests: int = 0

    @classmethod
    def from_settings(cls, settings) -> RequestLimits:
        return cls(settings.max_tensor_elements, settings.max_request_rows, settings.max_concurrent_requests)


@dataclass(frozen=True, slots=True)
class ConnectionTimeouts:
    """How long a connection may take to say something, and to stay silent, on either port."""

    header_s: float = 10.0  # first request head (HTTP/2: preface and first HEADERS), and any one header block
    idle_s: float = 120.0  # no request in progress
    tls_handshake_s: float = 10.0

    @classmethod
    def from_settings(cls, settings) -> ConnectionTimeouts:
        return cls(settings.header_timeout_s, settings.idle_timeout_s, settings.tls_handshake_timeout_s)


def check_request(req: InferRequest, limits: RequestLimits) -> None:
    """Raises PayloadTooLargeError (elements) or InvalidInputError (rows)."""
    for name, array in req.inputs.items():
        element_count(array.shape, f"input '{name}'", limits.max_tensor_elements)
        if array.ndim and array.shape[0] > limits.max_request_rows:
            raise InvalidInputError(
                f"input '{name}' has {array.shape[0]} rows, more than max_request_rows {limits.max_request_rows}"
            )


class ConcurrencyGate:
    """Counts requests in progress and refuses one over the limit at once (never queues it)."""

    __slots__ = ("limit", "active", "refused")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0
        self.refused = 0

    def enter(self) -> None:
        if self.limit and self.active >= self.limit:
            self.refused += 1
            raise TooManyRequestsError(
                f"{self.active} requests are in progress, the limit is max_concurrent_requests {self.limit}; retry later"
            )
        self.active += 1

    def leave(self) -> None:
        self.active -= 1
