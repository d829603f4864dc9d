"""Pre-encoded request bodies for the load generators, and checks that a system's answer is right.

Every body carries the same batch-1 input (standard normal, fixed seed). Before a system is
loaded, one request of each body is sent and its output compared with raw ONNX Runtime's, so
a table row never counts fast errors as inferences.

gRPC bodies are built with the gateway's own generated stubs (same package, service and
message names as Triton's and MLServer's protos, so the bytes are valid for all three).
"""

from __future__ import annotations

import json
import struct
import urllib.error
import urllib.request
from dataclasses import dataclass

import numpy as np

from gateway._proto import grpc_service_pb2 as pb

GRPC_SERVICE = "/inference.GRPCInferenceService/"


@dataclass(frozen=True, slots=True)
class Body:
    """One request as the load generator sends it."""

    protocol: str  # grpc | grpc-stream | http-binary | http-json
    path: str  # URL path (gRPC: the method path)
    data: bytes
    headers: tuple[tuple[str, str], ...]
    inferences: int = 1  # model inferences one request carries (a stream call carries several)


def grpc_frame(message: bytes) -> bytes:
    """gRPC length-prefixed message: 1-byte compressed flag + 4-byte big-endian length."""
    return b"\0" + struct.pack(">I", len(message)) + message


def infer_request(model: str, x: np.ndarray) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name=model)
    req.inputs.add(name="INPUT", datatype="FP32", shape=list(x.shape))
    req.raw_input_contents.append(np.ascontiguousarray(x, dtype="<f4").tobytes())
    return req


GRPC_HEADERS = (("content-type", "application/grpc"), ("te", "trailers"))


def fixed_answer(model: str, output_shape: tuple[int, ...]) -> bytes:
    """A ModelInfer answer's message, as a gRPC frame, of the size the model's real answer has
    (zeros): what a server answering without inference sends back (the protocol ceiling)."""
    resp = pb.ModelInferResponse(model_name=model, model_version="1")
    resp.outputs.add(name="OUTPUT", datatype="FP32", shape=list(output_shape))
    resp.raw_output_contents.append(np.zeros(output_shape, "<f4").tobytes())
    return grpc_frame(resp.SerializeToString())


def grpc_unary(model: str, x: np.ndarray) -> Body:
    return Body("grpc", GRPC_SERVICE + "ModelInfer", grpc_frame(infer_request(model, x).SerializeToString()), GRPC_HEADERS)


def grpc_stream(model: str, x: np.ndarray, messages: int) -> Body:
    """One ModelStreamInfer call carrying `messages` requests, then half-close."""
    frame = grpc_frame(infer_request(model, x).SerializeToString())
    return Body("grpc-stream", GRPC_SERVICE + "ModelStreamInfer", frame * messages, GRPC_HEADERS, messages)


def http_binary(model: str, x: np.ndarray) -> Body:
    raw = np.ascontiguousarray(x, dtype="<f4").tobytes()
    header = json.dumps({
        "inputs": [{"name": "INPUT", "datatype": "FP32", "shape": list(x.shape),
                    "parameters": {"binary_data_size": len(raw)}}],
        "parameters": {"binary_data_output": True},
    }, separators=(",", ":")).encode()
    return Body(
        "http-binary", f"/v2/models/{model}/infer", header + raw,
        (("Content-Type", "application/octet-stream"), ("Inference-Header-Content-Length", str(len(header)))),
    )


def http_v2_json(model: str, x: np.ndarray) -> Body:
    doc = {"inputs": [{"name": "INPUT", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]}
    return Body("http-json", f"/v2/models/{model}/infer", json.dumps(doc).encode(), (("Content-Type", "application/json"),))


def naive_json(model: str, x: np.ndarray) -> Body:
    """The body the naive FastAPI server takes (peers/fastapi_server.py)."""
    doc = {"model": model, "shape": list(x.shape), "data": x.ravel().tolist()}
    return Body("http-json", "/predict", json.dumps(doc).encode(), (("Content-Type", "application/json"),))


# --- answer checks --------------------------------------------------------------------------


class WrongAnswer(RuntimeError):
    pass


def _compare(got: np.ndarray, expected: np.ndarray, what: str) -> None:
    if got.size != expected.size or not np.allclose(got.ravel(), expected.ravel(), rtol=1e-3, atol=1e-4):
        raise WrongAnswer(f"{what}: output differs from raw onnxruntime ({got.ravel()[:4]} vs {expected.ravel()[:4]})")


def _output_of(resp: pb.ModelInferResponse) -> np.ndarray:
    if resp.raw_output_contents:
        return np.frombuffer(resp.raw_output_contents[0], dtype="<f4")
    return np.asarray(resp.outputs[0].contents.fp32_contents, dtype=np.float32)


def check_grpc(address: str, body: Body, expected: np.ndarray, timeout_s: float = 30) -> int:
    """Send the body once with grpcio; check every answer; return the response bytes h2load will count."""
    import grpc

    with grpc.insecure_channel(address) as channel:
        messages = _split_frames(body.data)
        if body.protocol == "grpc":
            raw = channel.unary_unary(body.path)(messages[0], timeout=timeout_s)
            _compare(_output_of(pb.ModelInferResponse.FromString(raw)), expected, body.path)
            return len(grpc_frame(raw))
        answers = list(channel.stream_stream(body.path)(iter(messages), timeout=timeout_s))
        if len(answers) != len(messages):
            raise WrongAnswer(f"{body.path}: {len(answers)} answers to {len(messages)} requests")
        total = 0
        for raw in answers:
            msg = pb.ModelStreamInferResponse.FromString(raw)
            if msg.error_message:
                raise WrongAnswer(f"{body.path}: {msg.error_message}")
            _compare(_output_of(msg.infer_response), expected, body.path)
            total += len(grpc_frame(raw))
        return total


def _split_frames(data: bytes) -> list[bytes]:
    out, at = [], 0
    while at < len(data):
        (length,) = struct.unpack(">I", data[at + 1:at + 5])
        out.append(data[at + 5:at + 5 + length])
        at += 5 + length
    return out


def check_http(base_url: str, body: Body, expected: np.ndarray, timeout_s: float = 30) -> None:
    req = urllib.request.Request(base_url + body.path, data=body.data, method="POST", headers=dict(body.headers))
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            raw, headers = resp.read(), resp.headers
    except urllib.error.HTTPError as err:
        raise WrongAnswer(f"POST {body.path}: HTTP {err.code}: {err.read()[:300]!r}") from None
    header_len = headers.get("Inference-Header-Content-Length")
    if header_len is not None:
        doc = json.loads(raw[: int(header_len)])
        got = np.frombuffer(raw[int(header_len):], dtype="<f4")
    else:
        doc = json.loads(raw)
        outputs = doc.get("outputs")
        got = np.asarray(outputs[0]["data"] if outputs else doc["data"], dtype=np.float32)
    _compare(got, expected, f"POST {body.path}")
