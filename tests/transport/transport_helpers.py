"""Pieces shared by the native gRPC transport tests: a raw HTTP/2 client, gRPC framing, requests.

The raw client writes frames itself (hyperframe) and keeps its own HPACK tables, so a test can
send what no well-behaved library would (a wrong preface, a split header block, padding, bad
HPACK, a tiny window) and see each frame the daemon answers with.
"""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

import hpack
import numpy as np
import pytest
from hyperframe.frame import (
    ContinuationFrame, DataFrame, Frame, GoAwayFrame, HeadersFrame, PingFrame, RstStreamFrame, SettingsFrame,
    WindowUpdateFrame,
)

import make_models
from reliability_helpers import metric_value, slow_grpc_request, write_slow_model  # noqa: F401

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SERVICE = "/inference.GRPCInferenceService/"
INFER = SERVICE + "ModelInfer"
STREAM_INFER = SERVICE + "ModelStreamInfer"
LIVE = SERVICE + "ServerLive"
WAIT_S = 30.0


def grpc_frame(body: bytes, compressed: bool = False) -> bytes:
    """One length-prefixed gRPC message."""
    return bytes((1 if compressed else 0,)) + struct.pack(">I", len(body)) + body


def grpc_messages(data: bytes) -> list[bytes]:
    out, i = [], 0
    while i < len(data):
        assert data[i] == 0, "the daemon answers uncompressed"
        (size,) = struct.unpack_from(">I", data, i + 1)
        out.append(data[i + 5:i + 5 + size])
        i += 5 + size
    assert i == len(data), "trailing bytes after the last message"
    return out


@dataclass
class StreamState:
    headers: list[tuple[str, str]] | None = None
    trailers: list[tuple[str, str]] | None = None
    data: bytearray = field(default_factory=bytearray)
    data_frames: list[int] = field(default_factory=list)  # sizes of the DATA frames received
    reset: int | None = None  # RST_STREAM error code
    ended: bool = False

    @property
    def status(self) -> int | None:
        """grpc-status: from the trailers, or from a trailers-only answer."""
        for block in (self.trailers, self.headers):
            for k, v in block or ():
                if k == "grpc-status":
                    return int(v)
        return None

    @property
    def message(self) -> str:
        for block in (self.trailers, self.headers):
            for k, v in block or ():
                if k == "grpc-message":
                    return v
        return ""

    @property
    def trailers_only(self) -> bool:
        return self.trailers is None and self.headers is not None and any(k == "grpc-status" for k, _ in self.headers)


class RawH2:
    """A blocking HTTP/2 client over one socket, frame by frame."""

    def __init__(self, url: str, settings: dict[int, int] | None = None, preface: bool = True,
                 auto_window: bool = True, timeout_s: float = WAIT_S) -> None:
        host, port = url.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=timeout_s)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.timeout_s = timeout_s
        self.buf = bytearray()
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()
        self.auto_window = auto_window
        self.ack_settings = preface  # a client that sent no preface says nothing more on its own
        self.streams: dict[int, StreamState] = {}
        self.server_settings: dict[int, int] = {}
        self.settings_acked = False
        self.pings: list[bytes] = []
        self.header_blocks: list[tuple[int, bytes]] = []  # (stream id, HPACK block) as received
        self.window_updates: dict[int, int] = {}  # stream id (0: the connection) -> increments received
        self.goaway: GoAwayFrame | None = None
        self.closed = False
        self._header_sid = 0
        self._header_block = bytearray()
        self._header_end_stream = False
        if preface:
            self.send(PREFACE + SettingsFrame(0, settings=settings or {}).serialize())

    def close(self) -> None:
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- out --
    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_frame(self, frame: Frame) -> None:
        self.send(frame.serialize())

    def _reply(self, frame: Frame) -> None:
        """What the client sends on its own (ACKs, window updates): the daemon may have closed already."""
        try:
            self.send(frame.serialize())
        except (BrokenPipeError, ConnectionResetError):
            pass

    def request_block(self, path: str, method: str = "POST", content_type: str = "application/grpc",
                      extra: list[tuple[str, str]] = ()) -> bytes:
        return self.encoder.encode([
            (":method", method), (":scheme", "http"), (":path", path), (":authority", "gateway"),
            ("content-type", content_type), ("te", "trailers"), *extra,
        ])

    def headers(self, sid: int, block: bytes, end_stream: bool = False) -> None:
        flags = {"END_HEADERS"} | ({"END_STREAM"} if end_stream else set())
        self.send_frame(HeadersFrame(sid, block, flags=flags))

    def data(self, sid: int, payload: bytes, end_stream: bool = False, pad: int = 0) -> None:
        flags = set()
        if end_stream:
            flags.add("END_STREAM")
        frame = DataFrame(sid, payload, flags=flags)
        if pad:
            frame.flags.add("PADDED")
            frame.pad_length = pad
        self.send_frame(frame)

    def unary(self, sid: int, path: str, body: bytes, extra: list[tuple[str, str]] = ()) -> None:
        """A whole unary call: HEADERS, then one DATA frame ending the stream."""
        self.headers(sid, self.request_block(path, extra=extra))
        self.data(sid, grpc_frame(body), end_stream=True)

    def window_update(self, sid: int, increment: int) -> None:
        self.send_frame(WindowUpdateFrame(sid, window_increment=increment))

    # -- in --
    def read_frame(self, timeout_s: float | None = None) -> Frame | None:
        """The next frame (already applied to the stream states), None once the daemon closed."""
        deadline = time.monotonic() + (self.timeout_s if timeout_s is None else timeout_s)
        while True:
            if len(self.buf) >= 9:
                frame, length = Frame.parse_frame_header(memoryview(bytes(self.buf[:9])))
                if len(self.buf) >= 9 + length:
                    body = bytes(self.buf[9:9 + length])
                    del self.buf[:9 + length]
                    frame.parse_body(memoryview(body))
                    self._apply(frame)
                    return frame
            if self.closed:
                return None
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no frame from the daemon in time")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(1 << 20)
            except socket.timeout:
                raise TimeoutError("no frame from the daemon in time") from None
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                self.closed = True
                continue
            self.buf += chunk

    def quiet_for(self, seconds: float) -> list[Frame]:
        """Frames arriving within `seconds` (a bounded look for what should not come)."""
        frames = []
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            try:
                frame = self.read_frame(left)
            except TimeoutError:
                break
            if frame is None:
                break
            frames.append(frame)
        return frames

    def _apply(self, frame: Frame) -> None:
        if isinstance(frame, SettingsFrame):
            if "ACK" in frame.flags:
                self.settings_acked = True
            else:
                self.server_settings.update(frame.settings)
                if self.ack_settings:
                    self._reply(SettingsFrame(0, flags={"ACK"}))
        elif isinstance(frame, PingFrame):
            if "ACK" in frame.flags:
                self.pings.append(bytes(frame.opaque_data))
        elif isinstance(frame, GoAwayFrame):
            self.goaway = frame
        elif isinstance(frame, WindowUpdateFrame):
            self.window_updates[frame.stream_id] = self.window_updates.get(frame.stream_id, 0) + frame.window_increment
        elif isinstance(frame, RstStreamFrame):
            state = self.streams.setdefault(frame.stream_id, StreamState())
            state.reset = frame.error_code
            state.ended = True
        elif isinstance(frame, DataFrame):
            state = self.streams.setdefault(frame.stream_id, StreamState())
            state.data += frame.data
            state.data_frames.append(len(frame.data))
            if "END_STREAM" in frame.flags:
                state.ended = True
            if self.auto_window and frame.flow_controlled_length:
                self._reply(WindowUpdateFrame(0, window_increment=frame.flow_controlled_length))
                if not state.ended:
                    self._reply(WindowUpdateFrame(frame.stream_id, window_increment=frame.flow_controlled_length))
        elif isinstance(frame, (HeadersFrame, ContinuationFrame)):
            if isinstance(frame, HeadersFrame):
                self._header_sid = frame.stream_id
                self._header_block = bytearray(frame.data)
                self._header_end_stream = "END_STREAM" in frame.flags
            else:
                assert frame.stream_id == self._header_sid, "CONTINUATION on another stream"
                self._header_block += frame.data
            if "END_HEADERS" in frame.flags:
                self.header_blocks.append((self._header_sid, bytes(self._header_block)))
                fields = [(k, v) for k, v in self.decoder.decode(bytes(self._header_block))]
                state = self.streams.setdefault(self._header_sid, StreamState())
                if state.headers is None:
                    state.headers = fields
                else:
                    state.trailers = fields
                if self._header_end_stream:
                    state.ended = True

    def wait(self, predicate, timeout_s: float | None = None):
        """Reads frames until predicate() is true; bounded."""
        deadline = time.monotonic() + (self.timeout_s if timeout_s is None else timeout_s)
        while not (value := predicate()):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("condition not met in time")
            if self.read_frame(left) is None and not predicate():
                raise ConnectionError("the daemon closed the connection")
        return value

    def response(self, sid: int, timeout_s: float | None = None) -> StreamState:
        self.wait(lambda: sid in self.streams and self.streams[sid].ended, timeout_s)
        return self.streams[sid]

    def wait_closed(self, timeout_s: float | None = None) -> None:
        deadline = time.monotonic() + (self.timeout_s if timeout_s is None else timeout_s)
        while not self.closed:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the daemon kept the connection open")
            self.read_frame(left)


# -- KServe v2 requests (tritonclient's protobuf stubs; the test process never imports gateway._proto) --

def simple_request(a: np.ndarray, b: np.ndarray, request_id: str = ""):
    from tritonclient.grpc import service_pb2 as pb

    req = pb.ModelInferRequest(model_name="simple", id=request_id)
    for name, arr in (("INPUT0", a), ("INPUT1", b)):
        req.inputs.add(name=name, datatype="INT32", shape=list(arr.shape))
        req.raw_input_contents.append(np.ascontiguousarray(arr, np.int32).tobytes())
    return req


def simple_arrays(rows: int = 1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.integers(-1000, 1000, (rows, 16), dtype=np.int32), rng.integers(-1000, 1000, (rows, 16), dtype=np.int32))


def check_simple(response_bytes: bytes, a: np.ndarray, b: np.ndarray) -> None:
    from tritonclient.grpc import service_pb2 as pb

    resp = pb.ModelInferResponse.FromString(response_bytes)
    assert resp.model_name == "simple"
    outs = {o.name: np.frombuffer(raw, np.int32).reshape(tuple(o.shape))
            for o, raw in zip(resp.outputs, resp.raw_output_contents)}
    np.testing.assert_array_equal(outs["OUTPUT0"], a + b)
    np.testing.assert_array_equal(outs["OUTPUT1"], a - b)


def write_echo_model(root: Path) -> None:
    """echo: IN UINT8 [-1, -1] -> OUT = IN (Identity), for payloads of any size."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["IN"], ["OUT"])], "echo",
        [helper.make_tensor_value_info("IN", TensorProto.UINT8, ["batch", "n"])],
        [helper.make_tensor_value_info("OUT", TensorProto.UINT8, ["batch", "n"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="transport-tests")
    model.ir_version = 8
    (root / "echo" / "1").mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(root / "echo" / "1" / "model.onnx"))
    (root / "echo" / "model.yaml").write_text("max_batch_size: 8\n")


def echo_request(payload: bytes, request_id: str = ""):
    """echo model: IN UINT8 [1, n] answered as OUT."""
    from tritonclient.grpc import service_pb2 as pb

    req = pb.ModelInferRequest(model_name="echo", id=request_id)
    req.inputs.add(name="IN", datatype="UINT8", shape=[1, len(payload)])
    req.raw_input_contents.append(payload)
    return req


def echo_output(response_bytes: bytes) -> bytes:
    from tritonclient.grpc import service_pb2 as pb

    resp = pb.ModelInferResponse.FromString(response_bytes)
    assert [o.name for o in resp.outputs] == ["OUT"]
    return resp.raw_output_contents[0]


# -- daemons --

MAX_REQUEST_BYTES = 16 << 20  # above the 4 MiB stream window the native transport advertises
SLOW_CONFIG = "max_batch_size: 1\ninstances: 2\n"
SIMPLE_QUEUE = 300
SIMPLE_CONFIG = f"max_batch_size: 8\ndynamic_batching:\n  max_queue_delay_us: 100\n  max_queue_size: {SIMPLE_QUEUE}\n"


def write_transport_repository(root: Path) -> Path:
    # A queue shorter than a long stream: a stream that pushed all its requests into it would be refused.
    (root / "simple").mkdir(parents=True, exist_ok=True)
    (root / "simple" / "model.yaml").write_text(SIMPLE_CONFIG)
    make_models.write_repository(str(root), ["simple"])
    write_echo_model(root)
    write_slow_model(root, SLOW_CONFIG)
    return root


def start_transport_gateway(tmp_path_factory, transport: str = "native", *extra: str, process: bool = False):
    """In this process unless ``process`` (a test that signals the daemon)."""
    from daemons import launch  # tests/conftest.py

    root = write_transport_repository(tmp_path_factory.mktemp(f"transport-{transport}") / "models")
    return launch(root, "--grpc-transport", transport, "--max-request-bytes", str(MAX_REQUEST_BYTES), *extra,
                  process=process)


@pytest.fixture(scope="module")
def native_gw(tmp_path_factory):
    """One native-transport daemon per test module that imports this fixture."""
    gw = start_transport_gateway(tmp_path_factory, "native")
    yield gw
    gw.terminate()


def grpc_options(max_bytes: int = 64 << 20) -> list[tuple[str, int]]:
    return [("grpc.max_receive_message_length", max_bytes), ("grpc.max_send_message_length", max_bytes)]


def stub(channel):
    from tritonclient.grpc import service_pb2_grpc

    return service_pb2_grpc.GRPCInferenceServiceStub(channel)
