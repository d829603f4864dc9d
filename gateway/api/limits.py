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


def concurrency_shares(limit: int, workers: int) -> tuple[int, ...]:
    """Each worker's share of a host-wide ``max_concurrent_requests``: ``limit // workers``, the
    remainder one each to the first workers, so the shares sum to the limit; at least 1 each (a
    limit below the worker count admits one per worker); 0 (no limit) stays 0."""
    if workers < 1:
        raise ValueError(f"workers: expected >= 1, got {workers}")
    if limit <= 0:
        return (0,) * workers
    base, extra = divmod(limit, workers)
    return tuple(max(1, base + (1 if i < extra else 0)) for i in range(workers))


@dataclass(frozen=True, slots=True)
class RequestLimits:
    max_tensor_elements: int = 1 << 28
    max_request_rows: int = 65536
    # Requests in progress at once per protocol in this process; 0 = no limit. Under --workers N
    # this is the worker's share of the configured (host) limit.
    max_concurrent_requests: int = 0
    # The configured limit and the worker count, for messages; workers 1: a process on its own.
    configured_concurrent_requests: int = 0
    workers: int = 1

    @classmethod
    def from_settings(cls, settings, worker_index: int = 0, workers: int = 1) -> RequestLimits:
        """``worker_index`` of ``workers``: this process admits its share of max_concurrent_requests."""
        configured = settings.max_concurrent_requests
        share = concurrency_shares(configured, workers)[worker_index]
        return cls(settings.max_tensor_elements, settings.max_request_rows, share, configured, workers)

    def concurrency_words(self) -> str:
        """The limit as a refusal names it: the setting, and this worker's share of it under --workers."""
        if self.workers <= 1:
            return f"max_concurrent_requests {self.max_concurrent_requests}"
        return (f"this worker's share {self.max_concurrent_requests} of max_concurrent_requests "
                f"{self.configured_concurrent_requests} ({self.workers} workers)")


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

    __slots__ = ("limit", "words", "active", "refused")

    def __init__(self, limit: int, words: str = "") -> None:
        self.limit = limit
        self.words = words or f"max_concurrent_requests {limit}"
        self.active = 0
        self.refused = 0

    def enter(self) -> None:
        if self.limit and self.active >= self.limit:
            self.refused += 1
            raise TooManyRequestsError(
                f"{self.active} requests are in progress, the limit is {self.words}; retry later"
            )
        self.active += 1

    def leave(self) -> None:
        self.active -= 1
