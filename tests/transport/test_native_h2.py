"""The native gRPC transport at the HTTP/2 level: a raw client (tests/transport/transport_helpers.RawH2)
against a real daemon sends well-formed, unusual and malformed frames and checks each frame answered."""

from __future__ import annotations

import shutil
import socket
import struct
import subprocess
import time

import pytest
from hyperframe.frame import (
    ContinuationFrame, DataFrame, GoAwayFrame, HeadersFrame, PingFrame, RstStreamFrame, SettingsFrame,
)
from transport_helpers import (
    INFER, LIVE, STREAM_INFER, RawH2, check_simple, echo_output, echo_request, grpc_frame, grpc_messages,
    metric_value, native_gw, simple_arrays, simple_request, slow_grpc_request,
)

PROTOCOL_ERROR, FLOW_CONTROL_ERROR, FRAME_SIZE_ERROR, CANCEL, COMPRESSION_ERROR = 0x1, 0x3, 0x6, 0x8, 0x9
SETTINGS_HEADER_TABLE_SIZE, SETTINGS_INITIAL_WINDOW_SIZE, SETTINGS_MAX_FRAME_SIZE = 0x1, 0x4, 0x5
OK, INVALID_ARGUMENT, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, UNIMPLEMENTED, INTERNAL = 0, 3, 4, 8, 12, 13

__all__ = ["native_gw"]  # the module-scoped daemon fixture


def _serves(gw) -> None:
    """A fresh connection still gets a correct answer."""
    a, b = simple_arrays(2, seed=11)
    with RawH2(gw.grpc_url) as client:
        client.unary(1, INFER, simple_request(a, b).SerializeToString())
        answer = client.response(1)
        assert answer.status == OK, answer.message
        check_simple(grpc_messages(bytes(answer.data))[0], a, b)


def _ok_simple(client: RawH2, sid: int, a, b) -> None:
    answer = client.response(sid)
    assert answer.status == OK, answer.message
    assert dict(answer.headers)[":status"] == "200"
    [message] = grpc_messages(bytes(answer.data))
    check_simple(message, a, b)


def test_server_settings_and_ping(native_gw):
    with RawH2(native_gw.grpc_url) as client:
        client.send_frame(PingFrame(0, opaque_data=b"12345678"))
        client.wait(lambda: client.pings)
        assert client.pings == [b"12345678"]
        client.wait(lambda: client.settings_acked)  # our SETTINGS were acknowledged
        assert client.server_settings[SETTINGS_INITIAL_WINDOW_SIZE] == 4 << 20
        assert client.server_settings[SETTINGS_MAX_FRAME_SIZE] == 1 << 20
        # A PING ACK from the client is not answered.
        client.send_frame(PingFrame(0, opaque_data=b"abcdefgh", flags={"ACK"}))
        client.send_frame(PingFrame(0, opaque_data=b"second!!"))
        client.wait(lambda: len(client.pings) == 2)
        assert client.pings[1] == b"second!!"


@pytest.mark.parametrize("garbage", [
    [b"GET / HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n\r\n"],  # longer than the preface
    [b"GET / HTTP/1.0\r\n\r\n"],  # shorter than the preface: must not wait for more
    [b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n"],  # same length, wrong bytes
    [b"PRI * HT", b"XP/1.1\r\n"],  # a good start, then wrong bytes in the next segment
])
def test_wrong_preface_is_refused_and_the_daemon_serves_on(native_gw, garbage):
    with RawH2(native_gw.grpc_url, preface=False, timeout_s=10) as client:
        for piece in garbage:
            client.send(piece)
            if piece is not garbage[-1]:
                client.quiet_for(0.05)
                assert not client.closed  # a good start alone is not refused
        client.wait_closed(timeout_s=10)
        # Before closing the server said why, at the HTTP/2 level (its SETTINGS come first).
        assert client.goaway is not None and client.goaway.error_code == PROTOCOL_ERROR
    _serves(native_gw)


def test_preface_in_pieces(native_gw):
    from transport_helpers import PREFACE

    a, b = simple_arrays()
    with RawH2(native_gw.grpc_url, preface=False) as client:
        for i in range(0, len(PREFACE), 5):
            client.send(PREFACE[i:i + 5])
        client.ack_settings = True
        client.send_frame(SettingsFrame(0))
        client.unary(1, INFER, simple_request(a, b).SerializeToString())
        _ok_simple(client, 1, a, b)


def test_unknown_method_is_a_trailers_only_unimplemented(native_gw):
    with RawH2(native_gw.grpc_url) as client:
        client.unary(1, "/inference.GRPCInferenceService/NoSuchMethod", b"")
        answer = client.response(1)
        assert answer.trailers_only
        fields = dict(answer.headers)
        assert fields[":status"] == "200" and fields["content-type"] == "application/grpc"
        assert answer.status == UNIMPLEMENTED and "NoSuchMethod" in answer.message
        assert not answer.data
        client.unary(3, "/no.Such/Service", b"")
        assert client.response(3).status == UNIMPLEMENTED
        # The connection serves on.
        a, b = simple_arrays()
        client.unary(5, INFER, simple_request(a, b).SerializeToString())
        _ok_simple(client, 5, a, b)


@pytest.mark.parametrize("method,content_type,code", [
    ("GET", "application/grpc", UNIMPLEMENTED),
    ("PUT", "application/grpc", UNIMPLEMENTED),
    ("POST", "application/json", INVALID_ARGUMENT),
    ("POST", "text/plain", INVALID_ARGUMENT),
])
def test_not_grpc_requests(native_gw, method, content_type, code):
    with RawH2(native_gw.grpc_url) as client:
        client.headers(1, client.request_block(LIVE, method=method, content_type=content_type))
        client.data(1, grpc_frame(b""), end_stream=True)
        answer = client.response(1)
        assert answer.trailers_only and answer.status == code
        # After answering, the server resets (NO_ERROR) or ignores what the client still sends.
        client.unary(3, LIVE, b"")
        assert client.response(3).status == OK


def test_header_block_split_across_continuation_frames(native_gw):
    a, b = simple_arrays(3, seed=1)
    with RawH2(native_gw.grpc_url) as client:
        for sid, padded in ((1, False), (3, True)):
            block = client.request_block(INFER, extra=[("x-route-key", "k" * 300), ("x-other", "v" * 200)])
            pieces = [block[:7], block[7:100], block[100:101], block[101:]]
            first = HeadersFrame(sid, pieces[0])
            if padded:  # padding and priority fields in the HEADERS frame too
                first.flags.add("PADDED")
                first.pad_length = 17
                first.flags.add("PRIORITY")
                first.depends_on, first.stream_weight = 0, 15
            client.send_frame(first)
            for piece in pieces[1:-1]:
                client.send_frame(ContinuationFrame(sid, piece))
            client.send_frame(ContinuationFrame(sid, pieces[-1], flags={"END_HEADERS"}))
            client.data(sid, grpc_frame(simple_request(a, b).SerializeToString()), end_stream=True)
            _ok_simple(client, sid, a, b)


def test_a_header_block_interrupted_by_another_frame_is_a_protocol_error(native_gw):
    with RawH2(native_gw.grpc_url) as client:
        block = client.request_block(LIVE)
        client.send_frame(HeadersFrame(1, block[:5]))
        client.send_frame(PingFrame(0, opaque_data=b"12345678"))
        client.wait_closed()
        assert client.goaway.error_code == PROTOCOL_ERROR
    _serves(native_gw)


@pytest.mark.parametrize("pad", [0, 1, 200, 255])
def test_padded_data_frames(native_gw, pad):
    a, b = simple_arrays(2, seed=pad)
    with RawH2(native_gw.grpc_url) as client:
        client.headers(1, client.request_block(INFER))
        client.data(1, grpc_frame(simple_request(a, b).SerializeToString()), end_stream=True, pad=pad)
        _ok_simple(client, 1, a, b)
        # A message split over padded frames, and a stream ended by an empty padded frame.
        body = grpc_frame(simple_request(b, a).SerializeToString())
        client.headers(3, client.request_block(INFER))
        client.data(3, body[:3], pad=pad)
        client.data(3, body[3:50], pad=pad)
        client.data(3, body[50:], pad=pad)
        client.data(3, b"", end_stream=True, pad=pad)
        _ok_simple(client, 3, b, a)


def test_a_message_split_across_many_data_frames(native_gw):
    payload = bytes(range(256)) * 400  # 100 KiB
    body = grpc_frame(echo_request(payload).SerializeToString())
    cuts = [1, 2, 3, 4, 5, 6, 17, 1000, 1001] + list(range(2000, len(body), 4093))
    with RawH2(native_gw.grpc_url) as client:
        client.headers(1, client.request_block(INFER))
        start = 0
        for cut in cuts:
            client.data(1, body[start:cut])
            start = cut
        client.data(1, body[start:], end_stream=True)
        answer = client.response(1)
        assert answer.status == OK, answer.message
        assert echo_output(grpc_messages(bytes(answer.data))[0]) == payload


def test_tiny_stream_window_holds_the_answer_back(native_gw):
    """The client allows 100 bytes per stream; every byte beyond that waits for its WINDOW_UPDATE."""
    window = 100
    payload = bytes(range(256)) * 12  # an answer of about 3 KiB
    with RawH2(native_gw.grpc_url, settings={SETTINGS_INITIAL_WINDOW_SIZE: window}, auto_window=False) as client:
        client.wait(lambda: client.settings_acked)
        client.unary(1, INFER, echo_request(payload).SerializeToString())
        state = client.wait(lambda: client.streams.get(1) if client.streams.get(1) and len(client.streams[1].data) == window else None)
        assert state.headers is not None and not state.ended
        # Nothing more comes until the window opens (bounded look).
        assert not [f for f in client.quiet_for(0.3) if isinstance(f, (DataFrame, HeadersFrame))]
        granted, updates = window, 0
        while not state.ended:
            assert len(state.data) <= granted, "the server sent beyond the stream window"
            if len(state.data) == granted:
                client.window_update(1, window)
                granted += window
                updates += 1
            client.read_frame()
        assert len(state.data) <= granted
        assert all(size <= window for size in state.data_frames)
        assert state.status == OK
        [message] = grpc_messages(bytes(state.data))
        assert echo_output(message) == payload
        assert updates >= len(state.data) // window - 1


def test_connection_window_holds_the_answer_back(native_gw):
    """A large stream window but the default 65535-byte connection window: the rest waits for it."""
    payload = bytes(range(256)) * 512  # an answer of about 128 KiB
    with RawH2(native_gw.grpc_url, settings={SETTINGS_INITIAL_WINDOW_SIZE: 1 << 20}, auto_window=False) as client:
        client.wait(lambda: client.settings_acked)
        client.unary(1, INFER, echo_request(payload).SerializeToString())
        state = client.wait(lambda: client.streams.get(1) if client.streams.get(1) and len(client.streams[1].data) == 65535 else None)
        assert not [f for f in client.quiet_for(0.3) if isinstance(f, (DataFrame, HeadersFrame))]
        assert len(state.data) == 65535 and not state.ended
        client.window_update(0, 1 << 20)
        client.response(1)
        assert state.status == OK
        assert echo_output(grpc_messages(bytes(state.data))[0]) == payload


def _slow_busy(gw) -> float:
    return metric_value(gw, "gateway_executor_busy_instances", model="slow")


def test_client_reset_mid_call(native_gw):
    a, b = simple_arrays()
    with RawH2(native_gw.grpc_url) as client:
        # Reset while the model runs: the run is abandoned (the instance is free again well before
        # the ~minute the request would take).
        client.unary(1, INFER, slow_grpc_request(20_000_000).SerializeToString())
        native_gw.wait_until(lambda: _slow_busy(native_gw) == 1, what="the slow call running")
        client.send_frame(RstStreamFrame(1, error_code=CANCEL))
        native_gw.wait_until(lambda: _slow_busy(native_gw) == 0, timeout=20, what="the reset call's run aborted")
        # Reset half-way through sending the request.
        body = grpc_frame(simple_request(a, b).SerializeToString())
        client.headers(3, client.request_block(INFER))
        client.data(3, body[:20])
        client.send_frame(RstStreamFrame(3, error_code=CANCEL))
        # Late frames for the reset stream are ignored, the connection serves on.
        client.data(3, body[20:], end_stream=True)
        client.unary(5, INFER, simple_request(a, b).SerializeToString())
        _ok_simple(client, 5, a, b)
        assert 3 not in client.streams  # nothing answered on the reset stream
    assert "Traceback" not in native_gw.log()


def test_malformed_hpack_is_a_compression_error_for_that_connection_only(native_gw):
    a, b = simple_arrays()
    with RawH2(native_gw.grpc_url) as bystander, RawH2(native_gw.grpc_url) as client:
        bystander.unary(1, INFER, simple_request(a, b).SerializeToString())
        _ok_simple(bystander, 1, a, b)
        client.headers(1, b"\xff\xff\xff\xff\xff\x7f")  # an index beyond both tables
        client.wait_closed()
        assert client.goaway is not None and client.goaway.error_code == COMPRESSION_ERROR
        # The other connection's HPACK state and streams are untouched.
        bystander.unary(3, INFER, simple_request(b, a).SerializeToString())
        _ok_simple(bystander, 3, b, a)


def test_two_requests_interleaved_on_one_connection(native_gw):
    a1, b1 = simple_arrays(1, seed=21)
    a2, b2 = simple_arrays(4, seed=22)
    body1 = grpc_frame(simple_request(a1, b1, request_id="one").SerializeToString())
    body2 = grpc_frame(simple_request(a2, b2, request_id="two").SerializeToString())
    with RawH2(native_gw.grpc_url) as client:
        client.headers(1, client.request_block(INFER))
        client.headers(3, client.request_block(INFER))
        client.data(3, body2[:40])
        client.data(1, body1[:10])
        client.data(3, body2[40:])
        client.data(1, body1[10:])
        client.data(3, b"", end_stream=True)
        client.data(1, b"", end_stream=True)
        _ok_simple(client, 1, a1, b1)
        _ok_simple(client, 3, a2, b2)


def test_streaming_call_with_several_messages_per_frame(native_gw):
    from tritonclient.grpc import service_pb2 as pb

    arrays = [simple_arrays(1, seed=s) for s in range(5)]
    bodies = [grpc_frame(simple_request(a, b, request_id=f"r{i}").SerializeToString()) for i, (a, b) in enumerate(arrays)]
    with RawH2(native_gw.grpc_url) as client:
        client.headers(1, client.request_block(STREAM_INFER))
        client.data(1, bodies[0] + bodies[1] + bodies[2][:9])  # two and a bit in one frame
        client.data(1, bodies[2][9:] + bodies[3])
        client.data(1, bodies[4], end_stream=True)
        answer = client.response(1)
        assert answer.status == OK, answer.message
        responses = [pb.ModelStreamInferResponse.FromString(m) for m in grpc_messages(bytes(answer.data))]
        by_id = {r.infer_response.id: r for r in responses}
        assert sorted(by_id) == [f"r{i}" for i in range(5)]
        for i, (a, b) in enumerate(arrays):
            assert by_id[f"r{i}"].error_message == ""
            check_simple(by_id[f"r{i}"].infer_response.SerializeToString(), a, b)


def test_request_message_errors(native_gw):
    with RawH2(native_gw.grpc_url) as client:
        # Two messages on a unary call.
        client.headers(1, client.request_block(LIVE))
        client.data(1, grpc_frame(b"") + grpc_frame(b""), end_stream=True)
        assert client.response(1).status == UNIMPLEMENTED
        # No message at all.
        client.headers(3, client.request_block(LIVE), end_stream=True)
        assert client.response(3).status == INTERNAL
        # The stream ends inside a message.
        client.headers(5, client.request_block(LIVE))
        client.data(5, grpc_frame(b"abcdef")[:7], end_stream=True)
        assert client.response(5).status == INTERNAL
        # A compressed message without grpc-encoding.
        client.headers(7, client.request_block(LIVE))
        client.data(7, grpc_frame(b"x", compressed=True), end_stream=True)
        assert client.response(7).status == INTERNAL
        # A message that is not the method's protobuf.
        client.headers(9, client.request_block(INFER))
        client.data(9, grpc_frame(b"\xff\xff\xff"), end_stream=True)
        assert client.response(9).status == INVALID_ARGUMENT
        # A message announced above max_request_bytes is refused from its prefix alone.
        client.headers(11, client.request_block(INFER))
        client.data(11, b"\x00" + struct.pack(">I", 64 << 20) + b"\x00" * 100)
        answer = client.response(11)
        assert answer.status == RESOURCE_EXHAUSTED and "larger than max" in answer.message
        # A malformed grpc-timeout.
        client.headers(13, client.request_block(LIVE, extra=[("grpc-timeout", "10 seconds")]))
        client.data(13, grpc_frame(b""), end_stream=True)
        assert client.response(13).status == INTERNAL
        # Metadata above max_header_bytes (8190).
        client.headers(15, client.request_block(LIVE, extra=[("x-big", "v" * 9000)]))
        client.data(15, grpc_frame(b""), end_stream=True)
        assert client.response(15).status == RESOURCE_EXHAUSTED
        # All on one connection, which still serves.
        client.unary(17, LIVE, b"")
        assert client.response(17).status == OK


@pytest.mark.parametrize("case", ["even_stream", "oversized_frame", "push_promise"])
def test_connection_errors(native_gw, case):
    with RawH2(native_gw.grpc_url) as client:
        client.wait(lambda: client.settings_acked)
        if case == "even_stream":
            client.headers(2, client.request_block(LIVE), end_stream=True)
            expected = PROTOCOL_ERROR
        elif case == "oversized_frame":
            client.send(struct.pack(">BHBBL", (1 << 20) + 1 >> 16, ((1 << 20) + 1) & 0xFFFF, 0, 0, 1))
            expected = FRAME_SIZE_ERROR
        else:
            client.send(struct.pack(">BHBBL", 0, 4, 5, 0x4, 1) + struct.pack(">L", 2))
            expected = PROTOCOL_ERROR
        client.wait_closed()
        assert isinstance(client.goaway, GoAwayFrame) and client.goaway.error_code == expected
    _serves(native_gw)


def test_client_goaway_closes_once_idle(native_gw):
    with RawH2(native_gw.grpc_url) as client:
        client.unary(1, INFER, slow_grpc_request(1000).SerializeToString())
        client.send_frame(GoAwayFrame(0, last_stream_id=0, error_code=0))
        answer = client.response(1)  # the call in progress is still answered
        assert answer.status == OK, answer.message
        client.wait_closed()


def test_unknown_frame_types_and_priority_are_ignored(native_gw):
    a, b = simple_arrays()
    with RawH2(native_gw.grpc_url) as client:
        client.send(struct.pack(">BHBBL", 0, 3, 0xEE, 0, 0) + b"xyz")  # an extension frame type
        client.send(struct.pack(">BHBBL", 0, 5, 2, 0, 1) + struct.pack(">LB", 0, 10))  # PRIORITY
        client.unary(1, INFER, simple_request(a, b).SerializeToString())
        _ok_simple(client, 1, a, b)


def test_settings_ack_and_window_update_frames_do_not_break_a_call(native_gw):
    a, b = simple_arrays()
    with RawH2(native_gw.grpc_url) as client:
        client.headers(1, client.request_block(INFER))
        client.send_frame(SettingsFrame(0, settings={SETTINGS_INITIAL_WINDOW_SIZE: 1 << 16}))
        client.window_update(0, 1000)
        client.window_update(1, 1000)
        client.data(1, grpc_frame(simple_request(a, b).SerializeToString()), end_stream=True)
        _ok_simple(client, 1, a, b)


def test_half_closed_socket_is_cleaned_up(native_gw):
    """A client that disappears mid-frame leaves the daemon serving."""
    host, port = native_gw.grpc_url.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + struct.pack(">BHBBL", 0, 100, 1, 4, 1) + b"\x83")
    sock.close()
    _serves(native_gw)


def test_a_stream_not_read_by_its_handler_holds_the_client_back(native_gw):
    """ModelStreamInfer stops reading while 256 of its requests are in progress; the transport
    then gives no more window back, so the client's next messages wait in the client."""
    stream_window = 4 << 20
    request_id = "x" * 16_000  # ~16 KiB messages: the window is spent after a few hundred
    req = slow_grpc_request(20_000_000)
    req.id = request_id
    message = grpc_frame(req.SerializeToString())
    with RawH2(native_gw.grpc_url) as client:
        client.wait(lambda: client.settings_acked)
        assert client.server_settings[SETTINGS_INITIAL_WINDOW_SIZE] == stream_window
        client.headers(1, client.request_block(STREAM_INFER))
        sent = 0
        while sent < 2000:
            if (sent + 1) * len(message) <= stream_window + client.window_updates.get(1, 0):
                client.data(1, message)
                sent += 1
                continue
            # Out of window: wait (bounded) for the daemon to give some back.
            before = client.window_updates.get(1, 0)
            client.quiet_for(0.5)
            if client.window_updates.get(1, 0) == before:
                break
        assert sent < 2000, "the daemon kept giving window back to a stream its handler does not read"
        # 256 taken by the handler and a window's worth waiting in the transport, give or take the
        # 1 MiB batches in which window is given back.
        assert 256 + (stream_window - (1 << 20)) // len(message) - 1 <= sent <= 256 + (stream_window + (1 << 20)) // len(message) + 1
        # Other streams of the connection are not held back.
        client.unary(3, LIVE, b"")
        assert client.response(3).status == OK
        client.send_frame(RstStreamFrame(1, error_code=CANCEL))
        native_gw.wait_until(lambda: _slow_busy(native_gw) == 0 and metric_value(native_gw, "gateway_queue_depth", model="slow") == 0,
                             timeout=30, what="the reset stream's requests abandoned")


def _echo_inferences(gw) -> int:
    status, doc = gw.http_json("GET", "/v2/models/echo/stats")
    assert status == 200, doc
    return sum(int(v["inference_count"]) for v in doc["model_stats"])


def test_a_stream_whose_answers_are_not_read_is_not_fed_more_requests(native_gw):
    """Once 1 MiB of a stream's answers waits for its client, its next requests wait in the transport
    (and hold back the client's window) instead of running and queueing ever more answers: what a
    stream holds is bounded by its requests in flight (256) and the high-water mark."""
    from tritonclient.grpc import service_pb2 as pb

    payload = bytes(range(256)) * 256  # 64 KiB answers: 20 of them pass the 1 MiB mark
    sent = 40  # 2.6 MiB of requests: all fit the 4 MiB stream window
    bodies = [grpc_frame(echo_request(payload, request_id=f"e{i}").SerializeToString()) for i in range(sent)]
    before = _echo_inferences(native_gw)
    with RawH2(native_gw.grpc_url, settings={SETTINGS_INITIAL_WINDOW_SIZE: 0}, auto_window=False) as client:
        client.wait(lambda: client.settings_acked)
        client.headers(1, client.request_block(STREAM_INFER))
        for body in bodies[:20]:
            client.data(1, body)
        native_gw.wait_until(lambda: _echo_inferences(native_gw) - before == 20, what="the first answers queued")
        for body in bodies[20:]:
            client.data(1, body)
        client.quiet_for(0.5)  # time enough for them to run, were they handed over
        assert _echo_inferences(native_gw) - before == 20
        # The client reads: the rest run, every request is answered once, and the call ends OK.
        client.window_update(0, 64 << 20)
        client.window_update(1, 64 << 20)
        client.data(1, b"", end_stream=True)
        answer = client.response(1, timeout_s=30)
        assert answer.status == OK, answer.message
        responses = [pb.ModelStreamInferResponse.FromString(m) for m in grpc_messages(bytes(answer.data))]
        assert sorted(r.infer_response.id for r in responses) == sorted(f"e{i}" for i in range(sent))
        assert all(r.error_message == "" and r.infer_response.raw_output_contents[0] == payload for r in responses)
    _serves(native_gw)


@pytest.mark.parametrize("end_on_headers", [True, False])
def test_a_stream_without_requests_ends_ok(native_gw, end_on_headers):
    with RawH2(native_gw.grpc_url) as client:
        client.headers(1, client.request_block(STREAM_INFER), end_stream=end_on_headers)
        if not end_on_headers:
            client.data(1, b"", end_stream=True)
        answer = client.response(1)
        assert answer.status == OK, answer.message
        assert not answer.data


def test_a_streams_deadline_ends_it_and_abandons_its_runs(native_gw):
    a, b = simple_arrays()
    with RawH2(native_gw.grpc_url) as client:
        started = time.monotonic()
        client.headers(1, client.request_block(STREAM_INFER, extra=[("grpc-timeout", "500m")]))
        client.data(1, grpc_frame(simple_request(a, b, request_id="quick").SerializeToString()))
        client.data(1, grpc_frame(slow_grpc_request(20_000_000).SerializeToString()))
        answer = client.response(1, timeout_s=10)
        assert answer.status == DEADLINE_EXCEEDED
        assert 0.4 <= time.monotonic() - started < 5
        # The quick request was answered before the deadline ended the call.
        from tritonclient.grpc import service_pb2 as pb
        [quick] = [pb.ModelStreamInferResponse.FromString(m) for m in grpc_messages(bytes(answer.data))]
        assert quick.infer_response.id == "quick" and quick.error_message == ""
    native_gw.wait_until(lambda: _slow_busy(native_gw) == 0, timeout=20, what="the slow run abandoned")
    _serves(native_gw)


def test_server_side_deadline_from_grpc_timeout(native_gw):
    """The daemon ends the call itself when grpc-timeout passes (the raw client keeps no deadline)."""
    with RawH2(native_gw.grpc_url) as client:
        started = time.monotonic()
        client.headers(1, client.request_block(INFER, extra=[("grpc-timeout", "300m")]))
        client.data(1, grpc_frame(slow_grpc_request(20_000_000).SerializeToString()), end_stream=True)
        answer = client.response(1, timeout_s=10)
        assert answer.status == DEADLINE_EXCEEDED
        assert 0.25 <= time.monotonic() - started < 5
        native_gw.wait_until(lambda: _slow_busy(native_gw) == 0, timeout=20, what="the run abandoned")
        # A deadline that has room: answered OK.
        client.headers(3, client.request_block(INFER, extra=[("grpc-timeout", "20S")]))
        client.data(3, grpc_frame(slow_grpc_request(10).SerializeToString()), end_stream=True)
        assert client.response(3).status == OK


def test_a_larger_initial_window_releases_a_blocked_answer(native_gw):
    """SETTINGS_INITIAL_WINDOW_SIZE raised mid-call applies to the open stream (RFC 9113 6.9.2)."""
    payload = bytes(range(256)) * 40
    with RawH2(native_gw.grpc_url, settings={SETTINGS_INITIAL_WINDOW_SIZE: 100}, auto_window=False) as client:
        client.wait(lambda: client.settings_acked)
        client.unary(1, INFER, echo_request(payload).SerializeToString())
        client.wait(lambda: client.streams.get(1) is not None and len(client.streams[1].data) == 100)
        client.send_frame(SettingsFrame(0, settings={SETTINGS_INITIAL_WINDOW_SIZE: 1 << 20}))
        answer = client.response(1)
        assert answer.status == OK
        assert echo_output(grpc_messages(bytes(answer.data))[0]) == payload


def test_a_streaming_answer_blocked_on_the_client_window_then_reset(native_gw):
    """The handler waits while its answers cannot be sent; a reset ends it cleanly."""
    from tritonclient.grpc import service_pb2 as pb

    payload = bytes(range(256)) * 400  # 100 KiB answers
    body = grpc_frame(echo_request(payload).SerializeToString())
    with RawH2(native_gw.grpc_url, settings={SETTINGS_INITIAL_WINDOW_SIZE: 0}, auto_window=False) as client:
        client.wait(lambda: client.settings_acked)
        client.headers(1, client.request_block(STREAM_INFER))
        for _ in range(30):  # 3 MiB of answers: above the 1 MiB the transport queues per stream
            client.data(1, body)
        client.wait(lambda: client.streams.get(1) is not None and client.streams[1].headers is not None)
        assert not client.streams[1].data  # a zero window: nothing sent
        # Open the window for exactly one answer: it arrives, whole.
        client.window_update(1, len(body) + 200)
        client.window_update(0, 1 << 24)
        client.wait(lambda: len(client.streams[1].data) >= 5 and len(client.streams[1].data) >= 5 + int.from_bytes(client.streams[1].data[1:5], "big"))
        size = int.from_bytes(client.streams[1].data[1:5], "big")
        first = pb.ModelStreamInferResponse.FromString(bytes(client.streams[1].data[5:5 + size]))
        assert first.error_message == "" and first.infer_response.raw_output_contents[0] == payload
        client.send_frame(RstStreamFrame(1, error_code=CANCEL))
        client.unary(3, LIVE, b"")
        client.window_update(3, 100)  # every stream of this connection starts with a zero window
        assert client.response(3).status == OK
    _serves(native_gw)
    assert "Traceback" not in native_gw.log()


@pytest.mark.parametrize("table_size", [0, 1000])
def test_a_smaller_header_table_is_signalled_in_the_next_header_block(native_gw, table_size):
    """RFC 7541 4.2: after the client lowers SETTINGS_HEADER_TABLE_SIZE the server's next header block
    starts with a dynamic table size update (strict decoders such as nghttp2 insist)."""
    a, b = simple_arrays()
    with RawH2(native_gw.grpc_url, settings={SETTINGS_HEADER_TABLE_SIZE: table_size}) as client:
        client.wait(lambda: client.settings_acked)
        client.unary(1, INFER, simple_request(a, b).SerializeToString())  # the one-write answer path
        _ok_simple(client, 1, a, b)
        client.unary(3, "/no.Such/Method", b"")  # a trailers-only answer
        assert client.response(3).status == UNIMPLEMENTED
        blocks = [block for _, block in client.header_blocks]
        assert blocks[0][0] & 0xE0 == 0x20, "no table size update in the first block"
        assert all(block[0] & 0xE0 != 0x20 for block in blocks[1:]), "signalled once is enough"
        assert client.decoder.header_table_size == table_size
        # Lowered again: signalled again (the same size again: nothing to signal).
        lower = table_size // 2
        client.send_frame(SettingsFrame(0, settings={SETTINGS_HEADER_TABLE_SIZE: lower}))
        client.unary(5, INFER, simple_request(a, b).SerializeToString())
        _ok_simple(client, 5, a, b)
        first_of_5 = next(block for sid, block in client.header_blocks if sid == 5)
        assert (first_of_5[0] & 0xE0 == 0x20) == (lower < table_size)
        assert client.decoder.header_table_size == lower


@pytest.mark.skipif(shutil.which("nghttp") is None, reason="nghttp (nghttp2's client) is not installed")
@pytest.mark.parametrize("table_size", [4096, 0])
def test_nghttp2_client(native_gw, tmp_path, table_size):
    """An independent HTTP/2 implementation (nghttp2, strict about HPACK) gets a gRPC answer."""
    body = tmp_path / "live.bin"
    body.write_bytes(grpc_frame(b""))
    out = subprocess.run(
        ["nghttp", "-v", f"--header-table-size={table_size}", "-H", ":method: POST", "-H", "content-type: application/grpc",
         "-H", "te: trailers", "-d", str(body), f"http://{native_gw.grpc_url}{LIVE}"],
        capture_output=True, text=True, timeout=30,
    )
    log = out.stdout + out.stderr
    assert out.returncode == 0, log
    assert "grpc-status: 0" in log and "COMPRESSION_ERROR" not in log, log


def test_window_updates_and_pings_that_follow_answers_are_never_throttled(native_gw):
    """grpc's C++ client (perf_analyzer) returns window and sends BDP pings after the answers it reads,
    ~2.4 control frames per frame of answer when streaming: at thousands of answers a second that
    is far above the control budget's refill (1,000/s), and a connection was closed with
    ENHANCE_YOUR_CALM after ~3 s. Here: 64 calls at a time, then six control frames per answer,
    23,040 in all, faster than a budget without credit for answers would allow."""
    a, b = simple_arrays()
    body = simple_request(a, b).SerializeToString()
    sid = 1
    with RawH2(native_gw.grpc_url) as client:
        for _ in range(60):
            sids = list(range(sid, sid + 128, 2))
            sid += 128
            for s in sids:
                client.unary(s, INFER, body)
            for s in sids:
                _ok_simple(client, s, a, b)
            for s in sids:
                for _ in range(4):
                    client.window_update(0, 1)
                client.window_update(s, 1)  # on a closed stream: allowed, ignored
                client.send_frame(PingFrame(0, opaque_data=b"bdpprobe"))
            for s in sids:
                client.streams.pop(s, None)
        client.unary(sid, INFER, body)
        _ok_simple(client, sid, a, b)
