"""Streaming RPCs served message by message, for the native transport.

A grpcio-style bidirectional handler reads its requests from an iterator and yields its answers:
per message that is a hand-off into the reader, one into the task serving it and one back into the
writer (three task steps and two queues), which made ModelStreamInfer cost as much per request as a
unary call. A `MessageStreamHandler` is given each request as it is parsed (`on_message`) and answers
it with `reply`, from whatever task serves it: one task per request, as a unary call has, and no
HEADERS, stream or trailers per request.

The transport keeps the flow control a stream reader would: a request is handed over only while
fewer than `in_flight` are unanswered and the answers queued for the client stay under a high-water
mark; until then it waits in the call, holding its bytes in the request budgets, and the client's
window is given back only as requests are handed over. The call ends with OK once the client has
half-closed and every request is answered.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Callable, Protocol

from gateway.api.grpc_native.status import Status

if TYPE_CHECKING:
    from gateway.api.grpc_native.call import Call
    from gateway.api.grpc_native.context import ServicerContext

SEND_HIGH_WATER = 1 << 20  # answers queued on a stream beyond which its requests wait (and its writers)


class StreamRefused(Exception):
    """Raised by a handler's `open` to end the call at once with this status (e.g. no credentials)."""

    def __init__(self, code, details: str) -> None:
        super().__init__(details)
        self.code = code  # grpc.StatusCode
        self.details = details


class MessageSession(Protocol):
    def on_message(self, request) -> None:
        """One parsed request; the session calls `reply` once for it, when it is answered."""

    def cancel(self) -> None:
        """The call ended (reset, deadline, connection lost): stop serving what is in progress."""


Reply = Callable[[bytes], None]  # one serialized answer message; frees the request's slot


class MessageStreamHandler:
    """Registered for a path in place of a grpcio handler (see `NativeGrpcServer.add_message_stream`)."""

    request_streaming = True
    response_streaming = True
    response_serializer = None  # sessions reply with serialized messages

    def __init__(self, open_session: Callable[[ServicerContext, Reply], MessageSession],
                 request_deserializer: Callable[[bytes], object], in_flight: int) -> None:
        if in_flight < 1:
            raise ValueError("in_flight must be at least 1")
        self.open = open_session
        self.request_deserializer = request_deserializer
        self.in_flight = in_flight


class MessageFeed:
    """The transport's side of one message-by-message call: requests waiting for room, requests
    handed over and not yet answered, and the end of the call."""

    __slots__ = ("call", "session", "limit", "in_flight", "backlog", "_pump_soon")

    def __init__(self, call: Call, handler: MessageStreamHandler) -> None:
        self.call = call
        self.limit = handler.in_flight
        self.in_flight = 0
        self.backlog: deque[tuple[object, int]] = deque()
        self._pump_soon = False
        assert call.ctx is not None  # open_call gives the call its context first
        self.session = handler.open(call.ctx, self.reply)  # may raise StreamRefused

    def offer(self, request: object, wire_size: int) -> None:
        """A parsed request: handed over now, or kept (its bytes held) until there is room."""
        call = self.call
        if self.backlog or not self._room():
            if call.hold(wire_size):
                self.backlog.append((request, wire_size))
            return
        self._deliver(request, wire_size)

    def reply(self, body: bytes) -> None:
        self.in_flight -= 1
        call = self.call
        if call.finished or call.trailers is not None:
            return
        if call.send_message(body):
            self.pump()

    def pump(self) -> None:
        """Hands over what waits while there is room; ends the call once the client is done and all answered."""
        call = self.call
        if call.finished or call.trailers is not None:
            return
        backlog = self.backlog
        while backlog and self._room():
            request, wire_size = backlog.popleft()
            call.hold(-wire_size)
            self._deliver(request, wire_size)
            if call.finished:
                return
        if call.remote_closed and not backlog and not self.in_flight:
            call.finish(Status.OK)

    def drained(self) -> None:
        """The client took queued answers. Not pumped here: the engine is inside its flush."""
        if self.backlog and not self._pump_soon and not self.call.finished:
            self._pump_soon = True
            self.call.connection.loop.call_soon(self._pump_later)

    def _pump_later(self) -> None:
        self._pump_soon = False
        self.pump()

    def cancel(self) -> None:
        self.backlog.clear()  # their held bytes are released with the call's
        self.session.cancel()

    def _room(self) -> bool:
        return self.in_flight < self.limit and len(self.call.pending) <= SEND_HIGH_WATER

    def _deliver(self, request: object, wire_size: int) -> None:
        call = self.call
        self.in_flight += 1
        call.connection.consumed(call, wire_size)
        try:
            self.session.on_message(request)
        except Exception as exc:  # noqa: BLE001 - a failing handler answers UNKNOWN
            call.handler_failed(exc, "stream handler")
