"""Property tests of the tensor decoders: whatever the bytes, a decode either gives arrays that
match their declared shapes or raises a typed GatewayError. Never another exception.

In process: the HTTP codec (JSON, binary extension, msgpack) and the raw-tensor decoder that gRPC
raw_input_contents use. The gRPC codec itself imports gateway._proto, which this process must not,
so gRPC messages are fuzzed against a running daemon.
"""

from __future__ import annotations

import json
import math
import struct

import grpc
import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from reliability_helpers import grpc_stub

import make_models
from gateway.api.http_codec import decode_infer_request
from gateway.core import datatypes
from gateway.core.errors import GatewayError, InvalidInputError
from gateway.core.tensors import bytes_from_raw, from_raw

DATATYPES = list(datatypes.DATATYPES)
datatype_st = st.one_of(st.sampled_from(DATATYPES), st.sampled_from(["BF16", "FP8", "int32", "", "STRING"]), st.text(max_size=6))
dim_st = st.one_of(st.integers(0, 4), st.integers(-3, -1), st.sampled_from([2**31, 2**40, 2**62, 2**64 + 1]))
shape_st = st.lists(dim_st, max_size=4)
scalar_st = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
)
json_data_st = st.recursive(scalar_st, lambda inner: st.lists(inner, max_size=6), max_leaves=24)
params_st = st.one_of(st.none(), st.dictionaries(st.text(max_size=20), scalar_st, max_size=3),
                      st.fixed_dictionaries({"binary_data_size": st.one_of(st.integers(-2, 80), scalar_st)}))


def check_decoded(req) -> None:
    for name, array in req.inputs.items():
        assert isinstance(array, np.ndarray)
        assert req.datatypes[name] in DATATYPES
        assert math.prod(array.shape) == array.size


def decode_or_typed_error(body: bytes, **kw) -> None:
    try:
        req, _ = decode_infer_request(body, model="m", version="", **kw)
    except GatewayError:
        return
    check_decoded(req)


tensor_st = st.fixed_dictionaries(
    {"name": st.one_of(st.sampled_from(["a", "b"]), scalar_st), "datatype": datatype_st, "shape": st.one_of(shape_st, scalar_st)},
    optional={"data": json_data_st, "parameters": params_st},
)
request_st = st.fixed_dictionaries(
    {"inputs": st.one_of(st.lists(tensor_st, max_size=3), scalar_st)},
    optional={"id": scalar_st, "parameters": params_st,
              "outputs": st.lists(st.fixed_dictionaries({"name": scalar_st}, optional={"parameters": params_st}), max_size=2)},
)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(doc=st.one_of(request_st, json_data_st))
@example(doc={"inputs": [{"name": "a", "datatype": "FP32", "shape": [2, 2], "data": [[1.0, float("nan")], [2, 3]]}]})
@example(doc={"inputs": [{"name": "a", "datatype": "FP32", "shape": [0, 3], "data": []}]})
@example(doc={"inputs": [{"name": "a", "datatype": "INT8", "shape": [1], "data": [300]}]})
@example(doc={"inputs": [{"name": "a", "datatype": "FP32", "shape": [1], "data": [1e300]}]})
@example(doc={"inputs": [{"name": "a", "datatype": "BYTES", "shape": [2**40], "data": ["x"]}]})
def test_json_bodies(doc):
    decode_or_typed_error(json.dumps(doc, allow_nan=True).encode(), content_type="application/json", header_length=None)


@FUZZ
@given(raw=st.binary(max_size=200), header_length=st.one_of(st.none(), st.integers(-5, 210)))
def test_arbitrary_bytes(raw, header_length):
    decode_or_typed_error(raw, content_type="application/json", header_length=header_length)
    decode_or_typed_error(raw, content_type="application/msgpack", header_length=None)


@FUZZ
@given(inputs=st.lists(st.tuples(datatype_st, shape_st, st.integers(-2, 64), st.binary(max_size=64)), min_size=1, max_size=3),
       tail=st.binary(max_size=16), header_delta=st.integers(-3, 3))
def test_binary_extension(inputs, tail, header_delta):
    header = {"inputs": [
        {"name": f"in{i}", "datatype": dt, "shape": shape, "parameters": {"binary_data_size": size}}
        for i, (dt, shape, size, _) in enumerate(inputs)
    ]}
    head = json.dumps(header).encode()
    body = head + b"".join(blob for *_, blob in inputs) + tail
    decode_or_typed_error(body, content_type="application/octet-stream", header_length=len(head) + header_delta)


# msgpack integers are 64-bit at most.
msgpack_scalar_st = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(), st.text(max_size=8))
msgpack_shape_st = st.lists(st.one_of(st.integers(-3, 4), st.sampled_from([2**31, 2**40, 2**62, 2**64 - 1])), max_size=4)
msgpack_data_st = st.one_of(st.binary(max_size=64), st.lists(st.binary(max_size=8), max_size=6), msgpack_scalar_st)


@FUZZ
@given(items=st.lists(st.fixed_dictionaries({"name": st.sampled_from(["a", "b"]), "datatype": datatype_st,
                                             "shape": msgpack_shape_st}, optional={"data": msgpack_data_st}), max_size=3))
@example(items=[{"name": "a", "datatype": "BYTES", "shape": [3], "data": [b"x", b"", b"yz"]}])
@example(items=[{"name": "a", "datatype": "FP16", "shape": [2], "data": b"\x00\x7e\x00\x7c"}])
def test_msgpack_bodies(items):
    body = msgpack.packb({"inputs": items}, use_bin_type=True)
    decode_or_typed_error(body, content_type="application/msgpack", header_length=None)


def _bytes_elements(sizes: list[int], lie: int) -> bytes:
    out = b""
    for n in sizes:
        out += struct.pack("<I", max(0, n + lie)) + b"x" * n
    return out


@FUZZ
@given(buf=st.one_of(st.binary(max_size=80), st.builds(_bytes_elements, st.lists(st.integers(0, 6), max_size=5),
                                                       st.integers(-2, 2))),
       datatype=st.sampled_from(DATATYPES), shape=shape_st)
@example(buf=b"\x05\x00\x00\x00abc", datatype="BYTES", shape=[1])
@example(buf=b"\xff\xff\xff\xff", datatype="BYTES", shape=[1])
@example(buf=b"\x02", datatype="BOOL", shape=[1])
def test_raw_contents(buf, datatype, shape):
    """What gRPC raw_input_contents and binary HTTP tensors go through."""
    try:
        array = from_raw(buf, datatype, tuple(shape), "input 'x'")
    except InvalidInputError:
        return
    assert array.shape == tuple(shape)


def test_bytes_shape_far_beyond_the_data_is_refused_before_allocating():
    # Regression: an 8-byte body claiming 2**30 BYTES elements used to allocate 8 GiB of pointers first.
    with pytest.raises(InvalidInputError, match="needs 1073741824 elements"):
        bytes_from_raw(b"\x00" * 8, 2**30, "input 'x'")
    with pytest.raises(InvalidInputError):
        from_raw(b"\x00" * 8, "BYTES", (2**15, 2**15), "input 'x'")


# ----------------------------------------------------------------------------- gRPC, against the daemon

GRPC_OK = {"OK", "INVALID_ARGUMENT", "RESOURCE_EXHAUSTED", "NOT_FOUND"}


@pytest.fixture(scope="module")
def identity_gateway(tmp_path_factory):
    from daemons import launch

    root = tmp_path_factory.mktemp("fuzz") / "models"
    make_models.write_repository(str(root), ["identity", "simple"])
    gw = launch(root)
    channel = grpc.insecure_channel(gw.grpc_url)
    yield gw, grpc_stub(channel)
    channel.close()
    gw.terminate()


CONTENT_FIELDS = ["bool_contents", "int_contents", "int64_contents", "uint_contents", "uint64_contents",
                  "fp32_contents", "fp64_contents", "bytes_contents"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(tensors=st.lists(st.tuples(st.sampled_from(DATATYPES + ["BF16", "X"]), st.lists(st.one_of(st.integers(0, 3), st.integers(-2, -1),
                                                                                                 st.just(2**40)), max_size=3),
                                  st.one_of(st.binary(max_size=48), st.none()), st.sampled_from(CONTENT_FIELDS),
                                  st.integers(0, 4)), min_size=1, max_size=3),
       raw_count_delta=st.integers(-1, 1), model=st.sampled_from(["identity", "simple", "nope"]))
def test_grpc_messages_against_the_daemon(identity_gateway, tensors, raw_count_delta, model):
    from tritonclient.grpc import service_pb2 as pb

    gw, stub = identity_gateway
    req = pb.ModelInferRequest(model_name=model)
    raws = []
    for dt, shape, raw, field, count in tensors:
        t = req.inputs.add(name=f"IN_{dt}", datatype=dt, shape=shape)
        if raw is not None:
            raws.append(raw)
        else:
            values = getattr(t.contents, field)
            sample = {"bool_contents": True, "bytes_contents": b"ab", "fp32_contents": float("nan"),
                      "fp64_contents": -0.0}.get(field, 7)
            values.extend([sample] * count)
    if raws:
        raws += [b"\x01\x00\x00\x00z"] * max(0, raw_count_delta)
        req.raw_input_contents.extend(raws[: len(raws) + min(0, raw_count_delta)])
    try:
        stub.ModelInfer(req, timeout=30)
        code = "OK"
    except grpc.RpcError as err:
        code = err.code().name
    assert code in GRPC_OK, code
    assert gw.proc.poll() is None


def test_daemon_still_serves_after_fuzzing(identity_gateway):
    gw, _ = identity_gateway
    body = json.dumps({"inputs": [
        {"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "data": list(range(16))},
        {"name": "INPUT1", "datatype": "INT32", "shape": [1, 16], "data": [1] * 16}]}).encode()
    assert gw.http("POST", "/v2/models/simple/infer", body, {"Content-Type": "application/json"})[0] == 200
    assert "unexpected error" not in gw.log()


@pytest.mark.parametrize("shape", [(0, 2**62, 2**62), (0, 2**40), (1,) * 40])
def test_empty_or_deep_shapes_numpy_cannot_make_are_typed_errors(shape):
    with pytest.raises(InvalidInputError):
        from_raw(b"", "FP32", shape, "input 'x'")
    body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": list(shape), "data": []}]}).encode()
    with pytest.raises(GatewayError):
        decode_infer_request(body, content_type="application/json", header_length=None, model="m", version="")
