"""KServe v2 REST codecs: JSON, binary tensor extension and msgpack, both ways."""

from __future__ import annotations

import json
import math
import struct

import msgpack
import numpy as np
import pytest
import tritonclient.http as triton_http

from gateway.api.http_codec import (
    BINARY_CONTENT_TYPE,
    HEADER_LENGTH_HEADER,
    JSON_CONTENT_TYPE,
    MSGPACK_CONTENT_TYPE,
    Encoding,
    OutputFormat,
    decode_infer_request,
    encode_error,
    encode_infer_response,
)
from gateway.core.errors import InvalidInputError, PayloadTooLargeError
from gateway.core.types import InferResponse

# One sample per datatype, shape (2, 3), with the edges of each range.
SAMPLES: dict[str, np.ndarray] = {
    "BOOL": np.array([[True, False, True], [False, False, True]]),
    "UINT8": np.array([[0, 1, 255], [7, 8, 9]], dtype=np.uint8),
    "UINT16": np.array([[0, 1, 65535], [7, 8, 9]], dtype=np.uint16),
    "UINT32": np.array([[0, 1, 2**32 - 1], [7, 8, 9]], dtype=np.uint32),
    "UINT64": np.array([[0, 1, 2**64 - 1], [7, 8, 9]], dtype=np.uint64),
    "INT8": np.array([[-128, 0, 127], [7, -8, 9]], dtype=np.int8),
    "INT16": np.array([[-(2**15), 0, 2**15 - 1], [7, -8, 9]], dtype=np.int16),
    "INT32": np.array([[-(2**31), 0, 2**31 - 1], [7, -8, 9]], dtype=np.int32),
    "INT64": np.array([[-(2**63), 0, 2**63 - 1], [7, -8, 9]], dtype=np.int64),
    "FP16": np.array([[0.5, -2.0, 65504.0], [1e-4, 0.1, -0.0]], dtype=np.float16),
    "FP32": np.array([[0.5, -2.0, 3.4e38], [1e-30, 0.1, -0.0]], dtype=np.float32),
    "FP64": np.array([[0.5, -2.0, 1.7e308], [5e-324, 0.1, -0.0]], dtype=np.float64),
    "BYTES": np.array(
        [[b"a", b"", "\u00e9t\u00e9".encode()], [b"xyz", b"0", b"long " * 20]], dtype=object
    ),
}
DATATYPES = list(SAMPLES)
FIXED = [dt for dt in DATATYPES if dt != "BYTES"]


# --- helpers ---------------------------------------------------------------------


def decode(body, *, content_type=JSON_CONTENT_TYPE, header_length=None, **kw):
    return decode_infer_request(
        body, content_type=content_type, header_length=header_length, model="m", version="1", **kw
    )


def decode_json(doc, **kw):
    return decode(json.dumps(doc).encode(), **kw)


def json_data(array: np.ndarray) -> list:
    if array.dtype == object:
        return [x.decode() for x in array.ravel()]
    return array.ravel().tolist()


def raw(array: np.ndarray) -> bytes:
    if array.dtype == object:
        return b"".join(struct.pack("<I", len(x)) + x for x in array.ravel())
    return np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes()


def binary_request(inputs: list[dict], blobs: list[bytes], **extra) -> tuple[bytes, int]:
    header = json.dumps({"inputs": inputs, **extra}).encode()
    return header + b"".join(blobs), len(header)


def json_input(name, array, datatype, **fields):
    return {"name": name, "shape": list(array.shape), "datatype": datatype, **fields}


def binary_input(name, array, datatype, size=None):
    blob = raw(array)
    size = len(blob) if size is None else size
    tensor = json_input(name, array, datatype, parameters={"binary_data_size": size})
    return tensor, blob


def msgpack_request(doc) -> bytes:
    return msgpack.packb(doc, use_bin_type=True)


def msgpack_data(array: np.ndarray):
    return list(array.ravel()) if array.dtype == object else raw(array)


def assert_same(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.shape == expected.shape
    if expected.dtype == object:
        assert actual.dtype == object
        assert actual.tolist() == expected.tolist()
    else:
        assert actual.dtype == expected.dtype
        np.testing.assert_array_equal(actual, expected)
        # Keeps -0.0 apart from 0.0.
        assert raw(actual) == raw(expected)


def response(outputs: dict[str, np.ndarray], types: dict[str, str], **kw) -> InferResponse:
    return InferResponse(model="m", version="1", outputs=outputs, datatypes=types, **kw)


def assert_parsed(parsed: np.ndarray, expected: np.ndarray) -> None:
    """tritonclient reads JSON BYTES back as str and binary BYTES as bytes."""
    if expected.dtype == object and parsed.size and isinstance(parsed.flat[0], str):
        parsed = np.array([s.encode() for s in parsed.ravel()], dtype=object).reshape(parsed.shape)
    assert_same(parsed, expected)


def triton_result(body: bytes, headers: dict[str, str]):
    length = headers.get(HEADER_LENGTH_HEADER)
    return triton_http.InferenceServerClient.parse_response_body(
        body, header_length=None if length is None else int(length)
    )


# --- JSON requests -----------------------------------------------------------------


@pytest.mark.parametrize("datatype", DATATYPES)
@pytest.mark.parametrize("nested", [False, True], ids=["flat", "nested"])
def test_json_request_every_datatype(datatype, nested):
    array = SAMPLES[datatype]
    data = json_data(array)
    if nested:
        data = [data[:3], data[3:]]
    request, fmt = decode_json({"inputs": [json_input("x", array, datatype, data=data)]})
    assert_same(request.inputs["x"], array)
    assert request.datatypes == {"x": datatype}
    assert (request.model, request.version, request.outputs) == ("m", "1", None)
    assert fmt == OutputFormat()


def test_json_request_deeply_nested_and_scalar():
    array = np.arange(24, dtype=np.int32).reshape(2, 3, 4)
    request, _ = decode_json({"inputs": [json_input("x", array, "INT32", data=array.tolist())]})
    assert_same(request.inputs["x"], array)
    request, _ = decode_json({"inputs": [{"name": "s", "shape": [], "datatype": "FP32", "data": [1.5]}]})
    assert request.inputs["s"].shape == () and request.inputs["s"] == np.float32(1.5)


def test_json_fp_inputs_accept_integers_nan_and_infinity():
    body = b'{"inputs":[{"name":"x","shape":[4],"datatype":"FP16","data":[1, NaN, Infinity, -Infinity]}]}'
    request, _ = decode(body)
    x = request.inputs["x"]
    assert x.dtype == np.float16 and x[0] == 1 and math.isnan(x[1]) and x[2] == np.inf and x[3] == -np.inf


def test_request_id_and_parameters_are_copied():
    request, fmt = decode_json(
        {
            "id": "req-7",
            "parameters": {"priority": 1, "timeout": 5000, "tag": "a", "ratio": 0.5, "flag": True,
                           "binary_data_output": True},
            "inputs": [{"name": "x", "shape": [1], "datatype": "INT8", "data": [1]}],
        }
    )
    assert request.id == "req-7"
    assert request.parameters == {"priority": 1, "timeout": 5000, "tag": "a", "ratio": 0.5, "flag": True}
    assert fmt.binary_by_default and fmt.is_binary("anything")


def test_requested_outputs_and_binary_flags():
    request, fmt = decode_json(
        {
            "parameters": {"binary_data_output": True},
            "inputs": [{"name": "x", "shape": [1], "datatype": "INT8", "data": [1]}],
            "outputs": [
                {"name": "a", "parameters": {"binary_data": False}},
                {"name": "b", "parameters": {"binary_data": True}},
                {"name": "c"},
            ],
        }
    )
    assert [o.name for o in request.outputs] == ["a", "b", "c"]
    assert request.outputs[0].parameters == {"binary_data": False}
    assert (fmt.is_binary("a"), fmt.is_binary("b"), fmt.is_binary("c")) == (False, True, True)
    _, fmt = decode_json(
        {"inputs": [], "outputs": [{"name": "a", "parameters": {"binary_data": True}}, {"name": "b"}]}
    )
    assert (fmt.is_binary("a"), fmt.is_binary("b")) == (True, False)


def test_empty_outputs_list_means_all_outputs():
    request, _ = decode_json({"inputs": [], "outputs": []})
    assert request.outputs is None


# --- binary tensor extension ----------------------------------------------------------


@pytest.mark.parametrize("datatype", DATATYPES)
def test_binary_request_every_datatype(datatype):
    array = SAMPLES[datatype]
    tensor, blob = binary_input("x", array, datatype)
    body, length = binary_request([tensor], [blob])
    request, _ = decode(body, header_length=length)
    assert_same(request.inputs["x"], array)


@pytest.mark.parametrize("datatype", FIXED)
def test_binary_fixed_width_inputs_are_zero_copy(datatype):
    array = SAMPLES[datatype]
    tensor, blob = binary_input("x", array, datatype)
    body, length = binary_request([tensor], [blob])
    for buffer in (body, memoryview(body), bytearray(body)):
        decoded = decode(buffer, header_length=length)[0].inputs["x"]
        assert np.shares_memory(decoded, np.frombuffer(buffer, dtype=np.uint8))


def test_binary_and_json_inputs_mixed_in_order():
    a, b, c = SAMPLES["FP32"], SAMPLES["BYTES"], SAMPLES["INT64"]
    ta, blob_a = binary_input("a", a, "FP32")
    tc, blob_c = binary_input("c", c, "INT64")
    tb = json_input("b", b, "BYTES", data=json_data(b))
    body, length = binary_request([ta, tb, tc], [blob_a, blob_c])
    request, _ = decode(body, header_length=length)
    assert list(request.inputs) == ["a", "b", "c"]
    assert_same(request.inputs["a"], a)
    assert_same(request.inputs["b"], b)
    assert_same(request.inputs["c"], c)


def test_header_length_equal_to_body_without_binary_inputs():
    body = json.dumps({"inputs": [{"name": "x", "shape": [1], "datatype": "INT8", "data": [3]}]}).encode()
    request, _ = decode(body, header_length=len(body))
    assert request.inputs["x"].tolist() == [3]


# --- msgpack ------------------------------------------------------------------------


@pytest.mark.parametrize("datatype", DATATYPES)
def test_msgpack_round_trip_every_datatype(datatype):
    array = SAMPLES[datatype]
    body = msgpack_request(
        {
            "id": "r",
            "parameters": {"priority": 2},
            "inputs": [{"name": "x", "datatype": datatype, "shape": [2, 3], "data": msgpack_data(array)}],
            "outputs": [{"name": "y"}],
        }
    )
    request, fmt = decode(body, content_type=MSGPACK_CONTENT_TYPE)
    assert_same(request.inputs["x"], array)
    assert (request.id, request.parameters, [o.name for o in request.outputs]) == ("r", {"priority": 2}, ["y"])
    assert fmt.encoding is Encoding.MSGPACK

    out, headers = encode_infer_response(
        response({"y": array}, {"y": datatype}, id="r"), fmt
    )
    assert headers == {"Content-Type": MSGPACK_CONTENT_TYPE}
    doc = msgpack.unpackb(out, raw=False)
    assert doc["model_name"] == "m" and doc["model_version"] == "1" and doc["id"] == "r"
    [output] = doc["outputs"]
    assert (output["name"], output["datatype"], output["shape"]) == ("y", datatype, [2, 3])
    assert output["data"] == msgpack_data(array)


@pytest.mark.parametrize("content_type", ["application/msgpack", "application/x-msgpack",
                                          "Application/MsgPack; charset=binary"])
def test_msgpack_content_types(content_type):
    body = msgpack_request({"inputs": [{"name": "x", "datatype": "UINT8", "shape": [2], "data": b"\x01\x02"}]})
    request, fmt = decode(body, content_type=content_type)
    assert request.inputs["x"].tolist() == [1, 2] and fmt.encoding is Encoding.MSGPACK


# --- responses ------------------------------------------------------------------------


@pytest.mark.parametrize("datatype", DATATYPES)
@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_response_every_datatype_parsed_by_tritonclient(datatype, binary):
    array = SAMPLES[datatype]
    body, headers = encode_infer_response(
        response({"y": array}, {"y": datatype}), OutputFormat(binary_by_default=binary)
    )
    result = triton_result(body, headers)
    assert_parsed(result.as_numpy("y"), array)
    if binary:
        assert headers["Content-Type"] == BINARY_CONTENT_TYPE
        length = int(headers[HEADER_LENGTH_HEADER])
        doc = json.loads(body[:length])
        assert doc["outputs"][0]["parameters"] == {"binary_data_size": len(raw(array))}
        assert "data" not in doc["outputs"][0]
        assert body[length:] == raw(array)
    else:
        assert headers == {"Content-Type": JSON_CONTENT_TYPE}
        doc = json.loads(body)
        assert doc["outputs"][0]["data"] == json_data(array)


def test_response_envelope_fields():
    arr = np.zeros(2, np.float32)
    body, _ = encode_infer_response(response({"y": arr}, {"y": "FP32"}), OutputFormat())
    assert json.loads(body) == {
        "model_name": "m", "model_version": "1",
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [2], "data": [0.0, 0.0]}],
    }
    body, _ = encode_infer_response(
        response({"y": arr}, {"y": "FP32"}, id="abc", parameters={"k": 1}), OutputFormat()
    )
    doc = json.loads(body)
    assert doc["id"] == "abc" and doc["parameters"] == {"k": 1}


def test_response_mixes_binary_and_json_outputs_in_order():
    a, b, c = SAMPLES["INT16"], SAMPLES["BYTES"], SAMPLES["FP64"]
    fmt = OutputFormat(binary_outputs=frozenset({"a", "c"}))
    body, headers = encode_infer_response(
        response({"a": a, "b": b, "c": c}, {"a": "INT16", "b": "BYTES", "c": "FP64"}), fmt
    )
    length = int(headers[HEADER_LENGTH_HEADER])
    assert body[length:] == raw(a) + raw(c)
    result = triton_result(body, headers)
    for name, array in (("a", a), ("b", b), ("c", c)):
        assert_parsed(result.as_numpy(name), array)


def test_response_datatype_defaults_from_numpy_and_str_elements():
    # onnxruntime returns string tensors as object arrays of str.
    words = np.array(["hi", "th\u00e9re"], dtype=object)
    body, headers = encode_infer_response(
        response({"w": words, "n": np.array([1, 2], np.int32)}, {}), OutputFormat()
    )
    doc = json.loads(body)
    assert [(o["datatype"], o["data"]) for o in doc["outputs"]] == [
        ("BYTES", ["hi", "th\u00e9re"]), ("INT32", [1, 2])
    ]
    body, headers = encode_infer_response(response({"w": words}, {}), OutputFormat(binary_by_default=True))
    assert triton_result(body, headers).as_numpy("w").tolist() == [b"hi", "th\u00e9re".encode()]


@pytest.mark.parametrize("datatype", ["FP16", "FP32", "FP64"])
def test_response_nan_and_infinity_parse_in_tritonclient(datatype):
    array = np.array([np.nan, np.inf, -np.inf, 1.5], dtype=SAMPLES[datatype].dtype)
    body, headers = encode_infer_response(response({"y": array}, {"y": datatype}), OutputFormat())
    assert b"NaN" in body and b"-Infinity" in body
    parsed = triton_result(body, headers).as_numpy("y")
    assert parsed.dtype == array.dtype
    np.testing.assert_array_equal(parsed, array)  # NaN compares equal here
    assert json.loads(body)["outputs"][0]["data"][2] == -math.inf


def test_non_utf8_bytes_output_falls_back_to_binary():
    array = np.array([b"ok", b"\xff\xfe"], dtype=object)
    body, headers = encode_infer_response(
        response({"y": array, "z": np.array([1], np.int8)}, {"y": "BYTES", "z": "INT8"}), OutputFormat()
    )
    assert headers["Content-Type"] == BINARY_CONTENT_TYPE
    length = int(headers[HEADER_LENGTH_HEADER])
    doc = json.loads(body[:length])
    assert doc["outputs"][0]["parameters"] == {"binary_data_size": 12}
    assert doc["outputs"][1]["data"] == [1]
    result = triton_result(body, headers)
    assert result.as_numpy("y").tolist() == [b"ok", b"\xff\xfe"]
    assert result.as_numpy("z").tolist() == [1]


def test_non_contiguous_and_big_endian_outputs():
    base = np.arange(12, dtype=">i4").reshape(3, 4)
    view = base[:, ::2]
    for fmt in (OutputFormat(), OutputFormat(binary_by_default=True)):
        body, headers = encode_infer_response(response({"y": view}, {"y": "INT32"}), fmt)
        np.testing.assert_array_equal(triton_result(body, headers).as_numpy("y"), view)


def test_encode_error():
    assert json.loads(encode_error('bad "input" \u00e9')) == {"error": 'bad "input" \u00e9'}


# --- empty tensors --------------------------------------------------------------------


@pytest.mark.parametrize("datatype", ["FP32", "BYTES", "BOOL"])
def test_empty_tensor_everywhere(datatype):
    dtype = object if datatype == "BYTES" else SAMPLES[datatype].dtype
    empty = np.empty((0, 4), dtype=dtype)
    request, _ = decode_json({"inputs": [json_input("x", empty, datatype, data=[])]})
    assert_same(request.inputs["x"], empty)

    tensor, blob = binary_input("x", empty, datatype)
    assert blob == b""
    body, length = binary_request([tensor], [blob])
    assert_same(decode(body, header_length=length)[0].inputs["x"], empty)

    body = msgpack_request({"inputs": [{"name": "x", "datatype": datatype, "shape": [0, 4],
                                        "data": msgpack_data(empty)}]})
    assert_same(decode(body, content_type=MSGPACK_CONTENT_TYPE)[0].inputs["x"], empty)

    for binary in (False, True):
        body, headers = encode_infer_response(
            response({"y": empty}, {"y": datatype}), OutputFormat(binary_by_default=binary)
        )
        parsed = triton_result(body, headers).as_numpy("y")
        assert parsed.shape == (0, 4)


# --- tritonclient interoperability ----------------------------------------------------------


@pytest.mark.parametrize("datatype", DATATYPES)
@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_tritonclient_request_bodies(datatype, binary):
    array = SAMPLES[datatype]
    extra = np.arange(5, dtype=np.float32)
    x = triton_http.InferInput("x", list(array.shape), datatype)
    x.set_data_from_numpy(array, binary_data=binary)
    e = triton_http.InferInput("e", [5], "FP32")
    e.set_data_from_numpy(extra, binary_data=not binary)
    outputs = [triton_http.InferRequestedOutput("y", binary_data=binary),
               triton_http.InferRequestedOutput("z", binary_data=not binary)]
    body, length = triton_http.InferenceServerClient.generate_request_body(
        [x, e], outputs, request_id="id-1", priority=3, timeout=1000, parameters={"user": "u1"}
    )
    request, fmt = decode(body, header_length=length)
    assert_same(request.inputs["x"], array)
    assert_same(request.inputs["e"], extra)
    assert request.datatypes == {"x": datatype, "e": "FP32"}
    assert request.id == "id-1"
    assert request.parameters == {"priority": 3, "timeout": 1000, "user": "u1"}
    assert [o.name for o in request.outputs] == ["y", "z"]
    assert (fmt.is_binary("y"), fmt.is_binary("z")) == (binary, not binary)


def test_tritonclient_default_outputs_request_binary():
    x = triton_http.InferInput("x", [3], "INT32")
    x.set_data_from_numpy(np.array([1, 2, 3], np.int32))
    body, length = triton_http.InferenceServerClient.generate_request_body([x])
    request, fmt = decode(body, header_length=length)
    assert request.outputs is None and request.parameters == {}
    assert fmt.binary_by_default


def test_tritonclient_full_round_trip():
    x = triton_http.InferInput("x", [2, 3], "FP32")
    x.set_data_from_numpy(SAMPLES["FP32"])
    body, length = triton_http.InferenceServerClient.generate_request_body(
        [x], [triton_http.InferRequestedOutput("y"), triton_http.InferRequestedOutput("n", binary_data=False)]
    )
    request, fmt = decode(body, header_length=length)
    doubled = request.inputs["x"] / 2
    out, headers = encode_infer_response(
        response({"y": doubled, "n": np.array([7], np.int64)}, {"y": "FP32", "n": "INT64"}), fmt
    )
    result = triton_result(out, headers)
    assert_same(result.as_numpy("y"), SAMPLES["FP32"] / 2)
    assert result.get_output("n")["data"] == [7]


# --- limits ------------------------------------------------------------------------------


def test_tensor_over_element_limit_is_payload_too_large():
    doc = {"inputs": [{"name": "big", "shape": [1000, 1000], "datatype": "FP32", "data": []}]}
    with pytest.raises(PayloadTooLargeError, match="'big'"):
        decode_json(doc, max_tensor_elements=10_000)
    body = msgpack_request({"inputs": [{"name": "big", "datatype": "UINT8", "shape": [1 << 40], "data": b""}]})
    with pytest.raises(PayloadTooLargeError, match="'big'"):
        decode(body, content_type=MSGPACK_CONTENT_TYPE)


# --- malformed requests: JSON -------------------------------------------------------------------


def _inp(**fields):
    tensor = {"name": "inp0", "shape": [2], "datatype": "INT32", "data": [1, 2]}
    tensor.update(fields)
    return {"inputs": [{k: v for k, v in tensor.items() if v is not ...}]}


MALFORMED_JSON = {
    "missing datatype": (_inp(datatype=...), "datatype"),
    "datatype not a string": (_inp(datatype=5), "datatype"),
    "unknown datatype": (_inp(datatype="FP8"), "unsupported datatype 'FP8'"),
    "BF16 not served": (_inp(datatype="BF16"), "unsupported datatype"),
    "missing shape": (_inp(shape=...), "shape"),
    "shape not a list": (_inp(shape="2"), "shape"),
    "shape with float": (_inp(shape=[2.0]), "non-integer"),
    "shape with bool": (_inp(shape=[True, 2]), "non-integer"),
    "negative dim": (_inp(shape=[-1, 2]), "negative"),
    "missing data": (_inp(data=...), "neither"),
    "data not a list": (_inp(data={"a": 1}), "'data' must be a list"),
    "too few elements": (_inp(data=[1]), "needs 2 elements, data has 1"),
    "too many elements": (_inp(data=[1, 2, 3]), "needs 2 elements, data has 3"),
    "string in INT32": (_inp(data=[1, "2"]), "INT32 data takes integers"),
    "float in INT32": (_inp(data=[1, 2.0]), "INT32 data takes integers"),
    "bool in INT32": (_inp(data=[1, True]), "INT32 data takes integers"),
    "null in INT32": (_inp(data=[1, None]), "INT32 data takes integers"),
    "list in flat INT32": (_inp(data=[1, [2]]), "INT32 data takes integers"),
    "INT32 overflow": (_inp(data=[1, 2**31]), "2147483648 does not fit in INT32"),
    "INT8 overflow": (_inp(datatype="INT8", data=[-129, 0]), "-129 does not fit in INT8"),
    "UINT8 negative": (_inp(datatype="UINT8", data=[0, -1]), "-1 does not fit in UINT8"),
    "UINT64 overflow": (_inp(datatype="UINT64", data=[0, 2**64]), "does not fit in UINT64"),
    "INT64 overflow": (_inp(datatype="INT64", data=[0, 2**63]), "does not fit in INT64"),
    "FP32 overflow": (_inp(datatype="FP32", data=[0.5, 1e300]), "1e+300 does not fit in FP32"),
    "FP16 overflow": (_inp(datatype="FP16", data=[0.5, 70000]), "70000 does not fit in FP16"),
    "FP64 huge int": (_inp(datatype="FP64", data=[0.5, 10**400]), "does not fit in FP64"),
    "string in FP32": (_inp(datatype="FP32", data=[0.5, "1"]), "FP32 data takes numbers"),
    "number in BOOL": (_inp(datatype="BOOL", data=[True, 1]), "BOOL data takes true/false"),
    "number in BYTES": (_inp(datatype="BYTES", data=["a", 1]), "BYTES data takes strings"),
    "ragged nested": (_inp(shape=[2, 2], data=[[1, 2], [3]]), "does not follow shape"),
    "wrong nesting depth": (_inp(shape=[2, 2, 1], data=[[1, 2], [3, 4]]), "does not follow shape"),
    "partly nested": (_inp(shape=[2, 2], data=[[1, 2], 3, 4]), "does not follow shape"),
    "nested more than shape": (_inp(shape=[2], data=[[1], [2]]), "INT32 data takes integers"),
    "parameters not a map": (_inp(parameters=[1]), "'parameters' must be an object"),
    "parameter value a list": (_inp(parameters={"p": [1]}), "parameter 'p'"),
    "shared memory without size": (_inp(data=..., parameters={"shared_memory_region": "r"}),
                                   "'shared_memory_byte_size' is required"),
    "shared memory and data": (_inp(parameters={"shared_memory_region": "r", "shared_memory_byte_size": 8}),
                               "has both 'data' and parameter 'shared_memory_region'"),
    "binary size and data": (_inp(parameters={"binary_data_size": 8}), "both"),
    "binary size negative": (_inp(data=..., parameters={"binary_data_size": -8}), "non-negative"),
    "binary size string": (_inp(data=..., parameters={"binary_data_size": "8"}), "non-negative"),
    "binary size without header": (_inp(data=..., parameters={"binary_data_size": 8}), "no Inference-Header"),
    "duplicate input": ({"inputs": _inp()["inputs"] * 2}, "appears more than once"),
}


@pytest.mark.parametrize("doc, message", MALFORMED_JSON.values(), ids=MALFORMED_JSON.keys())
def test_malformed_json_input_names_the_input(doc, message):
    with pytest.raises(InvalidInputError) as info:
        decode_json(doc)
    assert "'inp0'" in info.value.message
    assert message in info.value.message


MALFORMED_REQUEST = {
    "not json": (b"{", "not valid JSON"),
    "not utf-8": (b'{"inputs": ["\xff"]}', "UTF-8"),
    "too deep": (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    "top-level list": (b"[]", "must be an object"),
    "missing inputs": (b"{}", "missing 'inputs'"),
    "inputs not a list": (b'{"inputs": {}}', "'inputs' must be a list"),
    "input not an object": (b'{"inputs": [3]}', "input #0"),
    "input without name": (b'{"inputs": [{"shape": [1]}]}', "input #0: 'name'"),
    "id not a string": (b'{"id": 3, "inputs": []}', "'id' must be a string"),
    "parameters not a map": (b'{"parameters": 3, "inputs": []}', "'parameters' must be an object"),
    "parameter null": (b'{"parameters": {"x": null}, "inputs": []}', "parameter 'x'"),
    "priority negative": (b'{"parameters": {"priority": -1}, "inputs": []}', "'priority'"),
    "timeout float": (b'{"parameters": {"timeout": 1.5}, "inputs": []}', "'timeout'"),
    "binary_data_output not bool": (b'{"parameters": {"binary_data_output": 1}, "inputs": []}',
                                    "binary_data_output"),
    "outputs not a list": (b'{"inputs": [], "outputs": {}}', "'outputs' must be a list"),
    "output without name": (b'{"inputs": [], "outputs": [{}]}', "output #0"),
    "output binary_data not bool": (
        b'{"inputs": [], "outputs": [{"name": "o1", "parameters": {"binary_data": 1}}]}',
        "output 'o1': 'binary_data' must be true or false"),
    "output duplicated": (b'{"inputs": [], "outputs": [{"name": "o1"}, {"name": "o1"}]}',
                          "output 'o1' is requested more than once"),
}


@pytest.mark.parametrize("body, message", MALFORMED_REQUEST.values(), ids=MALFORMED_REQUEST.keys())
def test_malformed_json_request(body, message):
    with pytest.raises(InvalidInputError, match=message):
        decode(body)


# --- malformed requests: binary ----------------------------------------------------------------


def _binary_case(datatype="FP32", array=None, size=None, blob=None, trailing=b"", header_length=None):
    array = SAMPLES[datatype] if array is None else array
    tensor, good_blob = binary_input("inp0", array, datatype, size=size)
    body, length = binary_request([tensor], [good_blob if blob is None else blob])
    return body + trailing, length if header_length is None else header_length


def _bytes_blob(*parts: bytes) -> bytes:
    return b"".join(parts)


MALFORMED_BINARY = {
    "size not itemsize*count": (_binary_case(size=20, blob=b"\0" * 20), "needs 24 bytes, data has 20"),
    "size beyond body": (_binary_case(blob=b"\0" * 10), "exceeds the 10 bytes left"),
    "trailing bytes": (_binary_case(trailing=b"\0\0"), "sum to 24 bytes but 26 bytes follow"),
    "BOOL not 0/1": (_binary_case("BOOL", blob=b"\x01\x00\x02\x00\x00\x01"), "0 or 1"),
    "BYTES truncated prefix": (
        _binary_case("BYTES", array=np.array([b"ab", b"c"], dtype=object), size=8,
                     blob=_bytes_blob(struct.pack("<I", 2), b"ab", b"\x01\x00")),
        "inside the length prefix of element 1"),
    "BYTES truncated element": (
        _binary_case("BYTES", array=np.array([b"ab", b"c"], dtype=object), size=12,
                     blob=_bytes_blob(struct.pack("<I", 2), b"ab", struct.pack("<I", 5), b"cd")),
        "element 1 claims 5 bytes but only 2 remain"),
    "BYTES extra elements": (
        _binary_case("BYTES", array=np.array([b"ab"], dtype=object), size=11,
                     blob=_bytes_blob(struct.pack("<I", 2), b"ab", struct.pack("<I", 1), b"c")),
        "5 bytes after its 1 elements"),
}


@pytest.mark.parametrize("case, message", MALFORMED_BINARY.values(), ids=MALFORMED_BINARY.keys())
def test_malformed_binary_input_names_the_input(case, message):
    body, length = case
    with pytest.raises(InvalidInputError) as info:
        decode(body, header_length=length)
    assert "'inp0'" in info.value.message
    assert message in info.value.message


@pytest.mark.parametrize("length", [0, -1, 10**9])
def test_header_length_outside_body(length):
    body, _ = _binary_case()
    with pytest.raises(InvalidInputError, match=HEADER_LENGTH_HEADER):
        decode(body, header_length=length)


def test_binary_input_without_header_length():
    # Without the header the whole body is taken as JSON, raw tensor included.
    body, _ = _binary_case()
    with pytest.raises(InvalidInputError, match="not valid"):
        decode(body, header_length=None)


def test_trailing_bytes_without_binary_inputs():
    header = json.dumps(_inp()).encode()
    with pytest.raises(InvalidInputError, match="no input sets binary_data_size"):
        decode(header + b"junk", header_length=len(header))


# --- malformed requests: msgpack -----------------------------------------------------------------


def _mp(**fields):
    tensor = {"name": "inp0", "datatype": "INT16", "shape": [2], "data": b"\1\0\2\0"}
    tensor.update(fields)
    return {"inputs": [{k: v for k, v in tensor.items() if v is not ...}]}


MALFORMED_MSGPACK = {
    "missing data": (_mp(data=...), "missing 'data'"),
    "data as list of ints": (_mp(data=[1, 2]), "must be bin"),
    "data as str": (_mp(data="\1\0\2\0"), "must be bin"),
    "wrong byte count": (_mp(data=b"\1\0\2"), "needs 4 bytes, data has 3"),
    "negative dim": (_mp(shape=[-2]), "negative"),
    "unknown datatype": (_mp(datatype="INT4"), "unsupported datatype"),
    "BYTES as single bin": (_mp(datatype="BYTES", data=b"ab"), "array of bin"),
    "BYTES with str element": (_mp(datatype="BYTES", data=[b"a", "b"]), "array of bin"),
    "BYTES wrong count": (_mp(datatype="BYTES", data=[b"a"]), "needs 2 elements, data has 1"),
    "BOOL not 0/1": (_mp(datatype="BOOL", data=b"\1\7"), "0 or 1"),
    "duplicate input": ({"inputs": _mp()["inputs"] * 2}, "more than once"),
}


@pytest.mark.parametrize("doc, message", MALFORMED_MSGPACK.values(), ids=MALFORMED_MSGPACK.keys())
def test_malformed_msgpack_input_names_the_input(doc, message):
    with pytest.raises(InvalidInputError) as info:
        decode(msgpack_request(doc), content_type=MSGPACK_CONTENT_TYPE)
    assert "'inp0'" in info.value.message
    assert message in info.value.message


@pytest.mark.parametrize(
    "body, message",
    [
        (b"\xc1", "not valid msgpack"),
        (msgpack_request({"inputs": []}) + b"\x00", "not valid msgpack"),
        (msgpack_request([1, 2]), "must be an object"),
        (msgpack_request({"inputs": [], "id": b"bin-id"}), "'id' must be a string"),
        (msgpack_request({"inputs": [], "parameters": {"p": {"nested": 1}}}), "parameter 'p'"),
    ],
)
def test_malformed_msgpack_request(body, message):
    with pytest.raises(InvalidInputError, match=message):
        decode(body, content_type=MSGPACK_CONTENT_TYPE)


def test_msgpack_rejects_header_length():
    with pytest.raises(InvalidInputError, match=HEADER_LENGTH_HEADER):
        decode(msgpack_request({"inputs": []}), content_type=MSGPACK_CONTENT_TYPE, header_length=3)
