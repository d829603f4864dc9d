"""Traffic routing against real daemons: sticky split across two processes, key sources, fallback,
rollback guard, shadows that never delay the live answer, the admin endpoint, config validation."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import grpc
import make_models
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2 as tpb
from tritonclient.grpc import service_pb2_grpc as tpb_grpc
from daemons import ROOT, Gateway, launch

TOKEN = "s3cret-admin-token"
WAIT_S = 60
X = np.random.default_rng(7).standard_normal((1, 64)).astype(np.float32)


def broken_lookup_graph() -> onnx.GraphProto:
    """lookup's signature, but every index is pushed out of the table: fails at run time, always."""
    table = np.arange(40, dtype=np.float32).reshape(10, 4)
    return helper.make_graph(
        [helper.make_node("Add", ["INDEX", "OFFSET"], ["SHIFTED"]),
         helper.make_node("Gather", ["TABLE", "SHIFTED"], ["EMBEDDING"], axis=0)],
        "broken_lookup",
        [helper.make_tensor_value_info("INDEX", TensorProto.INT64, ["batch", 1])],
        [helper.make_tensor_value_info("EMBEDDING", TensorProto.FLOAT, ["batch", 1, 4])],
        initializer=[numpy_helper.from_array(table, "TABLE"),
                     numpy_helper.from_array(np.array(1000, dtype=np.int64), "OFFSET")],
    )


def write_model(root: Path, name: str, versions: dict[int, onnx.GraphProto], config: str) -> None:
    for v, graph in versions.items():
        make_models._save(graph, str(root / name / str(v) / "model.onnx"))
    (root / name / "model.yaml").write_text(config)


ALL = "version_policy: {all: true}\n"


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("routing") / "models"
    mlp1, mlp2 = make_models.mlp_graph(0), make_models.mlp_graph(1)
    lookup, broken = make_models.lookup_graph(), broken_lookup_graph()
    write_model(root, "mlp", {1: mlp1, 2: mlp2},
                "max_batch_size: 32\n" + ALL + "routing:\n  weights: {1: 70, 2: 30}\n")
    write_model(root, "mlp_admin", {1: mlp1, 2: mlp2}, "max_batch_size: 32\n" + ALL + "routing:\n  weights: {1: 1}\n")
    write_model(root, "lookup_fb", {1: lookup, 2: broken},
                "max_batch_size: 8\n" + ALL + "routing:\n  weights: {2: 1}\n  fallback: 1\n")
    write_model(root, "lookup_rb", {1: lookup, 2: broken}, "max_batch_size: 8\n" + ALL + (
        "routing:\n  weights: {1: 50, 2: 50}\n  champion: 1\n  fallback: 1\n"
        "  rollback: {window_s: 600, min_requests: 10, max_error_rate: 0.5}\n"))
    # The shadow is another model whose batches wait 2 s for company (ten live answers take ~50 ms):
    # slow, but never in the way.
    write_model(root, "mlp_shadowed", {1: mlp1}, "max_batch_size: 32\nrouting:\n"
                "  shadows: [{model: mlp_slow}]\n  shadow_queue_size: 4\n")
    write_model(root, "mlp_slow", {1: mlp2}, "max_batch_size: 32\ndynamic_batching:\n"
                "  preferred_batch_sizes: [32]\n  max_queue_delay_us: 2000000\n  adaptive_delay: false\n")
    # Routes to version 1, which the default policy (latest 1) does not serve.
    write_model(root, "bad_routing", {1: mlp1, 2: mlp2}, "routing:\n  weights: {1: 1, 2: 1}\n")
    return root


@pytest.fixture(scope="module")
def gw_a(repo):
    g = launch(repo, "--admin-token", TOKEN)  # GATEWAY_ADMIN_TOKEN from the environment: test_rollback_reset
    yield g
    g.terminate()


@pytest.fixture(scope="module")
def gw_b(repo):
    # No admin token: admin endpoints are off. A process of its own: the split must agree across
    # processes (a per-process hash seed would not).
    g = launch(repo, process=True)
    yield g
    g.terminate()


def mlp_input(x=X) -> grpcclient.InferInput:
    inp = grpcclient.InferInput("INPUT", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return inp


def stream_versions(gw: Gateway, model: str, keys: list[str]) -> dict[str, str]:
    """key -> answering version, each request keyed by the route_key parameter, over one gRPC stream.

    Triton's generated messages straight on a grpcio stream: tritonclient's per-request wrapping
    costs the client more than the daemon spends serving (10,000 requests here)."""
    template = tpb.ModelInferRequest(model_name=model)
    template.inputs.add(name="INPUT", datatype="FP32", shape=list(X.shape))
    template.raw_input_contents.append(X.tobytes())

    def requests():
        for k in keys:
            req = tpb.ModelInferRequest()
            req.CopyFrom(template)
            req.id = k
            req.parameters["route_key"].string_param = k
            yield req

    out = {}
    with grpc.insecure_channel(gw.grpc_url) as channel:
        for resp in tpb_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(requests(), timeout=WAIT_S * 2):
            assert not resp.error_message, resp.error_message
            out[resp.infer_response.id] = resp.infer_response.model_version
    assert len(out) == len(keys)
    return out


def http_infer(gw: Gateway, model: str, headers: dict | None = None, parameters: dict | None = None, data=None,
               version: str = ""):
    if data is None:
        data = {"name": "INPUT", "datatype": "FP32", "shape": [1, 64], "data": X.ravel().tolist()}
    body = {"inputs": [data], **({"parameters": parameters} if parameters else {})}
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
    status, hdrs, raw = gw.http("POST", path, json.dumps(body).encode(),
                                {"Content-Type": "application/json", **(headers or {})})
    return status, {k.lower(): v for k, v in hdrs.items()}, json.loads(raw)


def lookup_data(i: int) -> dict:
    return {"name": "INDEX", "datatype": "INT64", "shape": [1, 1], "data": [i]}


def routing_status(gw: Gateway, model: str) -> dict:
    status, doc = gw.http_json("GET", f"/v2/models/{model}/routing")
    assert status == 200, doc
    return doc


def test_split_is_within_one_and_a_half_percent_and_sticky_across_two_gateways(gw_a, gw_b):
    keys = [f"user-{i}" for i in range(10_000)]
    a = stream_versions(gw_a, "mlp", keys)
    b = stream_versions(gw_b, "mlp", keys)
    assert a == b  # every key got the same version from both processes
    counts = Counter(a.values())
    assert abs(counts["1"] / len(keys) - 0.70) <= 0.015, counts
    assert abs(counts["2"] / len(keys) - 0.30) <= 0.015, counts
    st = routing_status(gw_a, "mlp")
    assert st["versions"]["1"]["routed"] >= counts["1"] and st["source"] == "file"


def test_header_metadata_and_parameter_keys_agree_and_the_version_is_shown(gw_a, gw_b):
    keys = [f"acct-{i}" for i in range(30)]
    by_param = stream_versions(gw_b, "mlp", keys)
    client = grpcclient.InferenceServerClient(gw_a.grpc_url)
    try:
        for k in keys:
            status, headers, doc = http_infer(gw_a, "mlp", headers={"x-route-key": k})
            assert status == 200 and headers["x-model-version"] == doc["model_version"] == by_param[k]
            status, headers, doc = http_infer(gw_a, "mlp", parameters={"route_key": k})
            assert doc["model_version"] == by_param[k]
            resp = client.infer("mlp", [mlp_input()], headers={"x-route-key": k})
            assert resp.get_response().model_version == by_param[k]
    finally:
        client.close()
    assert len(set(by_param.values())) == 2  # the keys really spread over both versions
    # Naming a version bypasses the split.
    status, headers, doc = http_infer(gw_a, "mlp", headers={"x-route-key": keys[0]},
                                      version="2" if by_param[keys[0]] == "1" else "1")
    assert doc["model_version"] != by_param[keys[0]] and headers["x-model-version"] == doc["model_version"]


def test_a_failing_version_is_answered_by_the_fallback_with_the_version_shown(gw_a):
    status, headers, doc = http_infer(gw_a, "lookup_fb", data=lookup_data(3))
    assert status == 200 and doc["model_version"] == "1" and headers["x-model-version"] == "1"
    assert doc["outputs"][0]["data"] == [12.0, 13.0, 14.0, 15.0]
    status, _, doc = http_infer(gw_a, "lookup_fb", data=lookup_data(3), version="2")
    assert status == 500 and "out of data bounds" in doc["error"]  # explicit version: no fallback
    v = routing_status(gw_a, "lookup_fb")["versions"]
    assert v["2"]["failed"] >= 1 and v["2"]["fell_back"] >= 1 and v["1"]["answered_as_fallback"] >= 1


def test_rollback_guard_trips_on_a_failing_canary_and_the_champion_is_untouched(gw_a):
    for i in range(300):
        status, _, doc = http_infer(gw_a, "lookup_rb", headers={"x-route-key": f"u{i}"}, data=lookup_data(i % 10))
        assert status == 200 and doc["model_version"] == "1"
        if routing_status(gw_a, "lookup_rb")["rollbacks"]:
            break
    st = routing_status(gw_a, "lookup_rb")
    canary, champion = st["versions"]["2"], st["versions"]["1"]
    assert canary["effective_weight"] == 0 and "error rate" in canary["rolled_back"]["reason"]
    assert champion["rolled_back"] is None and champion["effective_weight"] == 50 and champion["failed"] == 0
    routed = canary["routed"]
    for i in range(1000, 1040):
        http_infer(gw_a, "lookup_rb", headers={"x-route-key": f"u{i}"}, data=lookup_data(1))
    assert routing_status(gw_a, "lookup_rb")["versions"]["2"]["routed"] == routed  # no traffic since
    gw_a.wait_for_log(re.compile(r"rollback: model lookup_rb version 2 weight set to 0"), timeout=WAIT_S)
    # An operator resets it through the admin endpoint.
    reset = "/v2/admin/models/lookup_rb/routing/reset"
    auth = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    assert gw_a.http("POST", reset, b'{"versions": "2"}', auth)[0] == 400
    status, _, raw = gw_a.http("POST", reset, b'{"versions": [2]}', auth)
    doc = json.loads(raw)
    assert status == 200 and doc["versions"]["2"]["effective_weight"] == 50 and doc["versions"]["2"]["rolled_back"] is None


def test_a_slow_shadow_never_delays_the_live_answer_and_its_queue_bound_drops(gw_a):
    rng = np.random.default_rng(3)
    sent = 10
    for _ in range(sent):
        x = rng.standard_normal((1, 64)).astype(np.float32)
        status, _, doc = http_infer(gw_a, "mlp_shadowed", data={
            "name": "INPUT", "datatype": "FP32", "shape": [1, 64], "data": x.ravel().tolist()})
        assert status == 200 and doc["model_version"] == "1"
    # All live answers are back; the shadow copies still wait in mlp_slow's 2 s batch window.
    st = routing_status(gw_a, "mlp_shadowed")
    (pair,) = st["shadows"]
    assert pair["model"] == "mlp_slow" and pair["compared"] == 0
    assert pair["sent"] == 4 and pair["dropped"] == sent - 4
    assert st["shadow_queue"] == {"size": 4, "pending": 4}
    gw_a.wait_until(lambda: routing_status(gw_a, "mlp_shadowed")["shadows"][0]["compared"] == 4,
                    timeout=WAIT_S, what="the shadow comparisons")
    pair = routing_status(gw_a, "mlp_shadowed")["shadows"][0]
    assert pair["agreement_exact"] == 0.0 and pair["mean_abs_diff"] > 0  # different weights: they disagree
    assert routing_status(gw_a, "mlp_shadowed")["predictions"]["mlp_slow:1"]["rows"] == 4


def test_admin_endpoint_is_refused_without_the_token_and_applied_with_it(gw_a, gw_b):
    path = "/v2/admin/models/mlp_admin/routing"
    body = json.dumps({"weights": {"2": 1}}).encode()
    status, _, raw = gw_a.http("PUT", path, body)
    assert status == 401 and "Bearer" in json.loads(raw)["error"]
    status, _, _ = gw_a.http("PUT", path, body, {"Authorization": "Bearer wrong"})
    assert status == 403
    status, _, _ = gw_b.http("PUT", path, body, {"Authorization": f"Bearer {TOKEN}"})
    assert status == 404  # gateway B has no token: the endpoint is off
    assert http_infer(gw_a, "mlp_admin")[2]["model_version"] == "1"  # nothing changed

    auth = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    status, _, raw = gw_a.http("PUT", path, json.dumps({"weights": {"3": 1}}).encode(), auth)
    assert status == 400 and "routing.weights.3" in json.loads(raw)["error"]
    status, _, raw = gw_a.http("PUT", path, body, auth)
    assert status == 200 and json.loads(raw)["source"] == "admin"
    assert {http_infer(gw_a, "mlp_admin", headers={"x-route-key": f"k{i}"})[2]["model_version"] for i in range(10)} == {"2"}
    gw_a.wait_for_log(re.compile(r"admin: routing of model mlp_admin set to"), timeout=WAIT_S)
    status, _, raw = gw_a.http("GET", path, None, auth)
    assert status == 200 and json.loads(raw)["config"]["weights"] == {"2": 1.0}
    status, _, raw = gw_a.http("DELETE", path, None, auth)
    assert status == 200 and json.loads(raw)["source"] == "file"
    assert http_infer(gw_a, "mlp_admin")[2]["model_version"] == "1"


def test_routing_to_an_unserved_version_is_rejected_naming_the_field(gw_a, repo):
    status, _, raw = gw_a.http("POST", "/v2/repository/index", b"{}", {"Authorization": f"Bearer {TOKEN}"})
    rows = json.loads(raw)
    (row,) = [r for r in rows if r["name"] == "bad_routing"]
    assert row["state"] == "UNAVAILABLE" and "routing.weights.1" in row["reason"] and "version_policy" in row["reason"]
    check = subprocess.run([sys.executable, "-m", "gateway", "check", str(repo)],
                           capture_output=True, text=True, cwd=str(ROOT), timeout=WAIT_S)
    assert check.returncode == 1 and "bad_routing/model.yaml: routing.weights.1: version 1 is not served" in check.stdout
