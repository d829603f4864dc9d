"""The two gRPC front ends (grpc_transport native and grpcio) answer the same calls alike:
results, status codes and their details, metadata handling."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest
from transport_helpers import (
    MAX_REQUEST_BYTES, check_simple, echo_request, grpc_options, simple_arrays, simple_request, slow_grpc_request,
    start_transport_gateway, stub,
)

TRANSPORTS = ("native", "grpcio")


@pytest.fixture(scope="module")
def gateways(tmp_path_factory):
    started = {}
    try:
        for transport in TRANSPORTS:
            started[transport] = start_transport_gateway(tmp_path_factory, transport)
        yield started
    finally:
        for gw in started.values():
            gw.terminate()


def on_both(gateways, call):
    """call(stub, channel) on each daemon -> {transport: (outcome, code name, details)}."""
    async def one(gw):
        async with grpc.aio.insecure_channel(gw.grpc_url, options=grpc_options()) as channel:
            try:
                return await call(stub(channel), channel), "OK", ""
            except grpc.aio.AioRpcError as err:
                return None, err.code().name, err.details()

    async def both():
        return await asyncio.gather(*(one(gateways[t]) for t in TRANSPORTS))

    return dict(zip(TRANSPORTS, asyncio.run(asyncio.wait_for(both(), 60))))


def _tensors(resp) -> list[tuple]:
    return [(o.name, o.datatype, list(o.shape), raw) for o, raw in zip(resp.outputs, resp.raw_output_contents)]


def test_unary_infer(gateways):
    a, b = simple_arrays(3, seed=9)

    async def call(s, _):
        resp = await s.ModelInfer(simple_request(a, b, request_id="same"), timeout=30)
        check_simple(resp.SerializeToString(), a, b)
        return resp.model_name, resp.model_version, resp.id, _tensors(resp)

    results = on_both(gateways, call)
    assert results["native"] == results["grpcio"]
    assert results["native"][1] == "OK"


def test_stream_infer_with_a_failing_request(gateways):
    from tritonclient.grpc import service_pb2 as pb

    arrays = [simple_arrays(1, seed=s) for s in range(8)]

    async def call(s, _):
        async def requests():
            for i, (a, b) in enumerate(arrays):
                yield simple_request(a, b, request_id=f"r{i}")
            yield pb.ModelInferRequest(model_name="no_such_model", id="bad")

        answers = []
        async for answer in s.ModelStreamInfer(requests(), timeout=30):
            r = answer.infer_response
            answers.append((r.id, answer.error_message, r.model_name, _tensors(r)))
        return sorted(answers)

    results = on_both(gateways, call)
    assert results["native"] == results["grpcio"]
    answers = results["native"][0]
    assert len(answers) == 9 and [a[0] for a in answers if a[1]] == ["bad"]


def _bad_input():
    a, b = simple_arrays()
    req = simple_request(a, b)
    req.raw_input_contents[0] = req.raw_input_contents[0][:-4]  # a short tensor
    return req


@pytest.mark.parametrize("case", [
    "unknown_model", "bad_input", "unknown_method", "too_large", "deadline", "bad_protobuf", "metadata_of_unknown_model",
])
def test_error_statuses(gateways, case):
    from tritonclient.grpc import service_pb2 as pb

    async def call(s, channel):
        if case == "unknown_model":
            return await s.ModelInfer(pb.ModelInferRequest(model_name="no_such_model"), timeout=30)
        if case == "bad_input":
            return await s.ModelInfer(_bad_input(), timeout=30)
        if case == "unknown_method":
            return await channel.unary_unary("/inference.GRPCInferenceService/NoSuchMethod")(b"", timeout=30)
        if case == "too_large":
            return await s.ModelInfer(echo_request(bytes(MAX_REQUEST_BYTES)), timeout=30)
        if case == "deadline":
            return await s.ModelInfer(slow_grpc_request(20_000_000), timeout=0.3)
        if case == "bad_protobuf":
            return await channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")(b"\xff\xff\xff", timeout=30)
        return await s.ModelMetadata(pb.ModelMetadataRequest(name="no_such_model"), timeout=30)

    results = on_both(gateways, call)
    native, grpcio_ = results["native"], results["grpcio"]
    assert native[1] != "OK"
    if case == "bad_protobuf":
        # The one known difference: grpc.aio's handler wrapper answers an undecodable request with its
        # catch-all UNKNOWN ("Unexpected DecodeError"); the native transport says INVALID_ARGUMENT.
        assert (native[1], grpcio_[1]) == ("INVALID_ARGUMENT", "UNKNOWN"), results
        assert "DecodeError" in grpcio_[2] and "cannot parse the request message" in native[2]
        return
    assert native[1] == grpcio_[1], results
    if case in ("unknown_model", "bad_input", "metadata_of_unknown_model"):
        assert native[2] == grpcio_[2]  # the gateway's own messages, word for word


def test_metadata(gateways):
    """Request metadata (text, binary, the route key) is accepted alike; oversized metadata refused alike."""
    a, b = simple_arrays()
    metadata = (("x-route-key", "user-1"), ("x-custom", "ascii value"), ("x-blob-bin", b"\x00\x01\xfe\xff"))

    async def call(s, _):
        c = s.ModelInfer(simple_request(a, b), metadata=metadata, timeout=30)
        resp = await c
        initial = [(k, v) for k, v in (await c.initial_metadata() or ()) if not k.startswith(("grpc-", "content-"))]
        trailing = [(k, v) for k, v in (await c.trailing_metadata() or ()) if not k.startswith("grpc-")]
        return resp.model_name, initial, trailing, (await c.code()).name

    results = on_both(gateways, call)
    assert results["native"] == results["grpcio"]
    assert results["native"][0][3] == "OK"

    async def oversized(s, _):
        return await s.ModelInfer(simple_request(a, b), metadata=(("x-big", "v" * 20_000),), timeout=30)

    results = on_both(gateways, oversized)
    assert results["native"][1] == results["grpcio"][1] != "OK", results


def test_server_metadata_and_health_agree(gateways):
    from tritonclient.grpc import service_pb2 as pb

    async def call(s, _):
        md = await s.ServerMetadata(pb.ServerMetadataRequest(), timeout=30)
        ready = await s.ModelReady(pb.ModelReadyRequest(name="simple"), timeout=30)
        cfg = await s.ModelConfig(pb.ModelConfigRequest(name="simple"), timeout=30)
        return md, ready.ready, cfg  # messages compare by value (map fields serialize in any order)

    results = on_both(gateways, call)
    assert results["native"] == results["grpcio"]
    assert results["native"][0][1] is True


def test_big_answer_agrees(gateways):
    payload = np.random.default_rng(2).integers(0, 256, 5 << 20, dtype=np.uint8).tobytes()

    async def call(s, _):
        resp = await s.ModelInfer(echo_request(payload), timeout=60)
        return _tensors(resp)

    results = on_both(gateways, call)
    assert results["native"] == results["grpcio"]
    assert results["native"][0][0][3] == payload
