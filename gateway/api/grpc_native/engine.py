"""The HTTP/2 protocol engine (RFC 9113) of the native transport: framing, flow control, timeouts and
the budgets that keep a peer from making the loop do unbounded work or hold unbounded memory.

It knows nothing of gRPC. A request stream is a `Stream` made by the server's `open_stream`; the
engine tells it of its data, its end and its reset through the `on_*` methods, and the stream
answers through `send_head`, `send_data`, `send_trailers` and `send_answer`.

Every peer-driven loop is bounded: work per `data_received` by the bytes it brings, resets and
cheap control frames by token buckets, header blocks by frame count, size and time, answers the
peer does not take and unfinished requests by byte budgets, and a peer that does not read is not
read either (`pause_writing` stops reading until `resume_writing`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, cast

import hpack

from gateway.api.grpc_native import frames as f
from gateway.api.grpc_native.budgets import TokenBucket
from gateway.api.grpc_native.headers import HeadDecoder, table_size_update

if TYPE_CHECKING:
    from gateway.api.grpc_native.server import NativeGrpcServer

_log = logging.getLogger(__name__)
# One line per connection a peer made us close: rate-limited by the daemon's logging set-up
# (monitoring/logs.py RATE_LIMITED_LOGGERS), so a flood of bad connections is no flood of lines.
_closed_log = logging.getLogger("gateway.grpc.closed")

_HEAD_FRAME = f.FRAME_HEAD
STREAM_WINDOW = 4 << 20  # what a client may send on one stream before we acknowledge
_CONNECTION_WINDOW = 64 << 20
MAX_FRAME = 1 << 20  # frames we accept; larger frames mean fewer of them for big tensors
_WRITE_HIGH_WATER = 1 << 20  # above this in the socket's buffer the peer is not reading: stop reading it
# Control frames one frame of answer frees, and the most a connection may hold. Measured: grpc's C++
# client (perf_analyzer, streaming) sends ~2.4 window updates and pings per frame of answer it reads.
_FREE_CONTROLS_PER_FRAME = 4
_FREE_CONTROLS_CAP = 4096
_RETRY_COST = 1 / 16  # control-bucket tokens per stream a window change makes us look at again


class H2ConnectionError(Exception):
    """A connection error (RFC 9113 5.4.1): GOAWAY with this code, then close."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code


class Stream:
    """One request stream as the engine sees it; the gRPC call subclasses it."""

    __slots__ = (
        "connection", "stream_id", "send_window", "recv_window", "recv_unacked", "pending", "trailers",
        "head_sent", "remote_closed", "finished", "drained",
    )

    def __init__(self, connection: Http2Connection, stream_id: int) -> None:
        self.connection = connection
        self.stream_id = stream_id
        self.send_window = connection.peer_initial_window
        self.recv_window = STREAM_WINDOW
        self.recv_unacked = 0
        self.pending = bytearray()  # DATA waiting for flow-control window (or for the peer to read)
        self.trailers: bytes | None = None  # sent once pending is empty
        self.head_sent = False
        self.remote_closed = False
        self.finished = False  # we sent END_STREAM, or the stream was reset
        self.drained: asyncio.Future | None = None

    # -- what the engine tells the stream --
    def on_data(self, payload: bytes, end_stream: bool, flow_size: int) -> None:
        raise NotImplementedError

    def on_remote_end(self) -> None:
        """The peer half-closed the stream (END_STREAM on DATA or trailers)."""
        raise NotImplementedError

    def on_reset(self) -> None:
        """The peer reset the stream, a budget ended it, or the connection went away."""
        raise NotImplementedError

    def on_closed(self) -> None:
        """We ended the stream (END_STREAM sent): nothing more goes out."""
        raise NotImplementedError

    def on_drained(self) -> None:
        """Queued DATA went out (or never will): a writer waiting on it may go on."""
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)


class Http2Connection(asyncio.Protocol):
    def __init__(self, server: NativeGrpcServer) -> None:
        self.server = server
        self.options = server.options
        self.loop = server.running_loop
        self.transport: asyncio.Transport  # set by connection_made, before anything reads it
        self.peer = ""
        self.buf = bytearray()
        self.preface_seen = False
        self.settings_seen = False
        self.streams: dict[int, Stream] = {}
        self.last_stream_id = 0
        self.heads = HeadDecoder(self.options.max_header_block_bytes)
        self.send_window = f.DEFAULT_WINDOW
        self.recv_window = _CONNECTION_WINDOW
        self.recv_unacked = 0
        self.peer_initial_window = f.DEFAULT_WINDOW
        self.peer_max_frame = f.DEFAULT_MAX_FRAME
        self.peer_table_size = f.DEFAULT_TABLE_SIZE  # the HPACK table our header blocks may use
        self.table_update = b""  # a table size update owed at the start of our next header block
        # An open header block: its stream, first flags, bytes, CONTINUATION count, start time.
        self.header_stream = 0
        self.header_flags = 0
        self.header_block = bytearray()
        self.header_frames = 0
        self.header_since = 0.0
        # Streams with DATA queued: on the connection window (or a paused socket), or on their own window.
        self.blocked: set[Stream] = set()
        self.window_blocked: set[Stream] = set()
        self.pending_bytes = 0
        self.request_bytes = 0  # unfinished and unread request messages, kept by the streams
        self.going_away = False
        self.closed = False
        self.write_paused = False
        self.paused_since = 0.0
        # Control frames the peer may send for free: a few per frame of answer we sent (capped).
        self.free_controls = 0
        self.first_head_seen = False
        self.made_at = 0.0
        self.idle_since = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        now = self.loop.time()
        self._resets = TokenBucket(self.options.max_resets_burst, self.options.max_resets_per_s, now)
        self._control = TokenBucket(self.options.max_control_burst, self.options.max_control_per_s, now)
        self._out: list[bytes] = []  # frames written at the end of this loop pass, in one syscall

    # -- asyncio.Protocol --
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream server's protocol always gets a stream transport (TCP or TLS).
        self.transport = transport = cast(asyncio.Transport, transport)
        transport.set_write_buffer_limits(high=_WRITE_HIGH_WATER)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            host = peer[0]
            self.peer = f"ipv6:[{host}]:{peer[1]}" if ":" in host else f"ipv4:{host}:{peer[1]}"
        self.server.connections.add(self)
        opts = self.options
        now = self.made_at = self.idle_since = self.loop.time()
        self._arm(now + opts.header_timeout_s)
        values = {
            f.SETTINGS_MAX_CONCURRENT_STREAMS: opts.max_concurrent_streams,
            f.SETTINGS_INITIAL_WINDOW_SIZE: STREAM_WINDOW,
            f.SETTINGS_MAX_FRAME_SIZE: MAX_FRAME,
            f.SETTINGS_MAX_HEADER_LIST_SIZE: opts.max_header_bytes,
        }
        self._send(f.settings(values) + f.window_update(0, _CONNECTION_WINDOW - f.DEFAULT_WINDOW))

    def connection_lost(self, exc) -> None:
        self.closed = True
        self.server.connections.discard(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        streams = list(self.streams.values())
        self.streams.clear()
        self.blocked.clear()
        self.window_blocked.clear()
        for stream in streams:
            self._drop_pending(stream)
            stream.finished = True
            stream.on_reset()

    def pause_writing(self) -> None:
        # The peer is not reading what we send: stop reading what it sends, so it cannot make us
        # queue more (PING and SETTINGS acknowledgements, answers).
        self.write_paused = True
        self.paused_since = self.loop.time()
        if not self.closed:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if not self.closed:
            self.transport.resume_reading()
            self._flush_blocked(charged=False)

    def data_received(self, data: bytes) -> None:
        if self.buf:
            self.buf += data
            if not self._holds_a_frame(self.buf):
                return
            data = bytes(self.buf)
            self.buf = bytearray()
        try:
            used = self._frames(data)
        except H2ConnectionError as exc:
            self._fatal(exc.code, str(exc))
            return
        except hpack.OversizedHeaderListError:
            self._fatal(f.ENHANCE_YOUR_CALM, f"header list above {self.options.max_header_block_bytes} bytes")
            return
        except hpack.HPACKError as exc:
            self._fatal(f.COMPRESSION_ERROR, f"header block: {exc}")
            return
        except Exception:  # noqa: BLE001 - a bad connection is closed, the daemon serves on
            _log.exception("gRPC connection from %s closed on an unexpected error", self.peer)
            self._fatal(f.INTERNAL_ERROR, "internal error")
            return
        if used < len(data) and not self.closed:
            self.buf = bytearray(data[used:])

    def eof_received(self) -> bool:
        return False  # close: a peer that half-closes sends nothing more we could serve

    def _holds_a_frame(self, buf: bytearray) -> bool:
        if not self.preface_seen:  # a wrong start is refused without waiting for the preface's length
            return len(buf) >= len(f.PREFACE) or buf != f.PREFACE[:len(buf)]
        if len(buf) < 9:
            return False
        hi, lo, _, _, _ = _HEAD_FRAME.unpack_from(buf)
        return len(buf) >= 9 + (hi << 16 | lo) or (hi << 16 | lo) > MAX_FRAME

    def _frames(self, data: bytes) -> int:
        pos = 0
        if not self.preface_seen:
            if data[:len(f.PREFACE)] != f.PREFACE[:len(data)]:
                raise H2ConnectionError(f.PROTOCOL_ERROR, "not an HTTP/2 connection preface (gRPC needs HTTP/2)")
            if len(data) < len(f.PREFACE):
                return 0
            self.preface_seen = True
            pos = len(f.PREFACE)
        n = len(data)
        while n - pos >= 9 and not self.closed:
            hi, lo, ftype, flags, sid = _HEAD_FRAME.unpack_from(data, pos)
            length = hi << 16 | lo
            if length > MAX_FRAME:
                raise H2ConnectionError(f.FRAME_SIZE_ERROR, f"frame of {length} bytes; at most {MAX_FRAME}")
            end = pos + 9 + length
            if end > n:
                break
            payload = data[pos + 9:end]
            pos = end
            sid &= f.MAX_WINDOW
            if self.header_stream and ftype != f.CONTINUATION:
                raise H2ConnectionError(f.PROTOCOL_ERROR, "a header block was interrupted")
            if not self.settings_seen:
                if ftype != f.SETTINGS or flags & f.ACK:
                    raise H2ConnectionError(f.PROTOCOL_ERROR, "the first frame after the preface must be SETTINGS")
                self.settings_seen = True
            if ftype == f.DATA:
                self._on_data(sid, flags, payload)
            elif ftype == f.HEADERS:
                self._on_headers(sid, flags, payload)
            elif ftype == f.WINDOW_UPDATE:
                self._on_window_update(sid, payload)
            elif ftype == f.RST_STREAM:
                self._on_rst_stream(sid, payload)
            elif ftype == f.CONTINUATION:
                self._on_continuation(sid, flags, payload)
            elif ftype == f.SETTINGS:
                self._on_settings(sid, flags, payload)
            elif ftype == f.PING:
                self._on_ping(sid, flags, payload)
            elif ftype == f.PRIORITY:
                self._on_priority(sid, payload)
            elif ftype == f.GOAWAY:
                if sid:
                    raise H2ConnectionError(f.PROTOCOL_ERROR, "GOAWAY on a stream")
                self.going_away = True
                self._close_if_idle()
            elif ftype == f.PUSH_PROMISE:
                raise H2ConnectionError(f.PROTOCOL_ERROR, "a client cannot push")
            else:  # unknown frame types are ignored, as RFC 9113 asks, but not for free
                self._work()
        return pos

    def _answered(self, frames: int) -> None:
        self.free_controls = min(self.free_controls + frames * _FREE_CONTROLS_PER_FRAME, _FREE_CONTROLS_CAP)

    def _work(self) -> None:
        """A cheap frame that asks something of us (PING, SETTINGS, WINDOW_UPDATE, ...). As in grpc's
        ping policy, those that follow answers of ours are free: a real client sends about one per
        answer frame it reads (connection and stream window updates, BDP pings), and reads many
        answers per read when we batch them; so each frame of answer we send frees a few. Only
        control frames beyond the traffic we gave draw on the budget: a flood costs the peer an
        answer of ours (a request's whole work) per few frames."""
        if self.free_controls > 0:
            self.free_controls -= 1
            return
        self._charge(1.0)

    def _charge(self, cost: float) -> None:
        if not self._control.take(self.loop.time(), cost):
            raise H2ConnectionError(f.ENHANCE_YOUR_CALM, "too many control frames")

    def _reset_counted(self) -> None:
        if not self._resets.take(self.loop.time()):
            raise H2ConnectionError(f.ENHANCE_YOUR_CALM, "too many streams reset")

    # -- frames in --
    def _on_settings(self, sid: int, flags: int, payload: bytes) -> None:
        if sid:
            raise H2ConnectionError(f.PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & f.ACK:
            if payload:
                raise H2ConnectionError(f.FRAME_SIZE_ERROR, "SETTINGS acknowledgement with a payload")
            return
        if len(payload) % 6:
            raise H2ConnectionError(f.FRAME_SIZE_ERROR, "SETTINGS length is not a multiple of 6")
        if len(payload) // 6 > self.options.max_settings_entries:
            raise H2ConnectionError(f.ENHANCE_YOUR_CALM, f"SETTINGS with more than {self.options.max_settings_entries} entries")
        self._work()
        window = None
        for key, value in f.parse_settings(payload):
            if key == f.SETTINGS_INITIAL_WINDOW_SIZE:
                if value > f.MAX_WINDOW:
                    raise H2ConnectionError(f.FLOW_CONTROL_ERROR, "initial window above 2^31-1")
                window = value
            elif key == f.SETTINGS_MAX_FRAME_SIZE:
                if not f.DEFAULT_MAX_FRAME <= value < (1 << 24):
                    raise H2ConnectionError(f.PROTOCOL_ERROR, f"SETTINGS_MAX_FRAME_SIZE {value} outside 16384..2^24-1")
                self.peer_max_frame = value
            elif key == f.SETTINGS_ENABLE_PUSH:
                if value > 1:
                    raise H2ConnectionError(f.PROTOCOL_ERROR, f"SETTINGS_ENABLE_PUSH {value} is not 0 or 1")
            elif key == f.SETTINGS_HEADER_TABLE_SIZE and value < self.peer_table_size:
                # RFC 7541 4.2: the encoder must signal its smaller table in its next block (nghttp2 checks).
                self.peer_table_size = value
                self.table_update = table_size_update(value)
        self._send(f.frame(f.SETTINGS, f.ACK, 0))
        if window is not None and window != self.peer_initial_window:
            delta = window - self.peer_initial_window
            self.peer_initial_window = window
            self._charge(len(self.streams) * _RETRY_COST)
            for stream in self.streams.values():
                stream.send_window += delta
                if stream.send_window > f.MAX_WINDOW:
                    raise H2ConnectionError(f.FLOW_CONTROL_ERROR, "a stream window above 2^31-1")
            if delta > 0 and self.window_blocked:
                self.blocked |= self.window_blocked
                self.window_blocked.clear()
        self._flush_blocked()

    def _on_ping(self, sid: int, flags: int, payload: bytes) -> None:
        if sid:
            raise H2ConnectionError(f.PROTOCOL_ERROR, "PING on a stream")
        if len(payload) != 8:
            raise H2ConnectionError(f.FRAME_SIZE_ERROR, "PING is not 8 bytes")
        self._work()
        if not flags & f.ACK:
            self._send(f.frame(f.PING, f.ACK, 0, payload))

    def _on_priority(self, sid: int, payload: bytes) -> None:
        if not sid:
            raise H2ConnectionError(f.PROTOCOL_ERROR, "PRIORITY on stream 0")
        self._work()
        if len(payload) != 5:
            self._reset(sid, f.FRAME_SIZE_ERROR)

    def _on_window_update(self, sid: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise H2ConnectionError(f.FRAME_SIZE_ERROR, "WINDOW_UPDATE is not 4 bytes")
        self._work()
        increment = f.window_increment(payload)
        if sid == 0:
            if not increment:
                raise H2ConnectionError(f.PROTOCOL_ERROR, "WINDOW_UPDATE of 0 on the connection")
            self.send_window += increment
            if self.send_window > f.MAX_WINDOW:
                raise H2ConnectionError(f.FLOW_CONTROL_ERROR, "connection window above 2^31-1")
            self._flush_blocked()
            return
        if sid > self.last_stream_id:
            raise H2ConnectionError(f.PROTOCOL_ERROR, "WINDOW_UPDATE on an idle stream")
        stream = self.streams.get(sid)
        if stream is None:
            return  # closed: frames in flight are ignored
        if not increment:
            self._reset(sid, f.PROTOCOL_ERROR)
            return
        stream.send_window += increment
        if stream.send_window > f.MAX_WINDOW:
            self._reset(sid, f.FLOW_CONTROL_ERROR)
            return
        if stream in self.window_blocked:
            self.window_blocked.discard(stream)
            self.flush(stream)

    def _on_rst_stream(self, sid: int, payload: bytes) -> None:
        if not sid:
            raise H2ConnectionError(f.PROTOCOL_ERROR, "RST_STREAM on stream 0")
        if len(payload) != 4:
            raise H2ConnectionError(f.FRAME_SIZE_ERROR, "RST_STREAM is not 4 bytes")
        if sid > self.last_stream_id:
            raise H2ConnectionError(f.PROTOCOL_ERROR, "RST_STREAM on an idle stream")
        self._reset_counted()
        stream = self.streams.pop(sid, None)
        if stream is not None:
            self._forget(stream)
            stream.finished = True
            stream.on_reset()
            self._became_quiet()

    def _on_headers(self, sid: int, flags: int, payload: bytes) -> None:
        if sid == 0 or not sid & 1:
            raise H2ConnectionError(f.PROTOCOL_ERROR, "a client stream id must be odd and not 0")
        start, end = 0, len(payload)
        if flags & f.PADDED:
            if not end:
                raise H2ConnectionError(f.PROTOCOL_ERROR, "PADDED HEADERS without a pad length")
            start, end = 1, end - payload[0]
        if flags & f.PRIORITY_FLAG:
            start += 5
        if end < start:
            raise H2ConnectionError(f.PROTOCOL_ERROR, "HEADERS padding longer than the frame")
        block = payload[start:end]
        if len(block) > self.options.max_header_block_bytes:
            raise H2ConnectionError(f.ENHANCE_YOUR_CALM, f"header block above {self.options.max_header_block_bytes} bytes")
        if not flags & f.END_HEADERS:
            self.header_stream, self.header_flags = sid, flags
            self.header_block = bytearray(block)
            self.header_frames = 0
            self.header_since = now = self.loop.time()
            self._arm(now + self.options.header_timeout_s)
            return
        self._on_header_block(sid, block, flags & f.END_STREAM)

    def _on_continuation(self, sid: int, flags: int, payload: bytes) -> None:
        if not self.header_stream or sid != self.header_stream:
            raise H2ConnectionError(f.PROTOCOL_ERROR, "CONTINUATION without a header block open on its stream")
        self.header_frames += 1
        if self.header_frames > self.options.max_continuations:
            raise H2ConnectionError(f.ENHANCE_YOUR_CALM, f"more than {self.options.max_continuations} CONTINUATION frames")
        self.header_block += payload
        if len(self.header_block) > self.options.max_header_block_bytes:
            raise H2ConnectionError(f.ENHANCE_YOUR_CALM, f"header block above {self.options.max_header_block_bytes} bytes")
        if flags & f.END_HEADERS:
            block, self.header_block, self.header_stream = bytes(self.header_block), bytearray(), 0
            self._on_header_block(sid, block, self.header_flags & f.END_STREAM)

    def _on_header_block(self, sid: int, block: bytes, end_stream: int) -> None:
        head = self.heads.decode(block)  # always: the HPACK tables must stay in step with the client
        self.first_head_seen = True
        stream = self.streams.get(sid)
        if stream is not None:  # trailers from the client end its stream
            if not end_stream:
                self._reset(sid, f.PROTOCOL_ERROR)
                return
            self._remote_end(stream)
            return
        if sid <= self.last_stream_id:
            if head.path:
                raise H2ConnectionError(f.PROTOCOL_ERROR, f"stream id {sid} is not above {self.last_stream_id}")
            return  # trailers of a stream we closed already
        self.last_stream_id = sid
        if (self.going_away or len(self.streams) >= self.options.max_concurrent_streams
                or self.pending_bytes > self.options.max_pending_bytes_per_connection
                or not self.server.pending.fits(0)):
            self._reset_counted()
            self._send(f.rst_stream(sid, f.REFUSED_STREAM))
            return
        stream = self.server.open_stream(self, sid, head, bool(end_stream))
        if stream is not None and not stream.finished:
            self.streams[sid] = stream

    def _on_data(self, sid: int, flags: int, payload: bytes) -> None:
        if not sid:
            raise H2ConnectionError(f.PROTOCOL_ERROR, "DATA on stream 0")
        if sid > self.last_stream_id:
            raise H2ConnectionError(f.PROTOCOL_ERROR, "DATA on an idle stream")
        length = len(payload)
        self.recv_window -= length
        if self.recv_window < 0:
            raise H2ConnectionError(f.FLOW_CONTROL_ERROR, "DATA beyond the connection window")
        self.recv_unacked += length
        if self.recv_unacked >= _CONNECTION_WINDOW // 2:
            self._send(f.window_update(0, self.recv_unacked))
            self.recv_window += self.recv_unacked
            self.recv_unacked = 0
        if flags & f.PADDED:
            if not length or payload[0] >= length:
                raise H2ConnectionError(f.PROTOCOL_ERROR, "DATA padding as long as the frame")
            payload = payload[1:length - payload[0]]
        end_stream = bool(flags & f.END_STREAM)
        if not payload and not end_stream:
            self._work()
        stream = self.streams.get(sid)
        if stream is None or stream.remote_closed:
            return  # answered already, or reset
        stream.recv_window -= length
        if stream.recv_window < 0:  # past the window we gave: what it sent would pile up here
            self._reset(sid, f.FLOW_CONTROL_ERROR)
            return
        stream.on_data(payload, end_stream, length)
        if end_stream and not stream.remote_closed:
            self._remote_end(stream)

    def _remote_end(self, stream: Stream) -> None:
        stream.remote_closed = True
        if not stream.finished:
            stream.on_remote_end()

    def consumed(self, stream: Stream, size: int) -> None:
        """The stream's handler took `size` bytes: the client may send that much more."""
        stream.recv_unacked += size
        if stream.recv_unacked >= STREAM_WINDOW // 4 and not stream.remote_closed and not stream.finished:
            self._send(f.window_update(stream.stream_id, stream.recv_unacked))
            stream.recv_window += stream.recv_unacked
            stream.recv_unacked = 0

    def hold_request_bytes(self, stream: Stream, delta: int) -> bool:
        """Counts bytes a stream keeps of unfinished or unread requests; False when over a budget."""
        budget = self.server.request_buffer
        if delta > 0 and (self.request_bytes + delta > self.options.max_buffered_request_bytes_per_connection
                          or not budget.fits(delta)):
            return False
        self.request_bytes += delta
        budget.used += delta
        return True

    # -- frames out --
    def send_head(self, stream: Stream, block: bytes) -> None:
        if stream.head_sent or stream.finished:
            return
        stream.head_sent = True
        self._answered(1)
        self._send(self._header_frames(stream.stream_id, block, False))

    def send_answer(self, stream: Stream, head: bytes, message: bytes, trailers: bytes) -> bool:
        """A whole answer in one write when the windows allow and the peer reads; False if it must queue."""
        size = len(message)
        if (stream.head_sent or size > stream.send_window or size > self.send_window or size > self.peer_max_frame
                or self.table_update or self.write_paused):
            return False
        stream.send_window -= size
        self.send_window -= size
        self._answered(3)
        sid = stream.stream_id
        self._send(b"".join((
            f.head(f.HEADERS, f.END_HEADERS, sid, len(head)), head,
            f.head(f.DATA, 0, sid, size), message,
            f.head(f.HEADERS, f.END_HEADERS | f.END_STREAM, sid, len(trailers)), trailers,
        )))
        stream.head_sent = True
        self._closed(stream)
        return True

    def send_data(self, stream: Stream, data: bytes, head: bytes | None = None) -> bool:
        """DATA (after the response head, if given), or queued for window; False, with nothing
        sent, when queueing it would pass the bytes held for peers that do not take their answers."""
        size = len(data)
        pending = self.server.pending
        if stream.pending or not self._can_send(stream, size):
            # A connection holding nothing may always queue one answer, however big, within the
            # process-wide budget: a lone large download is served, many stalled ones are not.
            if ((self.pending_bytes and self.pending_bytes + size > self.options.max_pending_bytes_per_connection)
                    or not pending.fits(size)):
                return False
            if head is not None:
                self.send_head(stream, head)
            stream.pending += data
            self.pending_bytes += size
            pending.used += size
            self.flush(stream)
            return True
        if head is not None:
            self.send_head(stream, head)
        stream.send_window -= size
        self.send_window -= size
        sid, most = stream.stream_id, self.peer_max_frame
        self._answered(-(-size // most))
        for i in range(0, size, most):  # frames of at most the peer's size
            part = data[i:i + most]
            self._send(f.head(f.DATA, 0, sid, len(part)) + part)
        return True

    def send_trailers(self, stream: Stream, block: bytes) -> None:
        """Ends the stream: trailers after any queued data, or a trailers-only answer."""
        if stream.finished or stream.trailers is not None:
            return
        self._answered(1)
        if not stream.head_sent:
            stream.head_sent = True
            self._send(self._header_frames(stream.stream_id, block, True))
            self._closed(stream)
            return
        stream.trailers = block
        self.flush(stream)

    def reset_stream(self, stream: Stream, code: int) -> None:
        """We end the stream with RST_STREAM (a budget it broke, or a cancelled answer)."""
        if stream.finished:
            return
        self._reset(stream.stream_id, code)

    def _can_send(self, stream: Stream, size: int) -> bool:
        return size <= stream.send_window and size <= self.send_window and not self.write_paused

    def flush(self, stream: Stream) -> None:
        pending = stream.pending
        sid = stream.stream_id
        while pending:
            if self.write_paused or self.send_window <= 0:
                self.blocked.add(stream)
                return
            if stream.send_window <= 0:
                self.window_blocked.add(stream)
                return
            size = min(len(pending), stream.send_window, self.send_window, self.peer_max_frame)
            self._send(f.head(f.DATA, 0, sid, size) + pending[:size])
            self._answered(1)
            del pending[:size]
            stream.send_window -= size
            self.send_window -= size
            self.pending_bytes -= size
            self.server.pending.used -= size
        self.blocked.discard(stream)
        self.window_blocked.discard(stream)
        stream.on_drained()
        if stream.trailers is not None:
            self._send(self._header_frames(sid, stream.trailers, True))
            self._closed(stream)

    def _flush_blocked(self, charged: bool = True) -> None:
        """Streams waiting on the connection window or the socket; a peer's frame that makes us look
        at them again pays for the look (the socket resuming does not)."""
        if not self.blocked:
            return
        idle = 0  # streams looked at that could send nothing: what a peer's frame made us waste
        for stream in list(self.blocked):
            if self.send_window <= 0 or self.write_paused:
                break
            before = len(stream.pending)
            self.blocked.discard(stream)
            self.flush(stream)
            idle += len(stream.pending) == before and stream.trailers is None
        if charged and idle:
            self._charge(idle * _RETRY_COST)

    def _header_frames(self, sid: int, block: bytes, end_stream: bool) -> bytes:
        if self.table_update:
            block, self.table_update = self.table_update + block, b""
        return f.header_frames(sid, block, end_stream, self.peer_max_frame)

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

    # -- stream state --
    def _closed(self, stream: Stream) -> None:
        """We sent the end of the stream; a client still sending is told to stop."""
        stream.finished = True
        self.streams.pop(stream.stream_id, None)
        self._forget(stream)
        if not stream.remote_closed:
            stream.remote_closed = True
            self._send(f.rst_stream(stream.stream_id, f.NO_ERROR))
        stream.on_closed()
        self._became_quiet()
        self._close_if_idle()

    def _reset(self, sid: int, code: int) -> None:
        self._send(f.rst_stream(sid, code))
        stream = self.streams.pop(sid, None)
        if stream is not None:
            self._forget(stream)
            stream.finished = True
            stream.remote_closed = True
            stream.on_reset()
            self._became_quiet()
            self._close_if_idle()

    def _forget(self, stream: Stream) -> None:
        self.blocked.discard(stream)
        self.window_blocked.discard(stream)
        self._drop_pending(stream)

    def _drop_pending(self, stream: Stream) -> None:
        if stream.pending:
            size = len(stream.pending)
            self.pending_bytes -= size
            self.server.pending.used -= size
            stream.pending = bytearray()
        stream.on_drained()

    def _became_quiet(self) -> None:
        if not self.streams:
            self.idle_since = self.loop.time()

    # -- timeouts: one timer per connection, re-armed lazily to the next deadline --
    def _arm(self, at: float) -> None:
        if self._timer is not None:
            if self._timer_at <= at:
                return
            self._timer.cancel()
        self._timer_at = at
        self._timer = self.loop.call_at(at, self._tick)

    def _tick(self) -> None:
        self._timer = None
        if self.closed:
            return
        opts = self.options
        now = self.loop.time()
        if not self.first_head_seen:
            if now >= self.made_at + opts.header_timeout_s:
                if self.preface_seen:
                    self._fatal(f.NO_ERROR, "no request within header_timeout_s")
                else:
                    self._log_close("no HTTP/2 preface within header_timeout_s")
                    self._close()
                return
            self._arm(self.made_at + opts.header_timeout_s)
            return
        if self.header_stream:
            if now >= self.header_since + opts.header_timeout_s:
                self._fatal(f.PROTOCOL_ERROR, "a header block took longer than header_timeout_s")
                return
            self._arm(self.header_since + opts.header_timeout_s)
        if self.write_paused and now >= self.paused_since + opts.idle_timeout_s:
            self._fatal(f.NO_ERROR, "the client read nothing for idle_timeout_s")
            return
        if not self.streams and now >= self.idle_since + opts.idle_timeout_s:
            self._log_close("idle for idle_timeout_s")
            self.go_away()
            self._close()
            return
        due = self.paused_since if self.write_paused else (self.idle_since if not self.streams else now)
        self._arm(max(due + opts.idle_timeout_s, now + 0.05))

    # -- connection state --
    def go_away(self) -> None:
        """Graceful stop: calls already started finish; new streams are refused."""
        if self.closed or self.going_away:
            return
        self.going_away = True
        self._send(f.goaway(self.last_stream_id, f.NO_ERROR))
        self._close_if_idle()

    def _close_if_idle(self) -> None:
        if self.going_away and not self.streams:
            self._close()

    def abort(self) -> None:
        self._close()
        self.connection_lost(None)

    def _log_close(self, reason: str) -> None:
        _closed_log.info("gRPC connection from %s closed: %s", self.peer or "?", reason)

    def _fatal(self, error: int, reason: str) -> None:
        self._log_close(reason)
        if not self.closed:
            self._send(f.goaway(self.last_stream_id, error, reason.encode()[:256]))
            self._close()

    def _close(self) -> None:
        """Close the transport once the frames queued so far are written."""
        if not self.closed:
            self.closed = True
            self._write_out()
            self.transport.close()

