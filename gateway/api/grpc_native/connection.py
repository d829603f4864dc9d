"""One HTTP/2 connection carrying gRPC calls: framing, flow control, and dispatch to the handlers.

Every request byte is handled on the event loop in this protocol object: no thread hop, no
per-call C-core completion queue. A unary call whose answer fits the flow-control windows is
answered with one write (HEADERS, DATA and the trailers together).
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from typing import TYPE_CHECKING

import grpc
import hpack

from gateway.api.grpc_native import frames as f
from gateway.api.grpc_native.context import AbortError, ServicerContext, status_number
from gateway.api.grpc_native.headers import (
    OK_TRAILERS, RESPONSE_HEAD, HeadDecoder, RequestHead, metadata_fields, status_fields, table_size_update,
)

if TYPE_CHECKING:
    from gateway.api.grpc_native.server import NativeGrpcServer

_log = logging.getLogger("gateway.grpc")

# Status code numbers (grpc.StatusCode values) used by the transport itself.
OK, CANCELLED, UNKNOWN, INVALID_ARGUMENT, DEADLINE_EXCEEDED = 0, 1, 2, 3, 4
RESOURCE_EXHAUSTED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE = 8, 12, 13, 14

_HEAD_FRAME = f.FRAME_HEAD
_STREAM_WINDOW = 4 << 20  # what a client may send on one stream before we acknowledge
_CONNECTION_WINDOW = 64 << 20
_MAX_FRAME = 1 << 20  # frames we accept; larger frames mean fewer of them for big tensors
_MAX_HEADER_BLOCK = 1 << 20  # compressed header bytes buffered across CONTINUATION frames
_SEND_HIGH_WATER = 1 << 20  # a streaming writer waits while this much is queued on its stream
_MAX_STATUS_MESSAGE = 4096  # grpc clients refuse trailers above ~8 KiB of metadata
_END = object()


class Call:
    """One stream: its request head, messages in, and answer state."""

    __slots__ = (
        "connection", "stream_id", "head", "handler", "deadline", "timer", "task", "ctx", "recv", "message",
        "messages", "remote_closed", "send_window", "recv_window", "recv_unacked", "pending", "trailers", "head_sent",
        "finished", "cancelled", "counted", "drained",
    )

    def __init__(self, connection: Connection, stream_id: int, head: RequestHead, send_window: int) -> None:
        self.connection = connection
        self.stream_id = stream_id
        self.head = head
        self.handler = None
        self.deadline: float | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.task: asyncio.Task | None = None
        self.ctx: ServicerContext | None = None
        self.recv: bytearray | None = None  # a message split across DATA frames
        self.message = None  # the request of a unary call
        self.messages: asyncio.Queue | None = None  # the requests of a streaming call
        self.remote_closed = False
        self.send_window = send_window
        self.recv_window = _STREAM_WINDOW
        self.recv_unacked = 0
        self.pending = bytearray()  # DATA waiting for flow-control window
        self.trailers: bytes | None = None  # sent once pending is empty
        self.head_sent = False
        self.finished = False
        self.cancelled = False
        self.counted = False
        self.drained: asyncio.Future | None = None

    # -- for ServicerContext --
    def send_head(self, metadata=()) -> None:
        self.connection.send_head(self, metadata)

    async def write(self, message) -> None:
        if self.finished:
            raise asyncio.InvalidStateError("the call has ended")
        serializer = self.handler.response_serializer
        await self.connection.send_message(self, serializer(message) if serializer else message)

    async def read(self):
        """The next request of a streaming call, or grpc.aio.EOF once the client half-closed."""
        if self.messages is None:
            raise asyncio.InvalidStateError("read() is for calls that stream requests")
        item = await self.messages.get()
        if item is _END:
            self.messages.put_nowait(_END)  # a second reader sees the end too
            return grpc.aio.EOF
        self.connection.consumed(self, item[1])
        return item[0]

    def release(self) -> None:
        if self.counted:
            self.counted = False
            self.connection.server.call_ended()


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


class Connection(asyncio.Protocol):
    def __init__(self, server: NativeGrpcServer) -> None:
        self.server = server
        self.loop = server.loop
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.buf = bytearray()
        self.preface_seen = False
        self.calls: dict[int, Call] = {}
        self.last_stream_id = 0
        self.heads = HeadDecoder(_MAX_HEADER_BLOCK)
        self.send_window = f.DEFAULT_WINDOW
        self.peer_initial_window = f.DEFAULT_WINDOW
        self.peer_max_frame = f.DEFAULT_MAX_FRAME
        self.peer_table_size = f.DEFAULT_TABLE_SIZE  # the HPACK table our header blocks may use
        self.table_update = b""  # a table size update owed at the start of our next header block
        self.recv_unacked = 0
        self.header_stream = 0  # a header block continues in CONTINUATION frames
        self.header_block = bytearray()
        self.header_flags = 0
        self.blocked: set[Call] = set()  # calls with DATA waiting for window
        self.going_away = False
        self.closed = False
        self._out: list[bytes] = []  # frames written at the end of this loop pass, in one syscall

    # -- asyncio.Protocol --
    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            host = peer[0]
            self.peer = f"ipv6:[{host}]:{peer[1]}" if ":" in host else f"ipv4:{host}:{peer[1]}"
        self.server.connections.add(self)
        opts = self.server.options
        values = {
            f.SETTINGS_MAX_CONCURRENT_STREAMS: opts.max_concurrent_streams,
            f.SETTINGS_INITIAL_WINDOW_SIZE: _STREAM_WINDOW,
            f.SETTINGS_MAX_FRAME_SIZE: _MAX_FRAME,
            f.SETTINGS_MAX_HEADER_LIST_SIZE: opts.max_header_bytes,
        }
        self._send(f.settings(values) + f.window_update(0, _CONNECTION_WINDOW - f.DEFAULT_WINDOW))

    def connection_lost(self, exc) -> None:
        self.closed = True
        self.server.connections.discard(self)
        calls = list(self.calls.values())
        self.calls.clear()
        self.blocked.clear()
        for call in calls:
            self._cancel(call)

    def data_received(self, data: bytes) -> None:
        if self.buf:
            self.buf += data
            if not self._holds_a_frame(self.buf):
                return
            data = bytes(self.buf)
            self.buf = bytearray()
        try:
            used = self._frames(data)
        except hpack.HPACKError as exc:
            self._fatal(f.COMPRESSION_ERROR, f"header block: {exc}")
            return
        except Exception:  # noqa: BLE001 - a bad connection is closed, the daemon serves on
            _log.exception("gRPC connection from %s closed on an unexpected error", self.peer)
            self._fatal(f.INTERNAL_ERROR, "internal error")
            return
        if used < len(data) and not self.closed:
            self.buf = bytearray(data[used:])

    def _holds_a_frame(self, buf: bytearray) -> bool:
        if not self.preface_seen:  # a wrong start is refused without waiting for the preface's length
            return len(buf) >= len(f.PREFACE) or buf != f.PREFACE[:len(buf)]
        if len(buf) < 9:
            return False
        hi, lo, _, _, _ = _HEAD_FRAME.unpack_from(buf)
        return len(buf) >= 9 + (hi << 16 | lo) or (hi << 16 | lo) > _MAX_FRAME

    def _frames(self, data: bytes) -> int:
        pos = 0
        if not self.preface_seen:
            if data[:len(f.PREFACE)] != f.PREFACE[:len(data)]:
                self._fatal(f.PROTOCOL_ERROR, "not an HTTP/2 connection preface (gRPC needs HTTP/2)")
                return len(data)
            if len(data) < len(f.PREFACE):
                return 0
            self.preface_seen = True
            pos = len(f.PREFACE)
        n = len(data)
        while n - pos >= 9 and not self.closed:
            hi, lo, ftype, flags, sid = _HEAD_FRAME.unpack_from(data, pos)
            length = hi << 16 | lo
            if length > _MAX_FRAME:
                self._fatal(f.FRAME_SIZE_ERROR, f"frame of {length} bytes; at most {_MAX_FRAME}")
                return n
            end = pos + 9 + length
            if end > n:
                break
            payload = data[pos + 9:end]
            pos = end
            sid &= f.MAX_WINDOW
            if self.header_stream and ftype != f.CONTINUATION:
                self._fatal(f.PROTOCOL_ERROR, "a header block was interrupted")
                return n
            if ftype == f.DATA:
                self._on_data(sid, flags, payload)
            elif ftype == f.HEADERS:
                self._on_headers(sid, flags, payload)
            elif ftype == f.WINDOW_UPDATE:
                self._on_window_update(sid, payload)
            elif ftype == f.SETTINGS:
                self._on_settings(flags, payload)
            elif ftype == f.PING:
                if not flags & f.ACK:
                    self._send(f.frame(f.PING, f.ACK, 0, payload[:8]))
            elif ftype == f.RST_STREAM:
                call = self.calls.pop(sid, None)
                if call is not None:
                    self._cancel(call)
            elif ftype == f.CONTINUATION:
                self._on_continuation(sid, flags, payload)
            elif ftype == f.GOAWAY:
                self.going_away = True
                self._close_if_idle()
            elif ftype == f.PUSH_PROMISE:
                self._fatal(f.PROTOCOL_ERROR, "a client cannot push")
            # PRIORITY and unknown frame types are ignored, as RFC 9113 asks.
        return pos

    # -- frames in --
    def _on_settings(self, flags: int, payload: bytes) -> None:
        if flags & f.ACK:
            return
        for key, value in f.parse_settings(payload):
            if key == f.SETTINGS_INITIAL_WINDOW_SIZE:
                if value > f.MAX_WINDOW:
                    self._fatal(f.FLOW_CONTROL_ERROR, "initial window above 2^31-1")
                    return
                delta = value - self.peer_initial_window
                self.peer_initial_window = value
                for call in self.calls.values():
                    call.send_window += delta
            elif key == f.SETTINGS_HEADER_TABLE_SIZE and value < self.peer_table_size:
                # RFC 7541 4.2: the encoder must signal its smaller table in its next block (nghttp2 checks).
                self.peer_table_size = value
                self.table_update = table_size_update(value)
            elif key == f.SETTINGS_MAX_FRAME_SIZE and f.DEFAULT_MAX_FRAME <= value < (1 << 24):
                self.peer_max_frame = value
        self._send(f.frame(f.SETTINGS, f.ACK, 0))
        self._flush_blocked()

    def _on_window_update(self, sid: int, payload: bytes) -> None:
        increment = f.window_increment(payload)
        if sid == 0:
            self.send_window += increment
            self._flush_blocked()
            return
        call = self.calls.get(sid)
        if call is not None:
            call.send_window += increment
            if call.pending or call.trailers is not None:
                self._flush(call)

    def _on_headers(self, sid: int, flags: int, payload: bytes) -> None:
        if sid == 0 or not sid & 1:
            self._fatal(f.PROTOCOL_ERROR, "a client stream id must be odd and not 0")
            return
        start, end = 0, len(payload)
        if flags & f.PADDED:
            start, end = 1, end - payload[0]
        if flags & f.PRIORITY_FLAG:
            start += 5
        block = payload[start:end]
        if not flags & f.END_HEADERS:
            self.header_stream, self.header_flags = sid, flags
            self.header_block = bytearray(block)
            return
        self._on_request_head(sid, block, flags & f.END_STREAM)

    def _on_continuation(self, sid: int, flags: int, payload: bytes) -> None:
        if sid != self.header_stream:
            self._fatal(f.PROTOCOL_ERROR, "CONTINUATION on another stream")
            return
        self.header_block += payload
        if len(self.header_block) > _MAX_HEADER_BLOCK:
            self._fatal(f.PROTOCOL_ERROR, f"header block above {_MAX_HEADER_BLOCK} bytes")
            return
        if flags & f.END_HEADERS:
            block, self.header_block, self.header_stream = bytes(self.header_block), bytearray(), 0
            self._on_request_head(sid, block, self.header_flags & f.END_STREAM)

    def _on_request_head(self, sid: int, block: bytes, end_stream: int) -> None:
        head = self.heads.decode(block)  # always: the HPACK tables must stay in step with the client
        call = self.calls.get(sid)
        if call is not None:  # trailers from the client end its stream
            self._remote_end(call)
            return
        if sid <= self.last_stream_id:
            return  # a stream we already closed
        self.last_stream_id = sid
        if self.going_away or len(self.calls) >= self.server.options.max_concurrent_streams:
            self._send(f.rst_stream(sid, f.REFUSED_STREAM))
            return
        call = Call(self, sid, head, self.peer_initial_window)
        call.remote_closed = bool(end_stream)
        self.calls[sid] = call
        server = self.server
        if head.error is not None:
            self.finish(call, head.error.code, head.error.message)
            return
        if head.size > server.options.max_header_bytes:
            self.finish(call, RESOURCE_EXHAUSTED,
                        f"request metadata size exceeds max_header_bytes {server.options.max_header_bytes} ({head.size} bytes)")
            return
        handler = server.handler(head.path)
        if handler is None:
            self.finish(call, UNIMPLEMENTED, f"Method not found: {head.path.decode('latin-1')}")
            return
        if not server.call_started():
            self.finish(call, RESOURCE_EXHAUSTED,
                        f"more than max_concurrent_requests {server.options.max_concurrent_calls} calls in progress")
            return
        call.counted = True
        call.handler = handler
        if head.timeout_s is not None:
            call.deadline = time.monotonic() + head.timeout_s
            call.timer = self.loop.call_later(head.timeout_s, self._deadline_passed, call)
        if handler.request_streaming:
            call.messages = asyncio.Queue()
            call.task = self.loop.create_task(self._serve(call))
            if end_stream:
                call.messages.put_nowait(_END)
        elif end_stream:
            self.finish(call, INTERNAL, "the call ended without a request message")

    def _on_data(self, sid: int, flags: int, payload: bytes) -> None:
        length = len(payload)
        self.recv_unacked += length
        if self.recv_unacked >= _CONNECTION_WINDOW // 2:
            self._send(f.window_update(0, self.recv_unacked))
            self.recv_unacked = 0
        call = self.calls.get(sid)
        if call is None or call.remote_closed:
            return  # answered already, or reset
        call.recv_window -= length
        if call.recv_window < 0:  # past the window we gave: what it sent would pile up here
            self.calls.pop(sid, None)
            self._send(f.rst_stream(sid, f.FLOW_CONTROL_ERROR))
            self._cancel(call)
            return
        if flags & f.PADDED:
            payload = payload[1:length - payload[0]]
        end_stream = flags & f.END_STREAM
        if call.handler is not None:
            if call.recv is None and len(payload) >= 5 and int.from_bytes(payload[1:5], "big") == len(payload) - 5:
                self._on_message(call, payload[0], payload[5:])  # the common case: one whole message
            else:
                self._gather(call, payload)
        if end_stream:
            self._remote_end(call)
        elif call.handler is not None:
            # A streaming call's messages give their window back as the handler takes them
            # (so a client sending faster than the model serves is held back by HTTP/2 itself);
            # a unary message, and padding, at once.
            self.consumed(call, length if call.messages is None else length - len(payload))

    def consumed(self, call: Call, size: int) -> None:
        call.recv_unacked += size
        if call.recv_unacked >= _STREAM_WINDOW // 4 and not call.remote_closed and not call.finished:
            self._send(f.window_update(call.stream_id, call.recv_unacked))
            call.recv_window += call.recv_unacked
            call.recv_unacked = 0

    def _gather(self, call: Call, payload: bytes) -> None:
        buf = call.recv
        if buf is None:
            buf = call.recv = bytearray()
        buf += payload
        limit = self.server.options.max_message_bytes
        while len(buf) >= 5 and call.handler is not None and not call.finished:
            size = int.from_bytes(buf[1:5], "big")
            if size > limit:
                self.finish(call, RESOURCE_EXHAUSTED, f"Received message larger than max ({size} vs. {limit})")
                return
            if len(buf) < 5 + size:
                return
            flag, message = buf[0], bytes(buf[5:5 + size])
            del buf[:5 + size]
            self._on_message(call, flag, message)
        if not buf:
            call.recv = None

    def _on_message(self, call: Call, flag: int, message: bytes) -> None:
        if call.finished:
            return
        wire_size = len(message) + 5
        limit = self.server.options.max_message_bytes
        if len(message) > limit:
            self.finish(call, RESOURCE_EXHAUSTED, f"Received message larger than max ({len(message)} vs. {limit})")
            return
        if flag:
            try:
                message = _decompress(call.head.encoding, message, limit)
            except _Undecodable as exc:
                self.finish(call, exc.code, str(exc))
                return
        deserializer = call.handler.request_deserializer
        if deserializer is not None:
            try:
                message = deserializer(message)
            except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError and friends
                self.finish(call, INVALID_ARGUMENT, f"cannot parse the request message: {exc}")
                return
        if call.messages is not None:
            call.messages.put_nowait((message, wire_size))
        elif call.message is None:
            call.message = message
        else:
            self.finish(call, UNIMPLEMENTED, "a unary call carries one request message, this one carried more")

    def _remote_end(self, call: Call) -> None:
        call.remote_closed = True
        if call.handler is None or call.finished:
            return
        if call.recv:
            self.finish(call, INTERNAL, "the stream ended inside a message")
        elif call.messages is not None:
            call.messages.put_nowait(_END)
        elif call.message is None:
            self.finish(call, INTERNAL, "the call ended without a request message")
        elif call.task is None:
            call.task = self.loop.create_task(self._serve(call))

    # -- serving a call --
    async def _serve(self, call: Call) -> None:
        handler = call.handler
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
                self._finish_from_context(call, ctx)
            else:
                method = handler.stream_unary if handler.request_streaming else handler.unary_unary
                response = await method(request, ctx)
                if status_number(ctx.code()):
                    self._finish_from_context(call, ctx)
                elif response is None:
                    self.finish(call, INTERNAL, "the handler returned no response")
                else:
                    serializer = handler.response_serializer
                    self.answer(call, serializer(response) if serializer else response, ctx.trailing_metadata())
        except AbortError:
            self._finish_from_context(call, ctx)
        except asyncio.CancelledError:
            pass  # the client left, the deadline passed, or the server stopped: answered (or not) already
        except Exception as exc:  # noqa: BLE001 - a failing handler answers UNKNOWN, as grpcio does
            _log.exception("gRPC handler for %s failed", call.head.path.decode("latin-1"))
            self.finish(call, UNKNOWN, f"Unexpected {type(exc).__name__}: {exc}")
        finally:
            call.release()
            if ctx._done_callbacks:
                ctx.run_done_callbacks()

    def _finish_from_context(self, call: Call, ctx: ServicerContext) -> None:
        self.finish(call, status_number(ctx.code()), ctx.details(), ctx.trailing_metadata())

    def _deadline_passed(self, call: Call) -> None:
        call.timer = None
        if not call.finished:
            self.finish(call, DEADLINE_EXCEEDED, "Deadline Exceeded")
            if call.task is not None:
                call.task.cancel()

    def _cancel(self, call: Call) -> None:
        """The client reset the stream or the connection went away."""
        call.cancelled = True
        call.finished = True
        self.blocked.discard(call)
        if call.timer is not None:
            call.timer.cancel()
        if call.drained is not None and not call.drained.done():
            call.drained.set_result(None)
        if call.task is not None:
            call.task.cancel()
        else:
            call.release()

    # -- frames out --
    def send_head(self, call: Call, metadata=()) -> None:
        if call.head_sent or call.finished:
            return
        call.head_sent = True
        block = RESPONSE_HEAD + metadata_fields(metadata) if metadata else RESPONSE_HEAD
        self._send(self._header_frames(call.stream_id, block, False))

    def answer(self, call: Call, body: bytes, trailing_metadata=()) -> None:
        """The whole answer of a unary call: in one write when the windows allow."""
        if call.finished:
            return
        size = len(body) + 5
        if (not call.head_sent and not trailing_metadata and size <= call.send_window
                and size <= self.send_window and size <= self.peer_max_frame and not self.table_update):
            call.send_window -= size
            self.send_window -= size
            sid = call.stream_id
            self._send(b"".join((
                f.head(f.HEADERS, f.END_HEADERS, sid, len(RESPONSE_HEAD)), RESPONSE_HEAD,
                f.head(f.DATA, 0, sid, size), _message_prefix(body), body,
                f.head(f.HEADERS, f.END_HEADERS | f.END_STREAM, sid, len(OK_TRAILERS)), OK_TRAILERS,
            )))
            self._closed(call)
            return
        self.send_head(call)
        call.pending += _message_prefix(body) + body
        call.trailers = status_fields(OK, "", trailing_metadata) if trailing_metadata else OK_TRAILERS
        self._flush(call)

    async def send_message(self, call: Call, body: bytes) -> None:
        self.send_head(call)
        call.pending += _message_prefix(body) + body
        self._flush(call)
        if len(call.pending) > _SEND_HIGH_WATER and not call.finished:
            call.drained = self.loop.create_future()
            await call.drained

    def finish(self, call: Call, code: int, message: str = "", trailing_metadata=()) -> None:
        """Ends the call with a status: trailers after any queued data, or a trailers-only answer."""
        if call.finished or call.trailers is not None:
            return
        if len(message) > _MAX_STATUS_MESSAGE:
            message = message[:_MAX_STATUS_MESSAGE] + "..."
        fields = status_fields(code, message, trailing_metadata)
        if not call.head_sent:
            call.head_sent = True
            self._send(self._header_frames(call.stream_id, RESPONSE_HEAD + fields, True))
            self._closed(call)
            return
        call.trailers = fields
        self._flush(call)

    def _flush(self, call: Call) -> None:
        pending = call.pending
        sid = call.stream_id
        while pending:
            size = min(len(pending), call.send_window, self.send_window, self.peer_max_frame)
            if size <= 0:
                self.blocked.add(call)
                return
            self._send(f.head(f.DATA, 0, sid, size) + pending[:size])
            del pending[:size]
            call.send_window -= size
            self.send_window -= size
        self.blocked.discard(call)
        if call.drained is not None and not call.drained.done():
            call.drained.set_result(None)
        if call.trailers is not None:
            self._send(self._header_frames(sid, call.trailers, True))
            self._closed(call)

    def _header_frames(self, sid: int, block: bytes, end_stream: bool) -> bytes:
        if self.table_update:
            block, self.table_update = self.table_update + block, b""
        return f.header_frames(sid, block, end_stream, self.peer_max_frame)

    def _flush_blocked(self) -> None:
        for call in list(self.blocked):
            if self.send_window <= 0:
                return
            self._flush(call)

    def _closed(self, call: Call) -> None:
        """We sent the end of the stream; a client still sending is told to stop."""
        call.finished = True
        self.calls.pop(call.stream_id, None)
        self.blocked.discard(call)
        if call.timer is not None:
            call.timer.cancel()
            call.timer = None
        if not call.remote_closed:
            call.remote_closed = True
            self._send(f.rst_stream(call.stream_id, f.NO_ERROR))
        if call.task is None:
            call.release()
        self._close_if_idle()

    def _send(self, data: bytes) -> None:
        # Answers completed by one batch go out in one write per connection, not one each.
        if not self._out:
            self.loop.call_soon(self._write_out)
        self._out.append(data)

    def _write_out(self) -> None:
        if self._out:
            data = b"".join(self._out) if len(self._out) > 1 else self._out[0]
            self._out.clear()
            if not self.transport.is_closing():
                self.transport.write(data)

    # -- connection state --
    def go_away(self) -> None:
        """Graceful stop: calls already started finish; new streams are refused."""
        if self.closed or self.going_away:
            return
        self.going_away = True
        self._send(f.goaway(self.last_stream_id, f.NO_ERROR))
        self._close_if_idle()

    def _close_if_idle(self) -> None:
        if self.going_away and not self.calls:
            self._close()

    def abort(self) -> None:
        self._close()
        self.connection_lost(None)

    def _fatal(self, error: int, reason: str) -> None:
        _log.info("gRPC connection from %s closed: %s", self.peer or "?", reason)
        if not self.closed:
            self._send(f.goaway(self.last_stream_id, error, reason.encode()[:256]))
            self._close()

    def _close(self) -> None:
        """Close the transport once the frames queued so far are written."""
        if not self.closed:
            self.closed = True
            self._write_out()
            self.transport.close()


def _message_prefix(body: bytes) -> bytes:
    """gRPC's length prefix: not compressed, then the length as 4 bytes big-endian."""
    return b"\x00" + len(body).to_bytes(4, "big")


class _Undecodable(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _decompress(encoding: bytes, message: bytes, limit: int) -> bytes:
    if encoding == b"gzip":
        inflater = zlib.decompressobj(31)
    elif encoding == b"deflate":
        inflater = zlib.decompressobj(15)
    else:
        raise _Undecodable(INTERNAL, "a compressed message needs a grpc-encoding header")
    try:
        out = inflater.decompress(message, limit + 1)
    except zlib.error as exc:
        raise _Undecodable(INTERNAL, f"cannot decompress the message ({encoding.decode()}): {exc}") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise _Undecodable(RESOURCE_EXHAUSTED, f"Received message larger than max (more than {limit} bytes once decompressed)")
    return out
