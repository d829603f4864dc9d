"""tritonclient.http (binary on and off), plain JSON and msgpack against the daemon."""

from __future__ import annotations

import json

import msgpack
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException


@pytest.fixture(scope="module")
def gw(shared_gateway):
    return shared_gateway


@pytest.fixture(scope="module")
def client(gw):
    c = httpclient.InferenceServerClient(gw.http_url)
    yield c
    c.close()


def mlp_reference(gw, x):
    sess = ort.InferenceSession(str(gw.repository / "mlp" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    return sess.run(["OUTPUT"], {"INPUT": x})[0]


def test_health_metadata_config(gw, client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("simple")
    md = client.get_model_metadata("simple")
    assert md["name"] == "simple" and md["versions"] == ["1"]
    assert md["inputs"] == [
        {"name": "INPUT0", "datatype": "INT32", "shape": [-1, 16]},
        {"name": "INPUT1", "datatype": "INT32", "shape": [-1, 16]},
    ]
    assert client.get_model_metadata("simple", "1")["versions"] == ["1"]
    cfg = client.get_model_config("mlp")
    assert cfg["max_batch_size"] == 32
    status, doc = gw.http_json("GET", "/v2")
    assert status == 200 and doc["name"] == "gateway"


@pytest.mark.parametrize("binary", [True, False])
def test_infer_binary_on_and_off(gw, client, binary):
    x = np.random.default_rng(3).standard_normal((2, 64)).astype(np.float32)
    inp = httpclient.InferInput("INPUT", [2, 64], "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    out = httpclient.InferRequestedOutput("OUTPUT", binary_data=binary)
    result = client.infer("mlp", [inp], outputs=[out])
    np.testing.assert_allclose(result.as_numpy("OUTPUT"), mlp_reference(gw, x), rtol=1e-5, atol=1e-6)


def test_plain_json_request(gw):
    body = {
        "id": "j1",
        "inputs": [
            {"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "data": list(range(16))},
            {"name": "INPUT1", "datatype": "INT32", "shape": [1, 16], "data": [[1] * 16]},
        ],
    }
    status, doc = gw.http_json("POST", "/v2/models/simple/infer", body)
    assert status == 200, doc
    assert doc["id"] == "j1" and doc["model_name"] == "simple" and doc["model_version"] == "1"
    outs = {o["name"]: o for o in doc["outputs"]}
    assert outs["OUTPUT0"]["data"] == [i + 1 for i in range(16)]
    assert outs["OUTPUT1"]["shape"] == [1, 16] and outs["OUTPUT1"]["datatype"] == "INT32"


def test_msgpack_request(gw):
    x = np.arange(64, dtype=np.float32).reshape(1, 64) / 64
    body = msgpack.packb({"inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [1, 64], "data": x.tobytes()}]})
    status, headers, raw = gw.http("POST", "/v2/models/mlp/infer", body, {"Content-Type": "application/msgpack"})
    assert status == 200, raw
    assert headers["Content-Type"].startswith("application/msgpack")
    doc = msgpack.unpackb(raw)
    out = doc["outputs"][0]
    got = np.frombuffer(out["data"], dtype=np.float32).reshape(out["shape"])
    np.testing.assert_allclose(got, mlp_reference(gw, x), rtol=1e-5, atol=1e-6)


def test_bytes_and_fp16_over_http(client):
    rows, n = 2, 3
    data = {
        "BYTES": np.array([[f"x{i}{j}".encode() for j in range(n)] for i in range(rows)], dtype=object),
        "FP16": np.linspace(-2, 2, rows * n, dtype=np.float16).reshape(rows, n),
        "BOOL": np.array([[True, False, True], [False, False, True]]),
        "UINT64": np.array([[0, 2**63, 2**64 - 1]] * rows, dtype=np.uint64),
    }
    others = {
        "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "INT8": np.int8, "INT16": np.int16,
        "INT32": np.int32, "INT64": np.int64, "FP32": np.float32, "FP64": np.float64,
    }
    for v2, dt in others.items():
        data[v2] = np.arange(rows * n).reshape(rows, n).astype(dt)
    for binary in (True, False):
        ins = []
        for v2, arr in data.items():
            inp = httpclient.InferInput(f"IN_{v2}", [rows, n], v2)
            inp.set_data_from_numpy(arr, binary_data=binary or v2 == "FP16")
            ins.append(inp)
        outs = [httpclient.InferRequestedOutput(f"OUT_{v2}", binary_data=binary or v2 == "FP16") for v2 in data]
        result = client.infer("identity", ins, outputs=outs)
        for v2, arr in data.items():
            got = result.as_numpy(f"OUT_{v2}")
            if v2 == "BYTES":
                assert [[e if isinstance(e, bytes) else e.encode() for e in row] for row in got.tolist()] == arr.tolist(), binary
            else:
                np.testing.assert_array_equal(got.astype(arr.dtype), arr, err_msg=f"{v2} binary={binary}")


def test_statistics_and_repository(gw, client):
    stats = client.get_inference_statistics("simple")
    assert stats["model_stats"][0]["name"] == "simple"
    index = client.get_model_repository_index()
    assert {m["name"] for m in index} >= {"mlp", "simple", "identity"}


def test_errors_have_json_bodies(gw, client):
    status, doc = gw.http_json("GET", "/v2/models/nope")
    assert status == 404 and "nope" in doc["error"]
    status, doc = gw.http_json("GET", "/v2/models/mlp/versions/9")
    assert status == 404 and "9" in doc["error"]
    status, doc = gw.http_json("GET", "/v2/no/such/route")
    assert status == 404 and "error" in doc
    status, _, raw = gw.http("POST", "/v2/models/mlp/infer", b"{not json", {"Content-Type": "application/json"})
    assert status == 400 and "error" in json.loads(raw)
    with pytest.raises(InferenceServerException) as err:
        client.infer("nope", [httpclient.InferInput("INPUT", [1, 64], "FP32").set_data_from_numpy(np.zeros((1, 64), np.float32))])
    assert "nope" in str(err.value)
