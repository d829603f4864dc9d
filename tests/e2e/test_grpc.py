"""tritonclient.grpc against the daemon: health, metadata, config, infer, stream, repository."""

from __future__ import annotations

import queue

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

import make_models

WAIT_S = 30


@pytest.fixture(scope="module")
def gw(shared_gateway):
    return shared_gateway


@pytest.fixture(scope="module")
def client(gw):
    c = grpcclient.InferenceServerClient(gw.grpc_url)
    yield c
    c.close()


def reference(repo, model: str, feeds: dict) -> dict:
    sess = ort.InferenceSession(str(repo / model / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))


def test_health_and_server_metadata(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    md = client.get_server_metadata()
    assert md.name == "gateway"
    assert "binary_tensor_data" in md.extensions
    assert client.is_model_ready("mlp")
    assert not client.is_model_ready("no_such_model")


def test_model_metadata_and_config_agree_with_repository(client):
    md = client.get_model_metadata("mlp")
    assert md.name == "mlp" and list(md.versions) == ["1"]
    assert md.platform == "onnxruntime_onnx"
    assert [(t.name, t.datatype, list(t.shape)) for t in md.inputs] == [("INPUT", "FP32", [-1, 64])]
    assert [(t.name, t.datatype, list(t.shape)) for t in md.outputs] == [("OUTPUT", "FP32", [-1, 8])]
    cfg = client.get_model_config("mlp").config
    assert cfg.max_batch_size == 32
    assert list(cfg.dynamic_batching.preferred_batch_size) == [8, 16, 32]
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 500
    assert cfg.input[0].name == "INPUT" and list(cfg.input[0].dims) == [64]
    with pytest.raises(InferenceServerException) as err:
        client.get_model_metadata("no_such_model")
    assert err.value.status() == "StatusCode.NOT_FOUND"


def test_infer_matches_onnxruntime(gw, client):
    x = np.random.default_rng(1).standard_normal((3, 64)).astype(np.float32)
    inp = grpcclient.InferInput("INPUT", [3, 64], "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer("mlp", [inp], request_id="r-1")
    got = result.as_numpy("OUTPUT")
    want = reference(gw.repository, "mlp", {"INPUT": x})["OUTPUT"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    resp = result.get_response()
    assert resp.id == "r-1" and resp.model_name == "mlp" and resp.model_version == "1"


def test_simple_model_and_requested_outputs(client):
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    b = np.ones((1, 16), dtype=np.int32)
    ins = [grpcclient.InferInput("INPUT0", [1, 16], "INT32"), grpcclient.InferInput("INPUT1", [1, 16], "INT32")]
    ins[0].set_data_from_numpy(a)
    ins[1].set_data_from_numpy(b)
    result = client.infer("simple", ins, outputs=[grpcclient.InferRequestedOutput("OUTPUT1")])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    assert result.as_numpy("OUTPUT0") is None


def _identity_inputs(rows: int = 2, n: int = 3):
    rng = np.random.default_rng(7)
    data = {}
    for v2 in make_models.IDENTITY_TYPES:
        if v2 == "BYTES":
            arr = np.array([[f"s{i}-{j}é".encode() for j in range(n)] for i in range(rows)], dtype=object)
        elif v2 == "BOOL":
            arr = rng.integers(0, 2, (rows, n)).astype(bool)
        elif v2.startswith("FP"):
            arr = rng.standard_normal((rows, n)).astype({"FP16": np.float16, "FP32": np.float32, "FP64": np.float64}[v2])
        else:
            dt = np.dtype(v2.lower())
            info = np.iinfo(dt)
            arr = rng.integers(info.min, info.max, (rows, n), dtype=dt, endpoint=True)
        data[v2] = arr
    return data


def test_every_datatype_round_trips(client):
    data = _identity_inputs()
    ins = []
    for v2, arr in data.items():
        inp = grpcclient.InferInput(f"IN_{v2}", list(arr.shape), v2)
        inp.set_data_from_numpy(arr)
        ins.append(inp)
    result = client.infer("identity", ins)
    for v2, arr in data.items():
        got = result.as_numpy(f"OUT_{v2}")
        assert got.shape == arr.shape, v2
        if v2 == "BYTES":
            assert got.tolist() == arr.tolist()
        else:
            assert got.dtype == arr.dtype, v2
            np.testing.assert_array_equal(got, arr)


def test_typed_contents_are_accepted(gw):
    """tritonclient always sends raw bytes; a hand-built request exercises `contents`."""
    with grpc.insecure_channel(gw.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        req = service_pb2.ModelInferRequest(model_name="simple")
        for name, values in (("INPUT0", range(16)), ("INPUT1", [2] * 16)):
            t = req.inputs.add(name=name, datatype="INT32", shape=[1, 16])
            t.contents.int_contents.extend(values)
        resp = stub.ModelInfer(req, timeout=WAIT_S)
        by_name = {o.name: i for i, o in enumerate(resp.outputs)}
        out0 = np.frombuffer(resp.raw_output_contents[by_name["OUTPUT0"]], dtype=np.int32)
        np.testing.assert_array_equal(out0, np.arange(16) + 2)

        bad = service_pb2.ModelInferRequest(model_name="simple")
        for name in ("INPUT0", "INPUT1"):
            t = bad.inputs.add(name=name, datatype="INT32", shape=[1, 16])
            t.contents.int_contents.extend(range(15))
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(bad, timeout=WAIT_S)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "INPUT0" in err.value.details() and "16" in err.value.details()


def test_stream_infer_answers_every_request(client):
    results: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        xs = {}
        for i in range(20):
            x = np.full((1, 64), i, dtype=np.float32)
            xs[str(i)] = x
            inp = grpcclient.InferInput("INPUT", [1, 64], "FP32")
            inp.set_data_from_numpy(x)
            client.async_stream_infer("mlp", [inp], request_id=str(i))
        bad = grpcclient.InferInput("WRONG", [1, 64], "FP32")
        bad.set_data_from_numpy(np.zeros((1, 64), np.float32))
        client.async_stream_infer("mlp", [bad], request_id="bad")
        seen, errors = set(), []
        for _ in range(21):
            result, error = results.get(timeout=WAIT_S)
            if error is not None:
                errors.append(str(error))
            else:
                seen.add(result.get_response().id)
        assert seen == set(xs)
        assert len(errors) == 1 and "WRONG" in errors[0]
    finally:
        client.stop_stream()


def test_statistics_and_repository_index(client):
    stats = client.get_inference_statistics("mlp")
    s = stats.model_stats[0]
    assert s.name == "mlp" and s.version == "1"
    assert s.inference_count >= 1 and s.execution_count >= 1
    assert s.inference_stats.success.count >= 1
    index = {m.name: m for m in client.get_model_repository_index().models}
    assert {"mlp", "simple", "identity"} <= set(index)
    assert index["mlp"].state == "READY"


def test_grpc_health_service_and_reflection(gw):
    with grpc.insecure_channel(gw.grpc_url) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService"):
            resp = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=WAIT_S)
            assert resp.status == health_pb2.HealthCheckResponse.SERVING
        from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=WAIT_S)
        names = {s.name for r in responses for s in r.list_services_response.service}
        assert "inference.GRPCInferenceService" in names and "grpc.health.v1.Health" in names
