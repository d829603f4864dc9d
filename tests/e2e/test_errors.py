"""Bad inputs each get their status and message, over both protocols; the daemon keeps serving."""

from __future__ import annotations

import json

import numpy as np
import pytest

import make_models
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    from daemons import launch

    root = tmp_path_factory.mktemp("errors") / "models"
    make_models.write_repository(str(root), ["mlp", "simple"])
    g = launch(root, "--max-request-bytes", "65536")
    yield g
    g.terminate()


@pytest.fixture(scope="module")
def client(gw):
    c = grpcclient.InferenceServerClient(gw.grpc_url)
    yield c
    c.close()


def grpc_input(name, arr, datatype):
    inp = grpcclient.InferInput(name, list(arr.shape), datatype)
    inp.set_data_from_numpy(arr)
    return inp


def json_body(inputs):
    return {"inputs": inputs}


MLP_OK = {"name": "INPUT", "datatype": "FP32", "shape": [1, 64], "data": [0.5] * 64}

# (case, HTTP body for mlp, expected HTTP status, words expected in the message)
HTTP_CASES = [
    ("wrong input name", json_body([{**MLP_OK, "name": "WRONG"}]), 400, ["WRONG"]),
    ("wrong datatype", json_body([{**MLP_OK, "datatype": "FP64"}]), 400, ["INPUT", "FP64", "FP32"]),
    ("wrong shape", json_body([{**MLP_OK, "shape": [1, 63], "data": [0.5] * 63}]), 400, ["INPUT", "64"]),
    ("element count", json_body([{**MLP_OK, "data": [0.5] * 10}]), 400, ["INPUT"]),
    ("missing input", json_body([]), 400, ["INPUT"]),
    ("batch too big", json_body([{**MLP_OK, "shape": [33, 64], "data": [0.5] * 33 * 64}]), 400, ["33", "32"]),
    ("unknown datatype", json_body([{**MLP_OK, "datatype": "FP8"}]), 400, ["FP8"]),
    ("negative priority", {**json_body([MLP_OK]), "parameters": {"priority": -1}}, 400, ["priority"]),
]


@pytest.mark.parametrize("case,body,status,words", HTTP_CASES, ids=[c[0] for c in HTTP_CASES])
def test_http_bad_input(gw, case, body, status, words):
    got, doc = gw.http_json("POST", "/v2/models/mlp/infer", body)
    assert got == status, doc
    for w in words:
        assert w in doc["error"], (case, doc)


def test_http_binary_length_mismatch(gw):
    header = json.dumps({"inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [1, 64],
                                     "parameters": {"binary_data_size": 256}}]}).encode()
    body = header + b"\0" * 100  # 156 bytes short
    status, _, raw = gw.http("POST", "/v2/models/mlp/infer", body, {
        "Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header))})
    assert status == 400 and "INPUT" in json.loads(raw)["error"]


def test_http_body_too_large(gw):
    body = json.dumps(json_body([{**MLP_OK, "shape": [32, 64], "data": [0.123456789] * 32 * 64}]) | {"pad": "x" * 70000}).encode()
    assert len(body) > 65536
    status, _, raw = gw.http("POST", "/v2/models/mlp/infer", body, {"Content-Type": "application/json"})
    assert status == 413 and "limit" in json.loads(raw)["error"]


def test_http_unknown_model_and_version(gw):
    status, doc = gw.http_json("POST", "/v2/models/nope/infer", json_body([MLP_OK]))
    assert status == 404 and "nope" in doc["error"]
    status, doc = gw.http_json("POST", "/v2/models/mlp/versions/7/infer", json_body([MLP_OK]))
    assert status == 404 and "7" in doc["error"]


def _grpc_status(fn) -> tuple[str, str]:
    with pytest.raises(InferenceServerException) as err:
        fn()
    return err.value.status(), err.value.message()


def test_grpc_bad_inputs(client):
    x = np.zeros((1, 64), np.float32)
    code, msg = _grpc_status(lambda: client.infer("nope", [grpc_input("INPUT", x, "FP32")]))
    assert code == "StatusCode.NOT_FOUND" and "nope" in msg
    code, msg = _grpc_status(lambda: client.infer("mlp", [grpc_input("INPUT", x, "FP32")], model_version="5"))
    assert code == "StatusCode.NOT_FOUND" and "5" in msg
    code, msg = _grpc_status(lambda: client.infer("mlp", [grpc_input("NOPE", x, "FP32")]))
    assert code == "StatusCode.INVALID_ARGUMENT" and "NOPE" in msg
    code, msg = _grpc_status(lambda: client.infer("mlp", [grpc_input("INPUT", x.astype(np.float64), "FP64")]))
    assert code == "StatusCode.INVALID_ARGUMENT" and "FP64" in msg
    code, msg = _grpc_status(lambda: client.infer("mlp", [grpc_input("INPUT", np.zeros((1, 8), np.float32), "FP32")]))
    assert code == "StatusCode.INVALID_ARGUMENT" and "[1,8]" in msg
    # Declared shape disagrees with the raw byte length.
    inp = grpcclient.InferInput("INPUT", [2, 64], "FP32")
    inp.set_data_from_numpy(np.zeros((2, 64), np.float32))
    inp.set_shape([1, 64])
    code, msg = _grpc_status(lambda: client.infer("mlp", [inp]))
    assert code == "StatusCode.INVALID_ARGUMENT" and "bytes" in msg
    big = np.zeros((32, 1024), np.float32)  # 128 KiB > the 64 KiB limit of this daemon
    code, _ = _grpc_status(lambda: client.infer("mlp", [grpc_input("INPUT", big, "FP32")]))
    assert code == "StatusCode.RESOURCE_EXHAUSTED"


def test_daemon_still_serves_after_bad_inputs(gw, client):
    x = np.ones((1, 64), np.float32)
    assert client.infer("mlp", [grpc_input("INPUT", x, "FP32")]).as_numpy("OUTPUT").shape == (1, 8)
    status, doc = gw.http_json("POST", "/v2/models/mlp/infer", json_body([MLP_OK]))
    assert status == 200 and doc["outputs"][0]["shape"] == [1, 8]
    assert gw.proc.poll() is None


def test_runtime_failure_fails_only_its_request(tmp_path, start_gateway):
    root = tmp_path / "models"
    make_models.write_repository(str(root), ["lookup"])
    # A wide fixed window so the good and bad requests land in one batch (an adaptive one would send
    # the first request alone to the idle model).
    (root / "lookup" / "model.yaml").write_text(
        "max_batch_size: 8\ndynamic_batching:\n  max_queue_delay_us: 300000\n  adaptive_delay: false\n")
    gw = start_gateway(root)
    client = grpcclient.InferenceServerClient(gw.grpc_url)

    def lookup(i):
        inp = grpcclient.InferInput("INDEX", [1, 1], "INT64")
        inp.set_data_from_numpy(np.array([[i]], dtype=np.int64))
        return client.infer("lookup", [inp]).as_numpy("EMBEDDING")

    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = {i: pool.submit(lookup, i) for i in (1, 99, 3, 4)}
        good = {i: futures[i].result(30) for i in (1, 3, 4)}
        with pytest.raises(InferenceServerException) as err:
            futures[99].result(30)
    assert err.value.status() == "StatusCode.INTERNAL"
    assert "out of data bounds" in err.value.message()
    stats = client.get_inference_statistics("lookup").model_stats[0]
    assert max(b.batch_size for b in stats.batch_stats) > 1, "the bad request was not batched with good ones"
    for i, emb in good.items():
        np.testing.assert_array_equal(emb, np.arange(4 * i, 4 * i + 4, dtype=np.float32).reshape(1, 1, 4))
    status, doc = gw.http_json("POST", "/v2/models/lookup/infer", json_body([
        {"name": "INDEX", "datatype": "INT64", "shape": [1, 1], "data": [42]}]))
    assert status == 500 and "lookup" in doc["error"]
    assert lookup(2).shape == (1, 1, 4)
    client.close()


@pytest.mark.parametrize("yaml_text, reason", [
    ("backend: tensorrt\n", "TensorRT is not available"),
    ("providers: [cuda]\n", "execution provider 'cuda'"),
])
def test_gpu_backends_without_a_gpu_report_not_available(tmp_path, start_gateway, yaml_text, reason):
    """Without a GPU (skipped where one is present): the model is UNAVAILABLE with a clear reason."""
    import onnxruntime

    if "cuda" in yaml_text and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this host has the CUDA provider")
    root = tmp_path / "models"
    make_models.write_repository(str(root), ["mlp", "simple"])
    (root / "mlp" / "model.yaml").write_text(yaml_text)
    gw = start_gateway(root)
    status, rows = gw.http_json("POST", "/v2/repository/index")
    (row,) = [r for r in rows if r["name"] == "mlp"]
    if row["state"] == "READY":
        pytest.skip("this host has a GPU with TensorRT")
    assert row["state"] == "UNAVAILABLE" and reason in row["reason"], row
    status, doc = gw.http_json("GET", "/v2/models/mlp")
    assert status == 503 and reason in doc["error"]
    assert gw.http_json("GET", "/v2/models/simple/ready")[0] == 200  # the rest serves
