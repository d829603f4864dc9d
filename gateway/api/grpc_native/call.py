"""gRPC calls over the HTTP/2 engine: request messages (length prefix, decompression, size limits),
dispatch to grpcio-style handlers, deadlines, and the answer with its status.

A unary call whose answer fits the flow-control windows is answered with one write (HEADERS,
DATA and the trailers together).
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from typing import TYPE_CHECKING

import grpc

from gateway.api.grpc_native import frames as f
from gateway.api.grpc_native.context import AbortError, ServicerContext
from gateway.api.grpc_native.engine import Stream
from gateway.api.grpc_native.headers import OK_TRAILERS, RESPONSE_HEAD, RequestHead, metadata_fields, status_fields
from gateway.api.grpc_native.message_stream import SEND_HIGH_WATER, MessageFeed, MessageStreamHandler, StreamRefused
from gateway.api.grpc_native.status import Status

if TYPE_CHECKING:
    from gateway.api.grpc_native.engine import Http2Connection

_log = logging.getLogger(__name__)

_END = object()


class Call(Stream):
    """One gRPC call on one stream: its request head, messages in, and answer state."""

    __slots__ = (
        "head", "handler", "deadline_s", "timer", "task", "ctx", "recv", "message", "messages", "cancelled",
        "counted", "held", "feed",
    )

    def __init__(self, connection: Http2Connection, stream_id: int, head: RequestHead) -> None:
        super().__init__(connection, stream_id)
        self.head = head
        self.handler: grpc.RpcMethodHandler | None = None  # set by dispatch, before any message
        self.deadline_s: float | None = None  # on the time.monotonic() clock
        self.timer: asyncio.TimerHandle | None = None
        self.task: asyncio.Task | None = None
        self.ctx: ServicerContext | None = None
        self.recv: bytearray | None = None  # a message split across DATA frames
        self.message: object = None  # the request of a unary call
        self.messages: asyncio.Queue | None = None  # the requests of a streaming call
        self.cancelled = False
        self.counted = False  # holds one of the server's call slots
        self.held = 0  # request bytes this call keeps (unfinished message, unread messages)
        self.feed: MessageFeed | None = None  # a call served message by message (message_stream.py)

    # -- what the engine tells the call --
    def on_data(self, payload: bytes, end_stream: bool, flow_size: int) -> None:
        if self.handler is None:
            return
        if self.recv is None and len(payload) >= 5 and int.from_bytes(payload[1:5], "big") == len(payload) - 5:
            self._on_message(payload[0], payload[5:])  # the common case: one whole message
        else:
            self._gather(payload)
        if not end_stream and not self.finished:
            # A streaming call's messages give their window back as the handler takes them
            # (so a client sending faster than the model serves is held back by HTTP/2 itself);
            # a unary message, and padding, at once.
            streamed = self.messages is not None or self.feed is not None
            self.connection.consumed(self, flow_size - len(payload) if streamed else flow_size)

    def on_remote_end(self) -> None:
        if self.handler is None or self.finished:
            return
        if self.recv:
            self.finish(Status.INTERNAL, "the stream ended inside a message")
        elif self.messages is not None:
            self.messages.put_nowait(_END)
        elif self.feed is not None:
            self.feed.pump()
        elif self.message is None:
            self.finish(Status.INTERNAL, "the call ended without a request message")
        elif self.task is None and _takes_a_slot(self):
            self.task = self.connection.loop.create_task(_serve(self))

    def on_reset(self) -> None:
        """The client reset the stream, a budget ended it, or the connection went away."""
        self.cancelled = True
        self._ended()
        if self.task is not None:
            self.task.cancel()

    def on_closed(self) -> None:
        self._ended()

    def _ended(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.held:
            self.connection.hold_request_bytes(self, -self.held)
            self.held = 0
        self.recv = None
        if self.feed is not None:
            self.feed.cancel()
        # Released here, not only when the task ends: a task cancelled before its first step
        # never runs its own finally.
        self.release()

    def on_drained(self) -> None:
        super().on_drained()
        if self.feed is not None:
            self.feed.drained()

    def release(self) -> None:
        if self.counted:
            self.counted = False
            self.connection.server.call_ended()

    # -- request messages --
    def hold(self, delta: int) -> bool:
        if delta > 0 and not self.connection.hold_request_bytes(self, delta):
            self.finish(Status.RESOURCE_EXHAUSTED,
                        "the server holds too many unfinished request bytes for this client; retry later")
            return False
        if delta < 0:
            self.connection.hold_request_bytes(self, delta)
        self.held += delta
        return True

    def _gather(self, payload: bytes) -> None:
        buf = self.recv
        if buf is None:
            buf = self.recv = bytearray()
        if not self.hold(len(payload)):
            return
        buf += payload
        limit = self.connection.server.options.max_message_bytes
        while len(buf) >= 5 and not self.finished:
            size = int.from_bytes(buf[1:5], "big")
            if size > limit:
                self.finish(Status.RESOURCE_EXHAUSTED, f"Received message larger than max ({size} vs. {limit})")
                return
            if len(buf) < 5 + size:
                return
            flag, message = buf[0], bytes(buf[5:5 + size])
            del buf[:5 + size]
            self.hold(-(5 + size))
            self._on_message(flag, message)
        if not buf:
            self.recv = None

    def _on_message(self, flag: int, message: bytes) -> None:
        if self.finished:
            return
        wire_size = len(message) + 5
        limit = self.connection.server.options.max_message_bytes
        if len(message) > limit:
            self.finish(Status.RESOURCE_EXHAUSTED, f"Received message larger than max ({len(message)} vs. {limit})")
            return
        if flag:
            try:
                message = _decompress(self.head.encoding, message, limit)
            except _Undecodable as exc:
                self.finish(exc.code, str(exc))
                return
        assert self.handler is not None  # messages reach only dispatched calls
        deserializer = self.handler.request_deserializer
        if deserializer is not None:
            try:
                message = deserializer(message)
            except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError and friends
                self.finish(Status.INVALID_ARGUMENT, f"cannot parse the request message: {exc}")
                return
        if self.feed is not None:
            self.feed.offer(message, wire_size)
        elif self.messages is not None:
            if self.hold(wire_size):  # until the handler reads it
                self.messages.put_nowait((message, wire_size))
        elif self.message is None:
            self.message = message
        else:
            self.finish(Status.UNIMPLEMENTED, "a unary call carries one request message, this one carried more")

    async def read(self):
        """The next request of a streaming call, or grpc.aio.EOF once the client half-closed."""
        if self.messages is None:
            raise asyncio.InvalidStateError("read() is for calls that stream requests")
        item = await self.messages.get()
        if item is _END:
            self.messages.put_nowait(_END)  # a second reader sees the end too
            return grpc.aio.EOF
        message, wire_size = item
        if not self.finished:
            self.hold(-wire_size)
            self.connection.consumed(self, wire_size)
        return message

    # -- the answer --
    def send_head(self, metadata=()) -> None:
        self.connection.send_head(self, RESPONSE_HEAD + metadata_fields(metadata) if metadata else RESPONSE_HEAD)

    async def write(self, message) -> None:
        if self.finished:
            raise asyncio.InvalidStateError("the call has ended")
        assert self.handler is not None  # only a dispatched call's handler writes
        serializer = self.handler.response_serializer
        body = serializer(message) if serializer else message
        if not self._send(_message_prefix(body) + body):
            raise AbortError("the client does not read its answers")
        if len(self.pending) > SEND_HIGH_WATER and not self.finished:
            self.drained = self.connection.loop.create_future()
            await self.drained

    def answer(self, body: bytes, trailing_metadata=()) -> None:
        """The whole answer of a unary call: in one write when the windows allow."""
        if self.finished:
            return
        message = _message_prefix(body) + body
        if not trailing_metadata and self.connection.send_answer(self, RESPONSE_HEAD, message, OK_TRAILERS):
            return
        if self._send(message):
            self.finish(Status.OK, "", trailing_metadata)

    def handler_failed(self, exc: Exception, what: str = "handler") -> None:
        """A handler raised: the call answers UNKNOWN, as grpcio does, and the daemon logs it."""
        _log.error("gRPC %s for %s failed", what, self.head.path[:256].decode("latin-1"), exc_info=exc)
        self.finish(Status.UNKNOWN, f"Unexpected {type(exc).__name__}: {exc}")

    def send_message(self, body: bytes) -> bool:
        """One serialized answer of a streaming call, queued without waiting; False if the call ended instead."""
        return self._send(_message_prefix(body) + body)

    def _send(self, message: bytes) -> bool:
        """Queues one message; over the bytes held for slow readers the call ends instead."""
        head = None if self.head_sent else RESPONSE_HEAD
        if self.connection.send_data(self, message, head):
            return True
        if self.ctx is not None:
            self.ctx.set_code(grpc.StatusCode.RESOURCE_EXHAUSTED)
        if self.head_sent:
            self.connection.reset_stream(self, f.CANCEL)
        else:
            self.finish(Status.RESOURCE_EXHAUSTED, "the client does not read its answers: too many bytes held for it")
        return False

    def finish(self, code: int, message: str = "", trailing_metadata=()) -> None:
        """Ends the call with a status: trailers after any queued data, or a trailers-only answer."""
        if self.finished or self.trailers is not None:
            return
        fields = status_fields(code, message, trailing_metadata)
        self.connection.send_trailers(self, fields if self.head_sent else RESPONSE_HEAD + fields)

    def deadline_passed(self) -> None:
        self.timer = None
        if not self.finished:
            self.finish(Status.DEADLINE_EXCEEDED, "Deadline Exceeded")
            if self.task is not None:
                self.task.cancel()
            if self.feed is not None:
                self.feed.cancel()


class _RequestStream:
    """The request iterator handed to a handler whose requests stream."""

    __slots__ = ("_call",)

    def __init__(self, call: Call) -> None:
        self._call = call

    def __aiter__(self):
        return self

    async def __anext__(self):
        message = await self._call.read()
        if message is grpc.aio.EOF:
            raise StopAsyncIteration
        return message


def open_call(connection: Http2Connection, stream_id: int, head: RequestHead, end_stream: bool) -> Call:
    """A new call from its request head: refused at once (a status) or started."""
    call = Call(connection, stream_id, head)
    call.remote_closed = end_stream
    server = connection.server
    opts = server.options
    if head.error is not None:
        call.finish(head.error.code, head.error.message)
        return call
    if head.size > opts.max_header_bytes:
        call.finish(Status.RESOURCE_EXHAUSTED,
                    f"request metadata size exceeds max_header_bytes {opts.max_header_bytes} ({head.size} bytes)")
        return call
    handler = server.handler(head.path)
    if handler is None:
        call.finish(Status.UNIMPLEMENTED, f"Method not found: {head.path[:256].decode('latin-1')}")
        return call
    call.handler = handler
    if head.timeout_s is not None:
        call.deadline_s = time.monotonic() + head.timeout_s
        call.timer = connection.loop.call_later(head.timeout_s, call.deadline_passed)
    if isinstance(handler, MessageStreamHandler):
        _open_feed(call, handler)
    elif handler.request_streaming:
        if not _takes_a_slot(call):
            return call
        call.messages = asyncio.Queue()
        call.task = connection.loop.create_task(_serve(call))
        if end_stream:
            call.messages.put_nowait(_END)
    elif end_stream:
        call.finish(Status.INTERNAL, "the call ended without a request message")
    return call


def _open_feed(call: Call, handler: MessageStreamHandler) -> None:
    if not _takes_a_slot(call):
        return
    call.ctx = ServicerContext(call)
    try:
        call.feed = MessageFeed(call, handler)
    except StreamRefused as exc:
        call.finish(Status.of(exc.code), exc.details)
        return
    except Exception as exc:  # noqa: BLE001 - a failing handler answers UNKNOWN
        call.handler_failed(exc, "stream handler's open")
        return
    if call.remote_closed:
        call.feed.pump()  # no request at all: answered OK at once


def _takes_a_slot(call: Call) -> bool:
    """A slot of max_concurrent_requests: a streaming call holds one from its head, a unary call
    from its whole request (a head alone, never followed by its message, holds none)."""
    server = call.connection.server
    if not server.call_started():
        options = server.options
        words = options.max_concurrent_calls_words or f"max_concurrent_requests {options.max_concurrent_calls}"
        call.finish(Status.RESOURCE_EXHAUSTED, f"more calls in progress than {words}")
        return False
    call.counted = True
    return True


async def _serve(call: Call) -> None:
    handler = call.handler
    assert handler is not None  # dispatch sets it before it starts the task
    ctx = call.ctx = ServicerContext(call)
    try:
        request = _RequestStream(call) if handler.request_streaming else call.message
        if handler.response_streaming:
            method = handler.stream_stream if handler.request_streaming else handler.unary_stream
            result = method(request, ctx)
            if hasattr(result, "__aiter__"):
                async for response in result:
                    await call.write(response)
            else:
                await result
            _finish_from_context(call, ctx)
        else:
            method = handler.stream_unary if handler.request_streaming else handler.unary_unary
            response = await method(request, ctx)
            if Status.of(ctx.code()):
                _finish_from_context(call, ctx)
            elif response is None:
                call.finish(Status.INTERNAL, "the handler returned no response")
            else:
                serializer = handler.response_serializer
                call.answer(serializer(response) if serializer else response, ctx.trailing_metadata())
    except AbortError:
        _finish_from_context(call, ctx)
    except asyncio.CancelledError:
        pass  # the client left, the deadline passed, or the server stopped: answered (or not) already
    except Exception as exc:  # noqa: BLE001 - a failing handler answers UNKNOWN
        call.handler_failed(exc)
    finally:
        call.release()
        if ctx._done_callbacks:
            ctx.run_done_callbacks()


def _finish_from_context(call: Call, ctx: ServicerContext) -> None:
    call.finish(Status.of(ctx.code()), ctx.details(), ctx.trailing_metadata())


def _message_prefix(body: bytes) -> bytes:
    """gRPC's length prefix: not compressed, then the length as 4 bytes big-endian."""
    return b"\x00" + len(body).to_bytes(4, "big")


class _Undecodable(Exception):
    def __init__(self, code: Status, message: str) -> None:
        super().__init__(message)
        self.code = code


def _decompress(encoding: bytes, message: bytes, limit: int) -> bytes:
    if encoding == b"gzip":
        inflater = zlib.decompressobj(31)
    elif encoding == b"deflate":
        inflater = zlib.decompressobj(15)
    else:
        raise _Undecodable(Status.INTERNAL, "a compressed message needs a grpc-encoding header")
    try:
        out = inflater.decompress(message, limit + 1)
    except zlib.error as exc:
        raise _Undecodable(Status.INTERNAL, f"cannot decompress the message ({encoding.decode()}): {exc}") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise _Undecodable(Status.RESOURCE_EXHAUSTED,
                           f"Received message larger than max (more than {limit} bytes once decompressed)")
    return out
