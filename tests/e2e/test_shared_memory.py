"""System shared memory with tritonclient's own shm module, over gRPC and HTTP, against the daemon."""

from __future__ import annotations

import os
import re
import uuid

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException

from daemons import launch

PROTOCOLS = {"grpc": grpcclient, "http": httpclient}


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    import make_models

    root = tmp_path_factory.mktemp("shm") / "models"
    make_models.write_repository(str(root))
    gateway = launch(root, "--allow-client-shm", "true")
    yield gateway
    gateway.terminate()


@pytest.fixture(params=sorted(PROTOCOLS))
def proto(request):
    return request.param


@pytest.fixture
def client(gw, proto):
    module = PROTOCOLS[proto]
    c = module.InferenceServerClient(gw.grpc_url if proto == "grpc" else gw.http_url)
    c.unregister_system_shared_memory()
    yield c
    c.unregister_system_shared_memory()
    c.close()


@pytest.fixture
def regions():
    """Creates POSIX shm objects with tritonclient; destroyed at the end."""
    made = []

    def make(byte_size: int):
        key = f"/gw_test_{uuid.uuid4().hex[:12]}"
        handle = shm.create_shared_memory_region(key.strip("/"), key, byte_size)
        made.append(handle)
        return key, handle

    yield make
    for handle in made:
        shm.destroy_shared_memory_region(handle)


def output_parameters(proto: str, out) -> dict:
    if proto == "http":
        return out.get("parameters", {})
    return {k: getattr(v, v.WhichOneof("parameter_choice")) for k, v in out.parameters.items()}


def _simple_inputs(module, region: str, offset: int = 0):
    i0 = module.InferInput("INPUT0", [1, 16], "INT32")
    i0.set_shared_memory(region, 64, offset=offset)
    i1 = module.InferInput("INPUT1", [1, 16], "INT32")
    i1.set_shared_memory(region, 64, offset=offset + 64)
    return [i0, i1]


def test_inputs_and_outputs_in_shared_memory_on_simple(proto, client, regions):
    module = PROTOCOLS[proto]
    in_key, in_handle = regions(128)
    out_key, out_handle = regions(128)
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    b = np.full((1, 16), 3, dtype=np.int32)
    shm.set_shared_memory_region(in_handle, [a, b])
    client.register_system_shared_memory("in", in_key, 128)
    client.register_system_shared_memory("out", out_key, 128)
    o0 = module.InferRequestedOutput("OUTPUT0")
    o0.set_shared_memory("out", 64)
    o1 = module.InferRequestedOutput("OUTPUT1")
    o1.set_shared_memory("out", 64, offset=64)

    result = client.infer("simple", _simple_inputs(module, "in"), outputs=[o0, o1])

    np.testing.assert_array_equal(shm.get_contents_as_numpy(out_handle, np.int32, [1, 16]), a + b)
    np.testing.assert_array_equal(shm.get_contents_as_numpy(out_handle, np.int32, [1, 16], offset=64), a - b)
    # As Triton, the response names outputs in shared memory with their datatype and shape, no data
    # and no parameters (Triton's C++ client, perf_analyzer's, reads output parameters as binary ones).
    out = result.get_output("OUTPUT1")
    assert output_parameters(proto, out) == {}
    if proto == "http":
        assert out == {"name": "OUTPUT1", "datatype": "INT32", "shape": [1, 16]}
    else:
        assert (out.datatype, list(out.shape)) == ("INT32", [1, 16])
        assert list(result.get_response().raw_output_contents) == [b"", b""]


def test_mlp_input_in_shared_memory_output_in_response(gw, proto, client, regions):
    module = PROTOCOLS[proto]
    x = np.random.default_rng(3).standard_normal((4, 64)).astype(np.float32)
    key, handle = regions(x.nbytes + 100)
    shm.set_shared_memory_region(handle, [x], offset=100)
    client.register_system_shared_memory("x", key, x.nbytes, offset=100)
    inp = module.InferInput("INPUT", [4, 64], "FP32")
    inp.set_shared_memory("x", x.nbytes)

    got = client.infer("mlp", [inp]).as_numpy("OUTPUT")

    sess = ort.InferenceSession(str(gw.repository / "mlp" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(got, sess.run(["OUTPUT"], {"INPUT": x})[0], rtol=1e-5, atol=1e-6)


def test_status_lists_registered_regions(proto, client, regions):
    key_a, _ = regions(256)
    key_b, _ = regions(64)
    client.register_system_shared_memory("a", key_a, 128, offset=64)
    client.register_system_shared_memory("b", key_b, 64)
    status = client.get_system_shared_memory_status()
    if proto == "grpc":
        rows = {n: (r.key, r.offset, r.byte_size) for n, r in status.regions.items()}
        one = client.get_system_shared_memory_status("a").regions
        assert list(one) == ["a"]
    else:
        rows = {r["name"]: (r["key"], r["offset"], r["byte_size"]) for r in status}
        assert [r["name"] for r in client.get_system_shared_memory_status("a")] == ["a"]
    assert rows == {"a": (key_a, 64, 128), "b": (key_b, 0, 64)}
    with pytest.raises(InferenceServerException, match="Unable to find system shared memory region: 'nope'") as err:
        client.get_system_shared_memory_status("nope")
    assert err.value.status() in ("StatusCode.NOT_FOUND", "404")


def test_double_register_is_already_exists(proto, client, regions):
    key, _ = regions(64)
    client.register_system_shared_memory("r", key, 64)
    with pytest.raises(InferenceServerException, match="shared memory region 'r' already in manager") as err:
        client.register_system_shared_memory("r", key, 64)
    assert err.value.status() in ("StatusCode.ALREADY_EXISTS", "400")


@pytest.mark.parametrize("key, offset, size, message", [
    ("/gw_test_no_such_object", 0, 64, "unable to open shared memory object"),
    ("/../etc/passwd", 0, 64, "not a valid POSIX shared memory name"),
    (None, 32, 64, "exceeds the 64 bytes"),
    (None, 0, 0, "'byte_size' must be at least 1"),
])
def test_register_rejects_bad_regions(proto, client, regions, key, offset, size, message):
    made, _ = regions(64)
    with pytest.raises(InferenceServerException, match=message) as err:
        client.register_system_shared_memory("bad", key or made, size, offset=offset)
    assert err.value.status() in ("StatusCode.INVALID_ARGUMENT", "400")
    status = client.get_system_shared_memory_status()
    assert not (status.regions if proto == "grpc" else status)


@pytest.mark.parametrize("case, message", [
    ("offset past end", "shared_memory_offset 128 is outside region 'in'"),
    ("size past end", "shared_memory_offset 64 + shared_memory_byte_size 128 exceeds region 'in'"),
    ("size not the tensor's", "shared_memory_byte_size 32 does not match INT32 shape [1, 16]"),
])
def test_bad_offset_or_size_is_invalid_argument_naming_the_field(proto, client, regions, case, message):
    module = PROTOCOLS[proto]
    key, _ = regions(128)
    client.register_system_shared_memory("in", key, 128)
    inputs = _simple_inputs(module, "in")
    if case == "offset past end":
        inputs[1].set_shared_memory("in", 64, offset=128)
    elif case == "size past end":
        inputs[1].set_shared_memory("in", 128, offset=64)
    else:
        inputs[1].set_shared_memory("in", 32, offset=64)
    with pytest.raises(InferenceServerException, match=re.escape(message)) as err:
        client.infer("simple", inputs)
    assert err.value.status() in ("StatusCode.INVALID_ARGUMENT", "400")
    assert "input 'INPUT1'" in str(err.value)


def test_output_region_too_small(proto, client, regions):
    module = PROTOCOLS[proto]
    key, handle = regions(128)
    shm.set_shared_memory_region(handle, [np.zeros((2, 16), np.int32)])
    client.register_system_shared_memory("in", key, 128)
    out_key, _ = regions(32)
    client.register_system_shared_memory("out", out_key, 32)
    o0 = module.InferRequestedOutput("OUTPUT0")
    o0.set_shared_memory("out", 32)
    with pytest.raises(InferenceServerException, match="shared_memory_byte_size 32 is too small for the output, which needs 64") as err:
        client.infer("simple", _simple_inputs(module, "in"), outputs=[o0])
    assert err.value.status() in ("StatusCode.INVALID_ARGUMENT", "400")


def test_unknown_region_and_unregister(proto, client, regions):
    module = PROTOCOLS[proto]
    key, handle = regions(128)
    shm.set_shared_memory_region(handle, [np.ones((2, 16), np.int32)])
    with pytest.raises(InferenceServerException, match="Unable to find shared memory region: 'in'") as err:
        client.infer("simple", _simple_inputs(module, "in"))
    assert err.value.status() in ("StatusCode.NOT_FOUND", "404")  # Triton's status for an unknown region

    client.register_system_shared_memory("in", key, 128)
    assert client.infer("simple", _simple_inputs(module, "in")).as_numpy("OUTPUT0").tolist() == [[2] * 16]
    client.unregister_system_shared_memory("in")
    client.unregister_system_shared_memory("in")  # unknown name: no error, as Triton
    with pytest.raises(InferenceServerException, match="Unable to find shared memory region: 'in'"):
        client.infer("simple", _simple_inputs(module, "in"))
    # The name is free again.
    client.register_system_shared_memory("in", key, 128)
    assert client.infer("simple", _simple_inputs(module, "in")).as_numpy("OUTPUT1").tolist() == [[0] * 16]


def test_shm_input_with_data_is_rejected(gw, regions):
    key, _ = regions(128)
    status, _ = gw.http_json("POST", "/v2/systemsharedmemory/region/in/register", {"key": key, "offset": 0, "byte_size": 128})
    assert status == 200
    try:
        shm_params = {"shared_memory_region": "in", "shared_memory_byte_size": 64}
        doc = {"inputs": [
            {"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "parameters": shm_params, "data": [0] * 16},
            {"name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "parameters": {**shm_params, "shared_memory_offset": 64}},
        ]}
        status, body = gw.http_json("POST", "/v2/models/simple/infer", doc)
        assert status == 400
        assert body == {"error": "input 'INPUT0': has both 'data' and parameter 'shared_memory_region'"}
    finally:
        gw.http("POST", "/v2/systemsharedmemory/unregister")


@pytest.mark.parametrize("body, message", [
    (b"", "must be an object"),
    (b"{", "must be JSON"),
    (b'{"offset": 0, "byte_size": 8}', "'key'"),
    (b'{"key": "/k", "offset": -1, "byte_size": 8}', "'offset'"),
    (b'{"key": "/k", "byte_size": "8"}', "'byte_size'"),
])
def test_http_register_body_is_checked(gw, body, message):
    status, _, raw = gw.http("POST", "/v2/systemsharedmemory/region/r/register", body, {"Content-Type": "application/json"})
    assert status == 400 and message in raw.decode()


def test_server_metadata_advertises_system_shared_memory(gw):
    status, doc = gw.http_json("GET", "/v2")
    assert status == 200 and "system_shared_memory" in doc["extensions"]


def test_off_by_default(shared_gateway, regions):
    key, _ = regions(64)
    for module, url in ((grpcclient, shared_gateway.grpc_url), (httpclient, shared_gateway.http_url)):
        c = module.InferenceServerClient(url)
        with pytest.raises(InferenceServerException, match="allow_client_shm") as err:
            c.register_system_shared_memory("r", key, 64)
        assert err.value.status() in ("StatusCode.PERMISSION_DENIED", "403")
        inputs = _simple_inputs(module, "r")
        with pytest.raises(InferenceServerException, match="system shared memory is off"):
            c.infer("simple", inputs)


def test_a_worker_keeps_serving_after_the_object_is_removed(proto, client, regions):
    """The client unlinks its object while registered: the mapping stays valid, requests still work."""
    module = PROTOCOLS[proto]
    key, handle = regions(128)
    shm.set_shared_memory_region(handle, [np.full((1, 16), 2, np.int32), np.ones((1, 16), np.int32)])
    client.register_system_shared_memory("in", key, 128)
    os.unlink("/dev/shm/" + key.strip("/"))
    try:
        assert client.infer("simple", _simple_inputs(module, "in")).as_numpy("OUTPUT0").tolist() == [[3] * 16]
    finally:
        # destroy_shared_memory_region unlinks again: recreate the name so it has something to remove.
        open("/dev/shm/" + key.strip("/"), "wb").close()


def test_a_shrunk_object_is_refused_not_a_crash(gw, proto, client, regions):
    module = PROTOCOLS[proto]
    key, _ = regions(128)
    client.register_system_shared_memory("in", key, 128)
    os.truncate("/dev/shm/" + key.strip("/"), 16)
    with pytest.raises(InferenceServerException, match="shrank to 16 bytes") as err:
        client.infer("simple", _simple_inputs(module, "in"))
    assert err.value.status() in ("StatusCode.INVALID_ARGUMENT", "400")
    assert gw.proc.poll() is None


def test_grpcio_transport_serves_the_same_rpcs(gw, start_gateway, regions):
    other = start_gateway(gw.repository, "--allow-client-shm", "true", "--grpc-transport", "grpcio")
    c = grpcclient.InferenceServerClient(other.grpc_url)
    key, handle = regions(128)
    shm.set_shared_memory_region(handle, [np.full((1, 16), 5, np.int32), np.ones((1, 16), np.int32)])
    c.register_system_shared_memory("in", key, 128)
    assert list(c.get_system_shared_memory_status().regions) == ["in"]
    assert c.infer("simple", _simple_inputs(grpcclient, "in")).as_numpy("OUTPUT1").tolist() == [[4] * 16]
    with pytest.raises(InferenceServerException) as err:
        c.register_system_shared_memory("in", key, 128)
    assert err.value.status() == "StatusCode.ALREADY_EXISTS"
    c.unregister_system_shared_memory()
    assert not c.get_system_shared_memory_status().regions
