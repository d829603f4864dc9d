"""The classification extension with tritonclient (class_count) over HTTP and gRPC, and the v2
request policy's parity: the same parameters get the same outcome through both protocols."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from daemons import launch

PROTOCOLS = {"grpc": grpcclient, "http": httpclient}
LABELS = ["zero", "one", "two", "three", "four", "five", "six", "seven"]


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    import make_models

    root = tmp_path_factory.mktemp("classify") / "models"
    make_models.write_repository(str(root))
    (root / "mlp" / "labels.txt").write_text("\n".join(LABELS) + "\n")
    cfg = root / "mlp" / "model.yaml"
    cfg.write_text(cfg.read_text() + "outputs:\n  - {name: OUTPUT, datatype: FP32, shape: [8], label_filename: labels.txt}\n")
    gateway = launch(root)
    yield gateway
    gateway.terminate()


@pytest.fixture(params=sorted(PROTOCOLS))
def proto(request):
    return request.param


@pytest.fixture
def client(gw, proto):
    c = PROTOCOLS[proto].InferenceServerClient(gw.grpc_url if proto == "grpc" else gw.http_url)
    yield c
    c.close()


def _mlp_input(module, x):
    inp = module.InferInput("INPUT", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return inp


def _requested(module, proto, name, k):
    if proto == "http":
        return module.InferRequestedOutput(name, binary_data=False, class_count=k)
    return module.InferRequestedOutput(name, class_count=k)


@pytest.mark.parametrize("k", [1, 3, 8, 20])
def test_top_k_with_labels_matches_argsort(proto, client, k):
    module = PROTOCOLS[proto]
    x = np.random.default_rng(k).standard_normal((5, 64)).astype(np.float32)
    plain = client.infer("mlp", [_mlp_input(module, x)]).as_numpy("OUTPUT")
    result = client.infer("mlp", [_mlp_input(module, x)], outputs=[_requested(module, proto, "OUTPUT", k)])
    got = result.as_numpy("OUTPUT")
    keep = min(k, 8)
    assert got.shape == (5, keep)
    out = result.get_output("OUTPUT")
    assert (out["datatype"] if proto == "http" else out.datatype) == "BYTES"
    want = np.argsort(-plain, axis=1, kind="stable")[:, :keep]
    for row, indices, scores in zip(got, want, plain):
        parts = [(s.decode() if isinstance(s, bytes) else s).split(":") for s in row]
        assert [int(p[1]) for p in parts] == indices.tolist()
        assert [p[2] for p in parts] == [LABELS[i] for i in indices]
        np.testing.assert_allclose([float(p[0]) for p in parts], scores[indices], atol=1e-6)


def test_classification_without_labels_and_with_binary_output(gw, proto, client):
    module = PROTOCOLS[proto]
    a = np.array([[3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9, 3]], np.int32)
    b = np.zeros((1, 16), np.int32)
    ins = [module.InferInput("INPUT0", [1, 16], "INT32"), module.InferInput("INPUT1", [1, 16], "INT32")]
    ins[0].set_data_from_numpy(a)
    ins[1].set_data_from_numpy(b)
    outs = [module.InferRequestedOutput("OUTPUT0", class_count=4), module.InferRequestedOutput("OUTPUT1")]
    result = client.infer("simple", ins, outputs=outs)
    # Ties keep index order; integer scores print as integers; no label file: "score:index".
    assert result.as_numpy("OUTPUT0").tolist() == [[b"9:5", b"9:12", b"9:14", b"8:11"]]
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a)


@pytest.mark.parametrize("datatype", ["BYTES", "BOOL"])
def test_classification_of_a_non_numeric_output_is_invalid(gw, datatype):
    import make_models

    def data(t):
        return [True] if t == "BOOL" else ["x"] if t == "BYTES" else [1]

    doc = {
        "inputs": [{"name": f"IN_{t}", "shape": [1, 1], "datatype": t, "data": data(t)} for t in make_models.IDENTITY_TYPES],
        "outputs": [{"name": f"OUT_{datatype}", "parameters": {"classification": 2}}],
    }
    status, body = gw.http_json("POST", "/v2/models/identity/infer", doc)
    assert status == 400, body
    assert body == {"error": f"output 'OUT_{datatype}': classification needs a numeric output, not {datatype}"}


def test_label_file_is_validated_at_load(tmp_path, start_gateway):
    import make_models

    root = tmp_path / "models"
    make_models.write_repository(str(root))
    cfg = root / "mlp" / "model.yaml"
    cfg.write_text(cfg.read_text() + "outputs:\n  - {name: OUTPUT, datatype: FP32, shape: [8], label_filename: missing.txt}\n")
    gw = start_gateway(root)
    status, _ = gw.http_json("GET", "/v2/models/mlp/ready")
    assert status != 200
    log = gw.log()
    assert "outputs[0].label_filename" in log and "missing.txt" in log


# --- one policy, two protocols ------------------------------------------------------------------------------

# (where, parameters, outcome): each case goes through HTTP (JSON) and gRPC (tritonclient's protobuf
# messages); both must give this outcome with the same message.
PARITY_CASES = {
    "priority ok": ("request", {"priority": 1}, "ok"),
    "priority negative": ("request", {"priority": -1}, "invalid"),
    "timeout string": ("request", {"timeout": "10"}, "invalid"),
    "unknown request parameter": ("request", {"custom": "kept"}, "ok"),
    "classification ok": ("output", {"classification": 2}, "ok"),
    "classification zero": ("output", {"classification": 0}, "invalid"),
    "classification string": ("output", {"classification": "2"}, "invalid"),
    "shm region without size": ("output", {"shared_memory_region": "r"}, "invalid"),
    "shm size without region": ("input", {"shared_memory_byte_size": 64}, "invalid"),
    "shm negative offset": (
        "input", {"shared_memory_region": "r", "shared_memory_byte_size": 64, "shared_memory_offset": -1}, "invalid"),
    "shm with shared memory off": ("input", {"shared_memory_region": "r", "shared_memory_byte_size": 64}, "denied"),
    "unknown output parameter": ("output", {"custom": 3}, "ok"),
}


def _set_grpc_params(target, params):
    for k, v in params.items():
        if isinstance(v, bool):
            target[k].bool_param = v
        elif isinstance(v, int):
            target[k].int64_param = v
        else:
            target[k].string_param = v


_ONES = np.ones((1, 16), np.int32)


def _send_http(gw, where, params):
    """(outcome, message or OUTPUT0) of one JSON request to simple, ``params`` on the request, INPUT0 or OUTPUT0."""
    inputs = [{"name": n, "shape": [1, 16], "datatype": "INT32", "data": _ONES.ravel().tolist()} for n in ("INPUT0", "INPUT1")]
    output = {"name": "OUTPUT0"}
    doc = {"inputs": inputs, "outputs": [output]}
    if where == "request":
        doc["parameters"] = params
    elif where == "input":
        inputs[0]["parameters"] = params
        del inputs[0]["data"]
    else:
        output["parameters"] = params
    status, body = gw.http_json("POST", "/v2/models/simple/infer", doc)
    if status != 200:
        return {400: "invalid", 404: "not found", 403: "denied"}.get(status, str(status)), body["error"]
    return "ok", repr(body["outputs"][0]["data"])


def _send_grpc(gw, where, params):
    """The same request as protobuf through tritonclient's own stubs."""
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    msg = service_pb2.ModelInferRequest(model_name="simple")
    for n in ("INPUT0", "INPUT1"):
        msg.inputs.add(name=n, datatype="INT32", shape=[1, 16])
    msg.outputs.add(name="OUTPUT0")
    raw = [_ONES.tobytes(), _ONES.tobytes()]
    if where == "request":
        _set_grpc_params(msg.parameters, params)
    elif where == "input":
        _set_grpc_params(msg.inputs[0].parameters, params)
        raw = raw[1:]
    else:
        _set_grpc_params(msg.outputs[0].parameters, params)
    msg.raw_input_contents.extend(raw)
    with grpc.insecure_channel(gw.grpc_url) as channel:
        try:
            resp = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(msg, timeout=30)
        except grpc.RpcError as err:
            kind = {grpc.StatusCode.INVALID_ARGUMENT: "invalid", grpc.StatusCode.NOT_FOUND: "not found",
                    grpc.StatusCode.PERMISSION_DENIED: "denied"}.get(err.code(), str(err.code()))
            return kind, err.details()
    out = resp.outputs[0]
    if out.datatype == "BYTES":
        from tritonclient.utils import deserialize_bytes_tensor

        data = [x.decode() for x in deserialize_bytes_tensor(resp.raw_output_contents[0])]
    else:
        data = np.frombuffer(resp.raw_output_contents[0], np.int32).tolist()
    return "ok", repr(data)


@pytest.mark.parametrize("where, params, outcome", PARITY_CASES.values(), ids=PARITY_CASES.keys())
def test_same_parameters_same_outcome_over_http_and_grpc(gw, where, params, outcome):
    http = _send_http(gw, where, params)
    grpc = _send_grpc(gw, where, params)
    assert http == grpc
    assert http[0] == outcome, http
