"""Hostile HTTP/2 clients against the gRPC front door (issue 16).

Each attack runs a raw-frame attacker (its own sockets) beside a well-behaved grpcio client on its own
connection (tests/transport/good_client.py, in its own process) and checks, on the native transport:
(a) the attacker gets the answer the transport's budgets and RFC 9113 fix (GOAWAY / RST code, or a close;
    README "gRPC transport" lists the budgets) in bounded time;
(b) the good client's calls all succeed, with a latency during the attack within a small multiple of its
    own baseline (p90 < max(10 x baseline p50, 200 ms), no call over 1 s: a loop frozen for a second fails);
(c) for the memory attacks, the daemon's RSS grows by less than a stated bound;
(d) the daemon is alive and serves a fresh connection afterwards.
Every test also runs against `--grpc-transport grpcio`, where only (d) and "the good client's calls
succeed" are asserted; what grpcio answers the attacker is noted (printed, and appended to
$ATTACK_OBSERVATIONS when set) for the transport comparison. Attacks grpcio is known not to bound are
skipped there with the reason.

Every attack is bounded in count and time and stops by itself; every wait is bounded.
"""

from __future__ import annotations

import select
import struct
import time
from dataclasses import dataclass

import grpc
import pytest
from attack_helpers import (
    ACK, CANCEL, COMPRESSION_ERROR, CONTINUATION, DATA, END_HEADERS, END_STREAM, ENHANCE_YOUR_CALM, FLOW_CONTROL_ERROR,
    FRAME_SIZE_ERROR, GOAWAY, HEADERS, MIB, NO_ERROR, OK, PADDED, PING, PRIORITY, PROTOCOL_ERROR, PUSH_PROMISE,
    REFUSED_STREAM, RESOURCE_EXHAUSTED, RST_STREAM, SETTINGS, SETTINGS_ENABLE_PUSH, SETTINGS_INITIAL_WINDOW_SIZE,
    SETTINGS_MAX_FRAME_SIZE, UNIMPLEMENTED, WINDOW_UPDATE, Checks, GoodClient, RssWatch, await_close, code_name, frame,
    frame_head, hpack_indexed, hpack_literal, hpack_literal_indexed_name, live, ping, pump, raw_socket, request_fields,
    rst, scan_goaway, send_chunks, settings_frame, start_attack_gateway, tile_request, wait_consumed, window_update,
)
from attack_helpers import AUTHORITY_NAME, GRPC_FIELDS, METHOD_POST, PATH_NAME, SCHEME_HTTP
from transport_helpers import (
    INFER, LIVE, PREFACE, STREAM_INFER, RawH2, grpc_frame, metric_value, slow_grpc_request,
    stub,
)

TRANSPORTS = ["native", "grpcio"]
SETTINGS_MAX_CONCURRENT_STREAMS = 0x3
HEADER_TIMEOUT_S, IDLE_TIMEOUT_S = 1.0, 2.0
SLACK_S = 3.0  # a loaded 2-core host: timers fire late, not seconds late


@dataclass
class Target:
    transport: str
    gw: object
    good: GoodClient | None = None

    @property
    def native(self) -> bool:
        return self.transport == "native"

    def checks(self, attack: str) -> Checks:
        return Checks(f"{self.transport}: {attack}")

    def close_wait_s(self, seconds: float) -> float:
        """How long to wait for the daemon to close an attacker: grpcio, only watched, gets less."""
        return seconds if self.native else min(seconds, 2.0)


@pytest.fixture(scope="module", params=TRANSPORTS)
def target(request, tmp_path_factory):
    """One daemon per transport for the module, and a good client calling it all along."""
    gw = start_attack_gateway(tmp_path_factory, request.param)
    good = GoodClient(gw.grpc_url)
    yield Target(request.param, gw, good)
    good.close()
    gw.terminate()


@pytest.fixture(scope="module", params=TRANSPORTS)
def timeouts_target(request, tmp_path_factory):
    """Small connection timeouts: header_timeout_s 1, idle_timeout_s 2."""
    gw = start_attack_gateway(tmp_path_factory, request.param, "--header-timeout-s", str(HEADER_TIMEOUT_S),
                                 "--idle-timeout-s", str(IDLE_TIMEOUT_S))
    yield Target(request.param, gw)
    gw.terminate()


def _attacker_note(checks: Checks, written: int, why: str, closed: bool, code, seconds: float) -> None:
    checks.note(f"attacker wrote {written} B ({why}); connection {'closed' if closed else 'open'}, "
                f"GOAWAY {code_name(code)}, {seconds:.2f} s after the attack began")


def _expect_goaway(checks: Checks, t: Target, closed: bool, code, expected: int, within_s: float, seconds: float) -> None:
    if t.native and checks.expect(closed and code == expected, f"expected GOAWAY({code_name(expected)}) and a close, "
                                                               f"got GOAWAY {code_name(code)}, closed={closed}"):
        checks.expect(seconds <= within_s, f"the answer took {seconds:.2f} s (bound {within_s} s)")


def _finish(checks: Checks, t: Target, served, rss: RssWatch | None = None, rss_bound: int | None = None) -> None:
    checks.served_within_bound(served, latency=t.native)
    if rss is not None:
        checks.note(f"daemon RSS +{rss.growth / MIB:.1f} MiB (peak over a {rss.baseline / MIB:.0f} MiB baseline)")
        if t.native and rss_bound is not None:
            checks.expect(rss.growth < rss_bound,
                          f"daemon RSS grew {rss.growth / MIB:.1f} MiB, bound {rss_bound / MIB:.0f} MiB")
    checks.alive_and_serving(t.gw)
    checks.verify()


# -- 1. rapid reset (CVE-2023-44487) --

def test_rapid_reset(target, request):
    t = target
    if not t.native:
        # Seen on every run here: calls of the good client, on another connection, end CANCELLED within
        # a second of the flood (grpcio 1.x's own mitigation does not send GOAWAY either).
        request.applymarker(pytest.mark.xfail(reason="grpcio cancels other connections' calls during a rapid-reset flood",
                                              strict=False))
    checks = t.checks("rapid reset: 20,000 HEADERS+RST_STREAM pairs")
    mark = t.good.begin()
    with RssWatch(t.gw.proc.pid) as rss, RawH2(t.gw.grpc_url, timeout_s=15) as raw:
        raw.wait(lambda: raw.settings_acked)
        first, again = raw.request_block(INFER), raw.request_block(INFER)  # the second: table references only
        batches, sid = [], 1
        for _ in range(10):
            pairs = []
            for _ in range(2000):
                pairs.append(frame(HEADERS, END_HEADERS, sid, first if sid == 1 else again) + rst(sid))
                sid += 2
            batches.append(b"".join(pairs))
        start = time.monotonic()
        written, why = send_chunks(raw.sock, batches, start + 15)
        closed, code, _ = await_close(raw, t.close_wait_s(10))
        end = time.monotonic()
    _attacker_note(checks, written, why, closed, code, end - start)
    _expect_goaway(checks, t, closed, code, ENHANCE_YOUR_CALM, 5, end - start)
    _finish(checks, t, t.good.served(mark, start, end), rss)


# -- 2. reset calls release their slots --

def test_reset_calls_release_their_slots(target, tmp_path_factory):
    """max_concurrent_requests 8; sixteen HEADERS+DATA+RST_STREAM triples in one write, four times:
    afterwards eight concurrent calls all succeed (no slot leaked by a call reset before it ran)."""
    t = target
    checks = t.checks("slot leak: 4 x 16 HEADERS+DATA+RST triples, max_concurrent_requests 8")
    gw = start_attack_gateway(tmp_path_factory, t.transport, "--max-concurrent-requests", "8")
    try:
        with RawH2(gw.grpc_url, timeout_s=15) as raw:
            raw.wait(lambda: raw.settings_acked)
            body = grpc_frame(slow_grpc_request(2_000_000).SerializeToString())
            first, again = raw.request_block(INFER), raw.request_block(INFER)
            sid = 1
            for round_ in range(4):
                triples = []
                for _ in range(16):
                    triples.append(frame(HEADERS, END_HEADERS, sid, first if sid == 1 else again)
                                   + frame(DATA, END_STREAM, sid, body) + rst(sid))
                    sid += 2
                raw.send(b"".join(triples) + ping(struct.pack(">Q", round_)))
                raw.wait(lambda: len(raw.pings) > round_)  # the daemon has read the round
        gw.wait_until(lambda: metric_value(gw, "gateway_executor_busy_instances", model="slow") == 0
                      and metric_value(gw, "gateway_queue_depth", model="slow") == 0,
                      timeout=30, what="the reset calls' runs abandoned")
        with grpc.insecure_channel(gw.grpc_url) as channel:
            calls = [stub(channel).ModelInfer.future(slow_grpc_request(100_000), timeout=60) for _ in range(8)]
            codes = []
            for call in calls:
                try:
                    call.result()
                    codes.append("OK")
                except grpc.RpcError as err:
                    codes.append(f"{err.code().name}: {err.details()}")
        summary = {c: codes.count(c) for c in set(codes)}
        checks.note(f"8 concurrent calls afterwards: {summary}")
        checks.expect(codes == ["OK"] * 8, f"calls refused after the resets (a leaked slot): {summary}")
        checks.alive_and_serving(gw)
        checks.verify()
    finally:
        gw.terminate()


# -- 3. CONTINUATION floods --

def _big_literal_block(size: int) -> bytes:
    """The start of a request head whose last field is a literal `size` bytes long."""
    return request_fields(LIVE.encode()) + hpack_literal(b"x-big", b"v" * size)


@pytest.mark.parametrize("case", ["seventeen_empty", "endless_empty", "compressed_cap", "decoded_cap"])
def test_continuation_flood(target, case):
    t = target
    checks = t.checks(f"CONTINUATION flood: {case}")
    mark = t.good.begin()
    with RssWatch(t.gw.proc.pid) as rss, RawH2(t.gw.grpc_url, timeout_s=15) as raw:
        raw.wait(lambda: raw.settings_acked)
        if case == "seventeen_empty":
            # A request split over HEADERS and 16 CONTINUATIONs is served (16 is the budget) ...
            block = request_fields(LIVE.encode())
            cuts = [len(block) * i // 17 for i in range(18)]
            pieces = [block[cuts[i]:cuts[i + 1]] for i in range(17)]
            raw.send(frame(HEADERS, 0, 1, pieces[0])
                     + b"".join(frame(CONTINUATION, 0, 1, p) for p in pieces[1:-1])
                     + frame(CONTINUATION, END_HEADERS, 1, pieces[-1]) + frame(DATA, END_STREAM, 1, grpc_frame(b"")))
            try:
                status = raw.response(1, timeout_s=10).status
            except (TimeoutError, ConnectionError) as exc:
                status = repr(exc)
            checks.note(f"HEADERS + 16 CONTINUATIONs: grpc-status {status}")
            if t.native:
                checks.expect(status == OK, f"a head in HEADERS + 16 CONTINUATIONs was not served: {status}")
            # ... the 17th CONTINUATION of a block is refused, even with nothing in it.
            attack = [frame(HEADERS, 0, 3, request_fields(LIVE.encode())[:4])] + [frame(CONTINUATION, 0, 3)] * 17
        elif case == "endless_empty":
            attack = [frame(HEADERS, 0, 1, request_fields(LIVE.encode())[:4])] + [frame(CONTINUATION, 0, 1) * 10_000] * 10
        elif case == "compressed_cap":
            # max(64 KiB, 4 x max_header_bytes 8190) of compressed header block, in 16 KiB frames.
            block = _big_literal_block(80 << 10)
            pieces = [block[i:i + (16 << 10)] for i in range(0, len(block), 16 << 10)]
            attack = [frame(HEADERS, 0, 1, pieces[0])] + [frame(CONTINUATION, 0, 1, p) for p in pieces[1:]]
        else:
            # A 4 KiB field entered into the HPACK table once, then referenced 20 times: a 4 KiB block
            # that decodes to 80 KiB.
            block = (request_fields(LIVE.encode()) + hpack_literal(b"x-big", b"v" * 4000, index=True)
                     + hpack_indexed(62) * 20)
            attack = [frame(HEADERS, END_HEADERS | END_STREAM, 1, block)]
        start = time.monotonic()
        written, why = send_chunks(raw.sock, attack, start + 15)
        closed, code, _ = await_close(raw, t.close_wait_s(10))
        end = time.monotonic()
    _attacker_note(checks, written, why, closed, code, end - start)
    _expect_goaway(checks, t, closed, code, ENHANCE_YOUR_CALM, 5, end - start)
    _finish(checks, t, t.good.served(mark, start, end), rss, 32 * MIB)


# -- 4. error echo amplification --

def test_error_echo_is_cut(target):
    """A 3,991-byte :path entered into the HPACK table once, then named by one byte in 4,000 requests:
    each answer is UNIMPLEMENTED with a grpc-message of at most 1024 bytes."""
    t = target
    checks = t.checks("error echo: 4,000 unknown methods naming a 3,991-byte :path from the HPACK table")
    path = b"/" + b"a" * 3990
    tail = hpack_literal_indexed_name(AUTHORITY_NAME, b"gateway") + GRPC_FIELDS
    first = METHOD_POST + SCHEME_HTTP + hpack_literal_indexed_name(PATH_NAME, path, index=True) + tail
    again = METHOD_POST + SCHEME_HTTP + hpack_indexed(62) + tail  # 4028 of the 4096 table bytes: index 62
    mark = t.good.begin()
    statuses: dict[int, int | None] = {}
    longest = 0
    received = 0
    with RawH2(t.gw.grpc_url, timeout_s=30) as raw:
        raw.wait(lambda: raw.settings_acked)
        start = time.monotonic()
        deadline = start + 40
        sids = list(range(1, 8001, 2))
        try:
            for i in range(0, len(sids), 500):  # a batch, then its answers: no deadlock on full buffers
                batch = sids[i:i + 500]
                raw.send(b"".join(frame(HEADERS, END_HEADERS | END_STREAM, s, first if s == 1 else again) for s in batch))
                for s in batch:
                    answer = raw.response(s, timeout_s=max(0.1, deadline - time.monotonic()))
                    statuses[s] = answer.status
                    longest = max(longest, len(answer.message.encode("latin-1", "replace")))
        except (TimeoutError, ConnectionError, OSError) as exc:
            checks.note(f"stopped after {len(statuses)} answers: {exc!r}")
        end = time.monotonic()
        received = sum(len(b) for _, b in raw.header_blocks)
    codes = {}
    for status in statuses.values():
        codes[status] = codes.get(status, 0) + 1
    checks.note(f"{len(statuses)} answers in {end - start:.2f} s, statuses {codes}, longest grpc-message "
                f"{longest} B, {received / MIB:.1f} MiB of header blocks received for ~{len(sids) * len(again) / 1024:.0f} KiB sent")
    if t.native:
        checks.expect(codes == {UNIMPLEMENTED: 4000}, f"not 4000 UNIMPLEMENTED answers: {codes}")
        checks.expect(longest <= 1024, f"a grpc-message of {longest} bytes (at most 1024)")
        checks.expect(end - start < 20, f"4000 answers took {end - start:.1f} s")
    _finish(checks, t, t.good.served(mark, start, end))


# -- 5. PING / SETTINGS / other "work" frame floods --

def _work_frames(kind: str, count: int) -> tuple[bytes, list[bytes]]:
    """(what opens the scene, batches of `count` frames of one kind)."""
    opening = b""
    if kind == "ping":
        one = ping()
    elif kind == "settings":
        one = settings_frame([])
    elif kind == "window_update":
        one = window_update(0, 1)
    elif kind == "priority":
        one = frame(PRIORITY, 0, 1, struct.pack(">LB", 0, 15))
    elif kind == "unknown_type":
        one = frame(0xEE, 0, 0, b"xyz")
    else:  # empty DATA frames without END_STREAM on an open streaming call
        opening = frame(HEADERS, END_HEADERS, 1, request_fields(STREAM_INFER.encode()))
        one = frame(DATA, 0, 1)
    per_batch = 5000
    return opening, [one * per_batch for _ in range(count // per_batch)]


@pytest.mark.parametrize("kind", ["ping", "settings", "window_update", "priority", "unknown_type", "empty_data"])
def test_work_frame_flood(target, kind):
    """30,000 frames the daemon must do something for (answer, apply, or look at): beyond the
    budget (burst 10,000, 1,000/s) the connection is told to calm down."""
    t = target
    checks = t.checks(f"flood of 30,000 {kind} frames (a client that reads)")
    mark = t.good.begin()
    opening, batches = _work_frames(kind, 30_000)
    with RawH2(t.gw.grpc_url, timeout_s=15) as raw:
        raw.wait(lambda: raw.settings_acked)
        start = time.monotonic()
        written, why = send_chunks(raw.sock, [opening, *batches] if opening else batches, start + 15)
        closed, code, _ = await_close(raw, t.close_wait_s(8))
        end = time.monotonic()
    _attacker_note(checks, written, why, closed, code, end - start)
    _expect_goaway(checks, t, closed, code, ENHANCE_YOUR_CALM, 5, end - start)
    _finish(checks, t, t.good.served(mark, start, end))


@pytest.mark.parametrize("kind,count", [("ping", 2_000_000), ("settings", 3_000_000)])
def test_control_flood_from_a_client_that_never_reads(target, kind, count):
    """A client with a tiny receive buffer that never reads sends PINGs (or SETTINGS) by the million:
    the daemon may close it or stop reading it, but never holds megabytes of ACKs for it."""
    t = target
    checks = t.checks(f"{count:,} {kind} frames from a client that never reads")
    mark = t.good.begin()
    one = ping() if kind == "ping" else settings_frame([])
    per_chunk = MIB // len(one)
    chunks = [PREFACE + settings_frame([])] + [one * per_chunk for _ in range(count // per_chunk)]
    sock = raw_socket(t.gw.grpc_url, rcvbuf=4096)
    try:
        with RssWatch(t.gw.proc.pid) as rss:
            start = time.monotonic()
            written, why = send_chunks(sock, chunks, start + (20 if t.native else 8))
            consumed = wait_consumed(sock, timeout_s=20)
            end = time.monotonic()
        closed, code = scan_goaway(sock, timeout_s=3)
    finally:
        sock.close()
    checks.note(f"attacker wrote {written / MIB:.1f} MiB ({why}), daemon then {consumed}, in {end - start:.1f} s; "
                f"afterwards: connection {'closed' if closed else 'open'}, GOAWAY {code_name(code)}")
    _finish(checks, t, t.good.served(mark, start, end), rss, 16 * MIB)


# -- 6. SETTINGS with a huge number of entries --

def test_settings_with_87k_entries(target):
    """One 512 KiB SETTINGS frame of INITIAL_WINDOW_SIZE entries while 1,000 streams are open: refused
    at once (more than 32 entries), not applied entry by entry to every stream."""
    t = target
    checks = t.checks("SETTINGS of 87,381 INITIAL_WINDOW_SIZE entries with 1,000 streams open")
    entries = [(SETTINGS_INITIAL_WINDOW_SIZE, 65535 if i % 2 else 0) for i in range(87_381)]
    mark = t.good.begin()
    with RawH2(t.gw.grpc_url, timeout_s=30) as raw:
        raw.wait(lambda: raw.settings_acked)
        first, again = raw.request_block(INFER), raw.request_block(INFER)
        raw.send(b"".join(frame(HEADERS, END_HEADERS, s, first if s == 1 else again) for s in range(1, 2001, 2))
                 + ping(b"opened!!"))
        raw.wait(lambda: raw.pings)  # the streams are open
        big = settings_frame(entries)
        checks.note(f"the SETTINGS frame is {len(big) / 1024:.0f} KiB")
        start = time.monotonic()
        raw.send(big + ping(b"after!!!"))
        answered = None
        deadline = start + 10
        while not raw.closed and time.monotonic() < deadline:
            try:
                raw.read_frame(deadline - time.monotonic())
            except (TimeoutError, OSError):
                break
            if answered is None and b"after!!!" in raw.pings:
                answered = time.monotonic() - start
                if not t.native:
                    break
        end = time.monotonic()
        closed, code = raw.closed, raw.goaway.error_code if raw.goaway else None
    checks.note(f"PING after it answered {'never' if answered is None else f'after {answered:.2f} s'}")
    _attacker_note(checks, len(big), "done", closed, code, end - start)
    _expect_goaway(checks, t, closed, code, ENHANCE_YOUR_CALM, 2, end - start)
    _finish(checks, t, t.good.served(mark, start, end))


# -- 7. memory held for clients that do not read or do not finish --

def test_zero_window_answers_are_bounded(target):
    """8 connections x 1,000 streams with SETTINGS_INITIAL_WINDOW_SIZE 0, each asking (in 256 bytes) for a
    16 KiB answer and never opening a window: a connection holds at most its advertised
    SETTINGS_MAX_CONCURRENT_STREAMS answers (far under the 64 MiB of answers one connection may hold);
    streams beyond it get RST(REFUSED_STREAM) (or RESOURCE_EXHAUSTED / RST(CANCEL))."""
    t = target
    if not t.native:
        pytest.skip("grpcio holds every answer a zero-window client cannot take: unbounded by design")
    checks = t.checks("zero window: 8 connections x 1,000 streams of 16 KiB answers never read")
    body = grpc_frame(tile_request(bytes(range(256))).SerializeToString())
    mark = t.good.begin()
    outcomes: dict[str, int] = {}
    per_connection: list[dict[str, int]] = []
    with RssWatch(t.gw.proc.pid) as rss:
        raws = [RawH2(t.gw.grpc_url, settings={SETTINGS_INITIAL_WINDOW_SIZE: 0}, auto_window=False, timeout_s=30)
                for _ in range(8)]
        try:
            for raw in raws:
                raw.wait(lambda: raw.settings_acked)
            streams = min(1000, raws[0].server_settings.get(SETTINGS_MAX_CONCURRENT_STREAMS, 1000))
            sids = list(range(1, 2 * streams, 2))
            start = time.monotonic()
            deadline = start + 40
            for raw in raws:
                first, again = raw.request_block(INFER), raw.request_block(INFER)
                for i in range(0, len(sids), 100):
                    batch = sids[i:i + 100]
                    try:
                        raw.send(b"".join(frame(HEADERS, END_HEADERS, s, first if s == 1 else again)
                                          + frame(DATA, END_STREAM, s, body) for s in batch))
                        # Each batch answered (or refused) before the next: the model's queue never fills,
                        # what is refused is refused by the transport.
                        raw.wait(lambda raw=raw, batch=batch: raw.closed or all(
                            s in raw.streams and (raw.streams[s].headers is not None or raw.streams[s].ended) for s in batch),
                            timeout_s=max(0.1, deadline - time.monotonic()))
                    except (OSError, TimeoutError, ConnectionError):
                        break
            end = time.monotonic()
            rss.sample()
            for raw in raws:
                seen: dict[str, int] = {}
                for s in sids:
                    st = raw.streams.get(s)
                    if st is None:
                        kind = "closed_by_goaway" if raw.closed else "no_answer"
                    elif st.reset is not None:
                        kind = f"rst_{code_name(st.reset)}"
                    elif st.trailers_only:
                        kind = "queue_full" if "maximum queue size" in st.message else f"status_{st.status}"
                    elif st.ended:
                        kind = f"answered_{st.status}"
                    else:
                        kind = "held"
                    seen[kind] = seen.get(kind, 0) + 1
                if raw.closed:
                    seen["goaway_" + code_name(raw.goaway.error_code if raw.goaway else None)] = 1
                per_connection.append(seen)
                for k, v in seen.items():
                    outcomes[k] = outcomes.get(k, 0) + v
        finally:
            for raw in raws:
                raw.close()
    checks.note(f"{len(raws)} x {len(sids)} streams in {end - start:.1f} s: {outcomes}")
    for i, seen in enumerate(per_connection):
        refused = sum(v for k, v in seen.items() if k in (f"rst_{code_name(REFUSED_STREAM)}", f"rst_{code_name(CANCEL)}",
                                                          f"status_{RESOURCE_EXHAUSTED}", "goaway_ENHANCE_YOUR_CALM"))
        held = sum(v for k, v in seen.items() if k == "held")
        checks.expect(held <= streams, f"connection {i}: more answers held than the {streams} streams it may open: {seen}")
        checks.expect(refused + held + sum(v for k, v in seen.items() if k.startswith("answered")) >= streams,
                      f"connection {i}: streams neither held, answered nor refused: {seen}")
        checks.expect(seen.get("no_answer", 0) == 0, f"connection {i}: streams left without any answer: {seen}")
    _finish(checks, t, t.good.served(mark, start, end), rss, 64 * MIB)


def test_unfinished_request_messages_are_bounded(target):
    """64 streams on one connection each send 3 MiB of a declared 15 MiB message and stop: at most
    max(max_message_bytes, 32 MiB) waits per connection; streams beyond it get RESOURCE_EXHAUSTED."""
    t = target
    if not t.native:
        pytest.skip("grpcio buffers unfinished messages up to the message limit on every stream: unbounded per connection")
    checks = t.checks("unfinished messages: 64 streams x 3 MiB of a declared 15 MiB message")
    declared, per_stream, chunk = 15 * MIB, 3 * MIB, 256 << 10
    prefix = b"\x00" + struct.pack(">I", declared)
    filler = bytes(chunk)
    mark = t.good.begin()
    with RssWatch(t.gw.proc.pid) as rss, RawH2(t.gw.grpc_url, timeout_s=30) as raw:
        raw.wait(lambda: raw.settings_acked)
        stream_window = raw.server_settings.get(SETTINGS_INITIAL_WINDOW_SIZE, 65535)
        sids = list(range(1, 129, 2))
        first, again = raw.request_block(INFER), raw.request_block(INFER)
        raw.send(b"".join(frame(HEADERS, END_HEADERS, s, first if s == 1 else again) for s in sids))
        sent = dict.fromkeys(sids, 0)
        sent_total = 0
        start = time.monotonic()
        deadline = start + 25
        active = set(sids)
        stalled = False
        while active and time.monotonic() < deadline and not raw.closed:
            progressed = False
            for s in sids:
                if s not in active:
                    continue
                st = raw.streams.get(s)
                if (st is not None and (st.ended or st.reset is not None)) or sent[s] >= per_stream:
                    active.discard(s)
                    continue
                room = min(65535 + raw.window_updates.get(0, 0) - sent_total,
                           stream_window + raw.window_updates.get(s, 0) - sent[s], per_stream - sent[s], chunk)
                if room <= 0:
                    continue
                payload = (prefix + filler)[:room] if sent[s] == 0 else filler[:room]
                try:
                    raw.send(frame(DATA, 0, s, payload))
                except OSError:
                    raw.closed = True
                    break
                sent[s] += room
                sent_total += room
                progressed = True
                pump(raw)
            if not progressed and active and not raw.closed:
                # No window anywhere: wait (bounded) for the daemon to give some back.
                readable, _, _ = select.select([raw.sock], [], [], 2.0)
                if not readable:
                    stalled = True
                    break
                pump(raw)
        rss.sample()
        end = time.monotonic()
        pump(raw)
        exhausted = sum(1 for s in sids if raw.streams.get(s) is not None and raw.streams[s].status == RESOURCE_EXHAUSTED)
        others = {s: (raw.streams[s].status, raw.streams[s].reset) for s in sids
                  if raw.streams.get(s) is not None and raw.streams[s].status != RESOURCE_EXHAUSTED}
    checks.note(f"sent {sent_total / MIB:.0f} MiB in {end - start:.1f} s ({'stalled on flow control' if stalled else 'not stalled'}); "
                f"{exhausted} streams RESOURCE_EXHAUSTED, other answers {others}")
    checks.expect(exhausted > 0, "no stream was answered RESOURCE_EXHAUSTED beyond the 32 MiB per-connection budget")
    _finish(checks, t, t.good.served(mark, start, end), rss, 64 * MIB)


# -- 8. RFC 9113 connection and stream errors --

def _open(raw: RawH2, sid: int = 1) -> None:
    """A call waiting for its request message."""
    raw.headers(sid, raw.request_block(INFER))


def _reuse(raw: RawH2, sid: int, then: int) -> None:
    assert live(raw, sid) == OK
    raw.send(frame(HEADERS, END_HEADERS | END_STREAM, then, request_fields(LIVE.encode())))


def _split(raw: RawH2, other: bytes) -> None:
    block = request_fields(LIVE.encode())
    raw.send(frame(HEADERS, 0, 1, block[:5]) + other)


def _big_frame(raw: RawH2) -> None:
    limit = raw.server_settings.get(SETTINGS_MAX_FRAME_SIZE, 16384)
    _open(raw)
    raw.send(frame_head(DATA, 0, 1, limit + 1) + bytes(limit + 1))


RFC_CASES = {
    # name: (what the client does after preface + SETTINGS, ("goaway" | "rst", code))
    "data_on_stream_0": (lambda r: r.send(frame(DATA, 0, 0, b"x")), ("goaway", PROTOCOL_ERROR)),
    "data_on_an_idle_stream": (lambda r: r.send(frame(DATA, 0, 5, b"x")), ("goaway", PROTOCOL_ERROR)),
    "headers_on_stream_0": (lambda r: r.send(frame(HEADERS, END_HEADERS | END_STREAM, 0, request_fields(LIVE.encode()))),
                            ("goaway", PROTOCOL_ERROR)),
    "headers_on_an_even_stream": (lambda r: r.send(frame(HEADERS, END_HEADERS | END_STREAM, 2, request_fields(LIVE.encode()))),
                                  ("goaway", PROTOCOL_ERROR)),
    "headers_reusing_a_stream_id": (lambda r: _reuse(r, 1, 1), ("goaway", PROTOCOL_ERROR)),
    "headers_with_a_decreasing_stream_id": (lambda r: _reuse(r, 5, 3), ("goaway", PROTOCOL_ERROR)),
    "rst_stream_on_stream_0": (lambda r: r.send(rst(0)), ("goaway", PROTOCOL_ERROR)),
    "rst_stream_on_an_idle_stream": (lambda r: r.send(rst(7)), ("goaway", PROTOCOL_ERROR)),
    "rst_stream_of_3_bytes": (lambda r: (_open(r), r.send(frame(RST_STREAM, 0, 1, b"\0\0\x08"))), ("goaway", FRAME_SIZE_ERROR)),
    "continuation_on_stream_0": (lambda r: r.send(frame(CONTINUATION, END_HEADERS, 0)), ("goaway", PROTOCOL_ERROR)),
    "continuation_without_a_header_block": (lambda r: r.send(frame(CONTINUATION, END_HEADERS, 1, request_fields(LIVE.encode()))),
                                            ("goaway", PROTOCOL_ERROR)),
    "continuation_on_another_stream": (lambda r: _split(r, frame(CONTINUATION, END_HEADERS, 3, b"")), ("goaway", PROTOCOL_ERROR)),
    "data_inside_a_header_block": (lambda r: _split(r, frame(DATA, 0, 1, b"x")), ("goaway", PROTOCOL_ERROR)),
    "window_update_of_3_bytes": (lambda r: r.send(frame(WINDOW_UPDATE, 0, 0, b"\0\0\x01")), ("goaway", FRAME_SIZE_ERROR)),
    "window_update_0_on_stream_0": (lambda r: r.send(window_update(0, 0)), ("goaway", PROTOCOL_ERROR)),
    "window_update_overflowing_the_connection": (lambda r: r.send(window_update(0, (1 << 31) - 1)), ("goaway", FLOW_CONTROL_ERROR)),
    "padded_empty_data": (lambda r: (_open(r), r.send(frame(DATA, PADDED, 1))), ("goaway", PROTOCOL_ERROR)),
    "data_pad_length_beyond_payload": (lambda r: (_open(r), r.send(frame(DATA, PADDED, 1, b"\x0aabc"))), ("goaway", PROTOCOL_ERROR)),
    "data_pad_length_equal_to_payload": (lambda r: (_open(r), r.send(frame(DATA, PADDED, 1, b"\x04abc"))), ("goaway", PROTOCOL_ERROR)),
    "headers_pad_length_beyond_payload": (lambda r: r.send(frame(HEADERS, PADDED | END_HEADERS, 1, b"\xc8" + request_fields(LIVE.encode()))),
                                          ("goaway", PROTOCOL_ERROR)),
    "ping_of_7_bytes": (lambda r: r.send(frame(PING, 0, 0, b"1234567")), ("goaway", FRAME_SIZE_ERROR)),
    "ping_on_a_stream": (lambda r: r.send(frame(PING, 0, 1, b"12345678")), ("goaway", PROTOCOL_ERROR)),
    "settings_of_7_bytes": (lambda r: r.send(frame(SETTINGS, 0, 0, b"\0" * 7)), ("goaway", FRAME_SIZE_ERROR)),
    "settings_ack_with_a_payload": (lambda r: r.send(settings_frame([(SETTINGS_INITIAL_WINDOW_SIZE, 100)], flags=ACK)),
                                    ("goaway", FRAME_SIZE_ERROR)),
    "settings_on_a_stream": (lambda r: r.send(settings_frame([], sid=1)), ("goaway", PROTOCOL_ERROR)),
    "max_frame_size_1000": (lambda r: r.send(settings_frame([(SETTINGS_MAX_FRAME_SIZE, 1000)])), ("goaway", PROTOCOL_ERROR)),
    "max_frame_size_2^24": (lambda r: r.send(settings_frame([(SETTINGS_MAX_FRAME_SIZE, 1 << 24)])), ("goaway", PROTOCOL_ERROR)),
    "enable_push_2": (lambda r: r.send(settings_frame([(SETTINGS_ENABLE_PUSH, 2)])), ("goaway", PROTOCOL_ERROR)),
    "initial_window_above_2^31-1": (lambda r: r.send(settings_frame([(SETTINGS_INITIAL_WINDOW_SIZE, 1 << 31)])),
                                    ("goaway", FLOW_CONTROL_ERROR)),
    "priority_on_stream_0": (lambda r: r.send(frame(PRIORITY, 0, 0, struct.pack(">LB", 1, 15))), ("goaway", PROTOCOL_ERROR)),
    "goaway_on_a_stream": (lambda r: r.send(frame(GOAWAY, 0, 1, struct.pack(">LL", 0, 0))), ("goaway", PROTOCOL_ERROR)),
    "push_promise": (lambda r: r.send(frame(PUSH_PROMISE, END_HEADERS, 1, struct.pack(">L", 2) + request_fields(LIVE.encode()))),
                     ("goaway", PROTOCOL_ERROR)),
    "frame_above_max_frame_size": (_big_frame, ("goaway", FRAME_SIZE_ERROR)),
    "undecodable_hpack": (lambda r: r.send(frame(HEADERS, END_HEADERS, 1, b"\xff\xff\xff\xff\xff\x7f")), ("goaway", COMPRESSION_ERROR)),
    # stream errors: that stream is reset, the connection serves on
    "window_update_0_on_a_stream": (lambda r: (_open(r), r.send(window_update(1, 0))), ("rst", PROTOCOL_ERROR)),
    "window_update_overflowing_a_stream": (lambda r: (_open(r), r.send(window_update(1, (1 << 31) - 1))), ("rst", FLOW_CONTROL_ERROR)),
    "priority_of_4_bytes": (lambda r: (_open(r), r.send(frame(PRIORITY, 0, 1, b"\0\0\0\0"))), ("rst", FRAME_SIZE_ERROR)),
}


@pytest.mark.parametrize("case", ["first_frame_not_settings", *RFC_CASES])
def test_rfc9113_errors(target, case):
    t = target
    checks = t.checks(f"RFC 9113: {case}")
    lines_before = len(t.gw.lines)
    if case == "first_frame_not_settings":
        raw = RawH2(t.gw.grpc_url, preface=False, timeout_s=10)
        raw.send(PREFACE + ping())
        kind, expected = "goaway", PROTOCOL_ERROR
    else:
        raw = RawH2(t.gw.grpc_url, timeout_s=10)
        act, (kind, expected) = RFC_CASES[case]
        raw.wait(lambda: raw.settings_acked)
        try:
            act(raw)
        except (BrokenPipeError, ConnectionResetError):
            checks.note("closed while the client was still writing")
    with raw:
        if kind == "goaway":
            closed, code, seconds = await_close(raw, t.close_wait_s(5))
            checks.note(f"connection {'closed' if closed else 'open'}, GOAWAY {code_name(code)}"
                        + (f"; the daemon wrote a malformed frame ({raw.malformed})" if getattr(raw, "malformed", None) else ""))
            _expect_goaway(checks, t, closed, code, expected, 5, seconds)
        else:
            try:
                raw.wait(lambda: raw.streams.get(1) is not None and raw.streams[1].ended, timeout_s=t.close_wait_s(5))
            except (TimeoutError, ConnectionError):
                pass
            st = raw.streams.get(1)
            reset = st.reset if st is not None else None
            checks.note(f"stream 1: RST {code_name(reset)}, status {st.status if st else None}; connection "
                        f"{'closed, GOAWAY ' + code_name(raw.goaway.error_code if raw.goaway else None) if raw.closed else 'open'}")
            if t.native:
                checks.expect(reset == expected, f"expected RST({code_name(expected)}) on stream 1, got {code_name(reset)}")
                if not raw.closed:
                    try:
                        status = live(raw, 3)
                    except (TimeoutError, ConnectionError) as exc:
                        status = repr(exc)
                    checks.expect(status == OK, f"the connection does not serve on after the stream error: {status}")
                else:
                    checks.failed.append("the connection was closed for a stream error")
    checks.alive_and_serving(t.gw)
    log = "".join(t.gw.lines[lines_before:])
    checks.expect("Traceback" not in log, "a traceback in the daemon log:\n" + log[-2000:])
    checks.verify()


# -- 9. connection timeouts (header_timeout_s 1, idle_timeout_s 2) --

def _expect_closed_within(checks: Checks, t: Target, closed: bool, seconds: float, bound: float) -> None:
    if t.native and checks.expect(closed, f"still open after {seconds:.1f} s (bound {bound:.1f} s)"):
        checks.expect(seconds <= bound, f"closed after {seconds:.1f} s (bound {bound:.1f} s)")


def test_silent_connection_is_closed(timeouts_target):
    t = timeouts_target
    checks = t.checks("timeouts: a TCP connection that sends nothing")
    sock = raw_socket(t.gw.grpc_url)
    start = time.monotonic()
    try:
        closed, code = scan_goaway(sock, HEADER_TIMEOUT_S + SLACK_S + 2)
    finally:
        sock.close()
    seconds = time.monotonic() - start
    checks.note(f"{'closed' if closed else 'open'} after {seconds:.1f} s, GOAWAY {code_name(code)}")
    _expect_closed_within(checks, t, closed, seconds, HEADER_TIMEOUT_S + SLACK_S)
    checks.alive_and_serving(t.gw)
    checks.verify()


@pytest.mark.parametrize("what", ["magic_only", "magic_and_settings"])
def test_preface_only_connection_is_closed(timeouts_target, what):
    t = timeouts_target
    checks = t.checks(f"timeouts: a connection that sends only the preface ({what})")
    raw = RawH2(t.gw.grpc_url, preface=False, timeout_s=10)
    raw.send(PREFACE if what == "magic_only" else PREFACE + settings_frame([]))
    raw.ack_settings = what != "magic_only"
    with raw:
        closed, code, seconds = await_close(raw, HEADER_TIMEOUT_S + SLACK_S + 2)
    checks.note(f"{'closed' if closed else 'open'} after {seconds:.1f} s, GOAWAY {code_name(code)}")
    _expect_closed_within(checks, t, closed, seconds, HEADER_TIMEOUT_S + SLACK_S)
    if t.native:
        allowed = (NO_ERROR,) if what == "magic_and_settings" else (NO_ERROR, None)
        checks.expect(code in allowed, f"GOAWAY {code_name(code)}; expected {[code_name(c) for c in allowed]}")
    checks.alive_and_serving(t.gw)
    checks.verify()


def test_slowloris_preface_is_closed(timeouts_target):
    """The preface and SETTINGS, one byte every 0.2 s (6.6 s in all): closed after header_timeout_s."""
    t = timeouts_target
    checks = t.checks("timeouts: slowloris, the preface 1 byte per 0.2 s")
    sock = raw_socket(t.gw.grpc_url)
    payload = PREFACE + settings_frame([])
    start = time.monotonic()
    closed = False
    sent = 0
    try:
        for i in range(len(payload)):
            readable, _, _ = select.select([sock], [], [], 0.2)  # the pacing of the attack, and a look for the close
            if readable:
                try:
                    if not sock.recv(65536):
                        closed = True
                        break
                except ConnectionResetError:
                    closed = True
                    break
            try:
                sock.sendall(payload[i:i + 1])
                sent += 1
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
        if not closed:
            closed, _ = scan_goaway(sock, max(0.1, start + HEADER_TIMEOUT_S + SLACK_S + 1 - time.monotonic()))
    finally:
        sock.close()
    seconds = time.monotonic() - start
    checks.note(f"{'closed' if closed else 'open'} after {seconds:.1f} s and {sent} of {len(payload)} bytes")
    _expect_closed_within(checks, t, closed, seconds, HEADER_TIMEOUT_S + SLACK_S)
    checks.alive_and_serving(t.gw)
    checks.verify()


def test_idle_connection_gets_goaway_then_close(timeouts_target):
    t = timeouts_target
    checks = t.checks("timeouts: idle after a completed call")
    with RawH2(t.gw.grpc_url, timeout_s=10) as raw:
        assert live(raw, 1) == OK
        closed, code, seconds = await_close(raw, IDLE_TIMEOUT_S + SLACK_S + 2)
    checks.note(f"{'closed' if closed else 'open'} after {seconds:.1f} s idle, GOAWAY {code_name(code)}")
    _expect_closed_within(checks, t, closed, seconds, IDLE_TIMEOUT_S + SLACK_S)
    if t.native:
        checks.expect(code == NO_ERROR, f"GOAWAY {code_name(code)} before the close; expected NO_ERROR")
        checks.expect(seconds >= IDLE_TIMEOUT_S * 0.75, f"closed after {seconds:.1f} s, before idle_timeout_s")
    checks.alive_and_serving(t.gw)
    checks.verify()


def test_a_call_in_progress_is_not_idle(timeouts_target):
    t = timeouts_target
    checks = t.checks("timeouts: a call running longer than idle_timeout_s")
    with RawH2(t.gw.grpc_url, timeout_s=10) as raw:
        assert live(raw, 1) == OK
        raw.unary(3, INFER, slow_grpc_request(20_000_000).SerializeToString())
        frames = raw.quiet_for(IDLE_TIMEOUT_S + 1.5)  # a bounded look for what must not come
        checks.note(f"after {IDLE_TIMEOUT_S + 1.5:.1f} s with a call running: {'closed' if raw.closed else 'open'}, "
                    f"frames {[type(f).__name__ for f in frames]}")
        if t.native:
            checks.expect(not raw.closed and raw.goaway is None, "the connection was closed with a call in progress")
        if not raw.closed:
            raw.send(rst(3))
    t.gw.wait_until(lambda: metric_value(t.gw, "gateway_executor_busy_instances", model="slow") == 0, timeout=30,
                    what="the reset call's run abandoned")
    checks.alive_and_serving(t.gw)
    checks.verify()


def test_unfinished_header_block_after_a_call_is_closed(timeouts_target):
    t = timeouts_target
    checks = t.checks("timeouts: a header block left unfinished after a call")
    with RawH2(t.gw.grpc_url, timeout_s=10) as raw:
        assert live(raw, 1) == OK
        raw.send(frame(HEADERS, 0, 3, request_fields(LIVE.encode())[:6]))
        closed, code, seconds = await_close(raw, HEADER_TIMEOUT_S + SLACK_S + 2)
    checks.note(f"{'closed' if closed else 'open'} after {seconds:.1f} s, GOAWAY {code_name(code)}")
    _expect_closed_within(checks, t, closed, seconds, HEADER_TIMEOUT_S + SLACK_S)
    if t.native:
        checks.expect(code == PROTOCOL_ERROR, f"GOAWAY {code_name(code)}; expected PROTOCOL_ERROR")
    checks.alive_and_serving(t.gw)
    checks.verify()


def test_many_unfinished_header_blocks(timeouts_target):
    """150 connections each holding an unfinished 15 KiB header block: each is closed within
    header_timeout_s (+ slack) and the daemon's memory barely moves."""
    t = timeouts_target
    checks = t.checks("timeouts: 150 connections holding an unfinished 15 KiB header block")
    block = _big_literal_block(15 << 10)
    closed_after: dict[int, float] = {}
    with RssWatch(t.gw.proc.pid) as rss:
        raws = []
        try:
            for _ in range(150):
                raw = RawH2(t.gw.grpc_url, timeout_s=10)
                raws.append(raw)
                raw.wait(lambda raw=raw: raw.settings_acked)  # the daemon's SETTINGS acknowledged before the block opens
                raw.send(frame(HEADERS, 0, 1, block))
            start = time.monotonic()
            deadline = start + HEADER_TIMEOUT_S + SLACK_S + 2
            while len(closed_after) < len(raws) and time.monotonic() < deadline:
                open_ = [r for r in raws if id(r) not in closed_after]
                readable, _, _ = select.select([r.sock for r in open_], [], [], max(0.0, deadline - time.monotonic()))
                for raw in open_:
                    if raw.sock in readable:
                        pump(raw)
                        if raw.closed:
                            closed_after[id(raw)] = time.monotonic() - start
            codes: dict[str, int] = {}
            for raw in raws:
                name = code_name(raw.goaway.error_code if raw.goaway else None)
                codes[name] = codes.get(name, 0) + 1
        finally:
            for raw in raws:
                raw.close()
    slowest = max(closed_after.values(), default=0.0)
    checks.note(f"{len(closed_after)} of {len(raws)} closed, the last after {slowest:.1f} s; GOAWAY codes {codes}; "
                f"daemon RSS +{rss.growth / MIB:.1f} MiB")
    if t.native:
        checks.expect(len(closed_after) == len(raws), f"{len(raws) - len(closed_after)} connections still open")
        checks.expect(slowest <= HEADER_TIMEOUT_S + SLACK_S, f"the last closed after {slowest:.1f} s")
        checks.expect(set(codes) <= {"NO_ERROR", "PROTOCOL_ERROR"}, f"GOAWAY codes {codes}")
        checks.expect(rss.growth < 32 * MIB, f"daemon RSS grew {rss.growth / MIB:.1f} MiB (bound 32 MiB)")
    checks.alive_and_serving(t.gw)
    checks.verify()
