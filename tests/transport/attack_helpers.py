"""Pieces of the hostile-client tests (test_native_attacks.py): raw frames and HPACK fields written by
hand, a well-behaved client measured beside the attacker, the daemon's memory, bounded waits on what
the daemon does to the attacker's connection.

The answers checked are the native transport's budgets (README "gRPC transport") and RFC 9113's codes.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from hyperframe.exceptions import HyperframeError
from transport_helpers import (
    INFER, LIVE, MAX_REQUEST_BYTES, RawH2, check_simple, grpc_messages, simple_arrays, simple_request,
    write_transport_repository,
)

# RFC 9113 section 7
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0x0, 0x1, 0x2, 0x3
STREAM_CLOSED, FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL = 0x5, 0x6, 0x7, 0x8
COMPRESSION_ERROR, ENHANCE_YOUR_CALM = 0x9, 0xB
CODE_NAMES = {
    0x0: "NO_ERROR", 0x1: "PROTOCOL_ERROR", 0x2: "INTERNAL_ERROR", 0x3: "FLOW_CONTROL_ERROR", 0x4: "SETTINGS_TIMEOUT",
    0x5: "STREAM_CLOSED", 0x6: "FRAME_SIZE_ERROR", 0x7: "REFUSED_STREAM", 0x8: "CANCEL", 0x9: "COMPRESSION_ERROR",
    0xA: "CONNECT_ERROR", 0xB: "ENHANCE_YOUR_CALM", 0xC: "INADEQUATE_SECURITY", 0xD: "HTTP_1_1_REQUIRED",
}

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM, ACK, END_HEADERS, PADDED = 0x1, 0x1, 0x4, 0x8
SETTINGS_HEADER_TABLE_SIZE, SETTINGS_ENABLE_PUSH, SETTINGS_INITIAL_WINDOW_SIZE = 0x1, 0x2, 0x4
SETTINGS_MAX_FRAME_SIZE = 0x5

# gRPC status numbers
OK, RESOURCE_EXHAUSTED, UNIMPLEMENTED = 0, 8, 12

MIB = 1 << 20


def code_name(code: int | None) -> str:
    return "none" if code is None else CODE_NAMES.get(code, hex(code))


# -- frames and HPACK fields by hand (hyperframe refuses to write most malformed frames) --

def frame(ftype: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return struct.pack(">BHBBL", n >> 16, n & 0xFFFF, ftype, flags, sid) + payload


def frame_head(ftype: int, flags: int, sid: int, length: int) -> bytes:
    """A frame header announcing `length` bytes (the payload follows separately, or never)."""
    return struct.pack(">BHBBL", length >> 16, length & 0xFFFF, ftype, flags, sid)


def settings_frame(entries: list[tuple[int, int]], flags: int = 0, sid: int = 0) -> bytes:
    return frame(SETTINGS, flags, sid, b"".join(struct.pack(">HL", k, v) for k, v in entries))


def rst(sid: int, code: int = CANCEL) -> bytes:
    return frame(RST_STREAM, 0, sid, struct.pack(">L", code))


def ping(data: bytes = b"12345678", flags: int = 0) -> bytes:
    return frame(PING, flags, 0, data)


def window_update(sid: int, increment: int) -> bytes:
    return frame(WINDOW_UPDATE, 0, sid, struct.pack(">L", increment))


def hpack_int(value: int, prefix_bits: int, first: int = 0) -> bytes:
    """RFC 7541 5.1: an integer with an N-bit prefix; `first` holds the bits above the prefix."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append(value % 128 + 128)
        value //= 128
    out.append(value)
    return bytes(out)


def hpack_string(raw: bytes) -> bytes:
    return hpack_int(len(raw), 7) + raw  # no Huffman: sizes stay exact


def hpack_literal(name: bytes, value: bytes, index: bool = False) -> bytes:
    """A literal field with a new name: with incremental indexing (added to the decoder's dynamic
    table) or without indexing (the table is left as it is)."""
    return (b"\x40" if index else b"\x00") + hpack_string(name) + hpack_string(value)


def hpack_literal_indexed_name(name_index: int, value: bytes, index: bool = False) -> bytes:
    return (hpack_int(name_index, 6, 0x40) if index else hpack_int(name_index, 4, 0x00)) + hpack_string(value)


def hpack_indexed(index: int) -> bytes:
    return hpack_int(index, 7, 0x80)


# Static-table entries (RFC 7541 appendix A) of a gRPC request.
METHOD_POST, SCHEME_HTTP = hpack_indexed(3), hpack_indexed(6)
PATH_NAME, AUTHORITY_NAME = 4, 1
GRPC_FIELDS = hpack_literal(b"content-type", b"application/grpc") + hpack_literal(b"te", b"trailers")


def request_fields(path: bytes) -> bytes:
    """A whole gRPC request head that leaves the dynamic table as it is."""
    return (METHOD_POST + SCHEME_HTTP + hpack_literal_indexed_name(PATH_NAME, path)
            + hpack_literal_indexed_name(AUTHORITY_NAME, b"gateway") + GRPC_FIELDS)


# -- a daemon with one more model: small requests, large answers --

TILE_REPEATS = 64


def write_tile_model(root: Path) -> None:
    """tile: IN UINT8 [batch, n] -> OUT UINT8 [batch, 64 n] (Tile): a 256-byte request asks for a 16 KiB
    answer, so what a daemon holds for a client that does not read is its answers, not its requests."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    import numpy as np

    graph = helper.make_graph(
        [helper.make_node("Tile", ["IN", "REPEATS"], ["OUT"])], "tile",
        [helper.make_tensor_value_info("IN", TensorProto.UINT8, ["batch", "n"])],
        [helper.make_tensor_value_info("OUT", TensorProto.UINT8, ["batch", "m"])],
        initializer=[numpy_helper.from_array(np.array([1, TILE_REPEATS], np.int64), "REPEATS")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="attack-tests")
    model.ir_version = 8
    (root / "tile" / "1").mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(root / "tile" / "1" / "model.onnx"))
    (root / "tile" / "model.yaml").write_text("max_batch_size: 8\n")


def tile_request(payload: bytes):
    from tritonclient.grpc import service_pb2 as pb

    req = pb.ModelInferRequest(model_name="tile")
    req.inputs.add(name="IN", datatype="UINT8", shape=[1, len(payload)])
    req.raw_input_contents.append(payload)
    return req


def start_attack_gateway(tmp_path_factory, transport: str, *extra: str):
    """start_transport_gateway's daemon and repository, with the tile model too."""
    from daemons import Gateway  # tests/conftest.py

    root = write_transport_repository(tmp_path_factory.mktemp(f"attacks-{transport}") / "models")
    write_tile_model(root)
    return Gateway(root, "--grpc-transport", transport, "--max-request-bytes", str(MAX_REQUEST_BYTES), *extra)


# -- sockets --

def raw_socket(url: str, rcvbuf: int | None = None, timeout_s: float = 10.0) -> socket.socket:
    """A plain TCP connection; a small receive buffer is set before connecting so that it sticks."""
    host, port = url.rsplit(":", 1)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(timeout_s)
    sock.connect((host, int(port)))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def send_chunks(sock: socket.socket, chunks, deadline: float) -> tuple[int, str]:
    """Writes chunk after chunk until all are written, the daemon closes, TCP stalls, or the deadline
    passes: (bytes written, why it stopped: "done" | "closed" | "stalled" | "deadline")."""
    written = 0
    for chunk in chunks:
        left = deadline - time.monotonic()
        if left <= 0:
            return written, "deadline"
        sock.settimeout(min(left, 3.0))  # 3 s without room in the socket: the daemon stopped reading
        try:
            sock.sendall(chunk)
        except socket.timeout:
            return written, "stalled"
        except (BrokenPipeError, ConnectionResetError):
            return written, "closed"
        written += len(chunk)
    return written, "done"


def unsent_bytes(sock: socket.socket) -> int:
    """Bytes written but not yet acknowledged by the daemon's kernel (TIOCOUTQ)."""
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]


def wait_consumed(sock: socket.socket, timeout_s: float = 20.0, stalled_s: float = 1.5) -> str:
    """Waits until the daemon has read everything written on `sock` ("consumed"), read nothing more
    for stalled_s ("stalled"), or closed it ("closed"); bounded by timeout_s ("timeout")."""
    deadline = time.monotonic() + timeout_s
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        try:
            left = unsent_bytes(sock)
        except OSError:
            return "closed"
        if left == 0:
            return "consumed"
        if left != last:
            last, since = left, time.monotonic()
        elif time.monotonic() - since > stalled_s:
            return "stalled"
        time.sleep(0.02)  # polling an observed state, bounded above
    return "timeout"


def pump(raw: RawH2) -> None:
    """Reads whatever the daemon has sent so far (never waits) and applies every whole frame."""
    while not raw.closed:
        readable, _, _ = select.select([raw.sock], [], [], 0)
        if not readable:
            break
        try:
            chunk = raw.sock.recv(1 << 20)
        except (ConnectionResetError, BlockingIOError):
            chunk = b""
        if not chunk:
            raw.closed = True
            break
        raw.buf += chunk
    while True:
        try:
            if raw.read_frame(0) is None:
                return
        except TimeoutError:
            return


def await_close(raw: RawH2, timeout_s: float) -> tuple[bool, int | None, float]:
    """Reads until the daemon closes the connection, at most timeout_s: (closed, GOAWAY code or None,
    seconds waited). Never raises on a slow or closed peer."""
    started = time.monotonic()
    deadline = started + timeout_s
    while not raw.closed:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            raw.read_frame(left)
        except TimeoutError:
            break
        except OSError:
            raw.closed = True
        except HyperframeError as exc:  # the daemon wrote a frame no client can parse
            raw.malformed = f"{type(exc).__name__}: {exc}"
            break
    return raw.closed, (raw.goaway.error_code if raw.goaway is not None else None), time.monotonic() - started


def scan_goaway(sock: socket.socket, timeout_s: float) -> tuple[bool, int | None]:
    """Reads a connection to its end (bounded) looking only at frame headers, fast enough for megabytes
    of PING ACKs: (closed, the GOAWAY code seen or None). Expects the daemon's SETTINGS first, so the
    stream is frame-aligned from the first byte."""
    deadline = time.monotonic() + timeout_s
    buf = bytearray()
    pos = 0
    code = None
    while True:
        while len(buf) - pos >= 9:
            length = int.from_bytes(buf[pos:pos + 3], "big")
            if len(buf) - pos < 9 + length:
                break
            if buf[pos + 3] == GOAWAY and length >= 8:
                code = int.from_bytes(buf[pos + 13:pos + 17], "big")
            pos += 9 + length
        if pos > (1 << 20):
            del buf[:pos]
            pos = 0
        left = deadline - time.monotonic()
        if left <= 0:
            return False, code
        sock.settimeout(left)
        try:
            chunk = sock.recv(1 << 20)
        except socket.timeout:
            return False, code
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            return True, code
        buf += chunk


def serves(gw) -> None:
    """A fresh connection still gets a correct answer."""
    a, b = simple_arrays(2, seed=31)
    with RawH2(gw.grpc_url, timeout_s=15) as client:
        client.unary(1, INFER, simple_request(a, b).SerializeToString())
        answer = client.response(1)
        assert answer.status == OK, answer.message
        check_simple(grpc_messages(bytes(answer.data))[0], a, b)


def live(raw: RawH2, sid: int) -> int | None:
    """One ServerLive call on an open raw connection: its grpc-status."""
    raw.unary(sid, LIVE, b"")
    return raw.response(sid, timeout_s=15).status


# -- the daemon's memory --

from reliability_helpers import rss_bytes  # noqa: E402,F401 - the one reader of VmRSS


class RssWatch:
    """The daemon's RSS before and at its highest while the block runs (sampled every 20 ms)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.baseline = rss_bytes(pid)
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.sample()

    def sample(self) -> int:
        try:
            now = rss_bytes(self.pid)
        except (OSError, RuntimeError):
            return self.peak
        self.peak = max(self.peak, now)
        return now

    @property
    def growth(self) -> int:
        return self.peak - self.baseline

    def __enter__(self) -> RssWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sample()


# -- the well-behaved client --

@dataclass
class Served:
    """What the good client saw in one test."""

    baseline_p50_s: float
    during: list[float]
    failures: list[tuple[float, float, str]]
    calls: int
    attack_start: float = 0.0

    @property
    def during_p90_s(self) -> float:
        return _quantile(self.during, 0.9)

    @property
    def during_max_s(self) -> float:
        return max(self.during) if self.during else 0.0

    def bound_s(self) -> float:
        return max(10 * self.baseline_p50_s, 0.2)

    def summary(self) -> str:
        failed = [f"{status} at {start - self.attack_start:+.2f} s" for start, _, status in self.failures[:3]]
        return (f"good client: {self.calls} calls, {len(self.failures)} failed {failed}; baseline p50 "
                f"{self.baseline_p50_s * 1e3:.1f} ms; during the attack {len(self.during)} calls, p90 "
                f"{self.during_p90_s * 1e3:.1f} ms, max {self.during_max_s * 1e3:.1f} ms")


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class GoodClient:
    """good_client.py in its own process on its own connection, for the whole test module."""

    def __init__(self, url: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("good_client.py")), url],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.records: list[tuple[float, float, str]] = []
        self.ready = False
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._wait(lambda: self.ready, 60, "the good client connected")

    def _read(self) -> None:
        for line in self.proc.stdout:
            item = json.loads(line)
            with self._changed:
                if isinstance(item, dict):
                    self.ready = True
                else:
                    self.records.append(tuple(item))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def _wait(self, predicate, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise AssertionError(f"timed out waiting for {what} (good client exit={self.proc.poll()}: "
                                         f"{self.proc.stderr.read() if self.proc.poll() is not None else ''})")
                self._changed.wait(min(left, 0.5))

    def _done_after(self, t: float) -> int:
        return sum(1 for start, latency, _ in self.records if start + latency >= t)

    def begin(self, calls: int = 30) -> float:
        """Marks the start of a test and waits for `calls` calls after it (the baseline)."""
        mark = time.monotonic()
        self._wait(lambda: sum(1 for start, _, _ in self.records if start >= mark) >= calls, 60,
                   f"{calls} baseline calls of the good client")
        return mark

    def served(self, mark: float, attack_start: float, attack_end: float, min_window_s: float = 1.0,
               calls_after: int = 10) -> Served:
        """The calls of this test: baseline before attack_start, those overlapping the attack (stretched to
        min_window_s), and `calls_after` completed once it is over (waited for, bounded)."""
        window_end = max(attack_end, attack_start + min_window_s)
        self._wait(lambda: sum(1 for start, _, _ in self.records if start >= window_end) >= calls_after, 60,
                   "the good client's calls after the attack")
        with self._changed:
            mine = [r for r in self.records if r[0] >= mark]
        baseline = [latency for start, latency, _ in mine if start + latency < attack_start]
        during = [latency for start, latency, _ in mine if start < window_end and start + latency > attack_start]
        failures = [r for r in mine if r[2] != "OK"]
        return Served(_quantile(baseline, 0.5), during, failures, len(mine), attack_start)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._reader.join(5)


# -- checks gathered, then asserted together (one run shows every property an attack breaks) --

@dataclass
class Checks:
    what: str
    failed: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def expect(self, ok: bool, message: str) -> bool:
        if not ok:
            self.failed.append(message)
        return ok

    def note(self, message: str) -> None:
        self.notes.append(message)

    def served_within_bound(self, served: Served, latency: bool = True) -> None:
        self.note(served.summary())
        self.expect(not served.failures, f"{len(served.failures)} of the good client's calls failed")
        if latency:
            self.expect(len(served.during) >= 1, "no good call overlapped the attack")
            bound = served.bound_s()
            self.expect(served.during_p90_s < bound,
                        f"good client p90 {served.during_p90_s * 1e3:.0f} ms during the attack, bound {bound * 1e3:.0f} ms")
            self.expect(served.during_max_s < max(bound, 1.0),
                        f"a good call waited {served.during_max_s * 1e3:.0f} ms during the attack (a frozen loop)")

    def alive_and_serving(self, gw) -> None:
        if not self.expect(gw.proc.poll() is None, f"the daemon exited ({gw.proc.returncode})"):
            return
        try:
            serves(gw)
        except Exception as exc:  # noqa: BLE001 - reported with the rest
            self.failed.append(f"a fresh connection was not served: {exc!r}")

    def verify(self) -> None:
        observe(self.what, "; ".join(self.notes) + (" | FAILED: " + " / ".join(self.failed) if self.failed else ""))
        assert not self.failed, f"{self.what}: " + " / ".join(self.failed) + "\n(" + "; ".join(self.notes) + ")"


def observe(what: str, outcome: str) -> None:
    """Notes what an attack did, for the transport comparison table: printed, and appended as a JSON
    line to $ATTACK_OBSERVATIONS when set."""
    print(f"[attack] {what}: {outcome}")
    path = os.environ.get("ATTACK_OBSERVATIONS")
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"attack": what, "outcome": outcome}) + "\n")

