"""What Triton's clients see: the statistics and config JSON field for field as Triton writes it,
and UNIMPLEMENTED / 501 with a reason for the parts of Triton's protocol this server does not offer.

The schemas are Triton's own: the HTTP documents must parse strictly (no unknown field, right
types) into tritonclient's protobuf messages and equal what the gRPC API answers.
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2, service_pb2
from tritonclient.utils import InferenceServerException

DURATIONS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output", "cache_hit", "cache_miss")
MODEL_STAT_FIELDS = {"name", "version", "last_inference", "inference_count", "execution_count", "inference_stats",
                     "response_stats", "batch_stats", "memory_usage"}
OURS = {"queue_depth"}  # our addition; Triton's clients ignore unknown keys
SERVICE = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]


def is_count(value) -> bool:
    return type(value) is int and 0 <= value < 2**63  # bool is not a count, nor is "12"


def assert_duration(d: dict, where: str) -> None:
    assert set(d) == {"count", "ns"}, where
    assert is_count(d["count"]) and is_count(d["ns"]), f"{where}: {d}"


def assert_model_stat(stat: dict) -> None:
    """Triton's $model_stat: every field present, every count and duration a JSON integer."""
    assert set(stat) - OURS == MODEL_STAT_FIELDS, sorted(stat)
    assert isinstance(stat["name"], str) and isinstance(stat["version"], str)
    for k in ("last_inference", "inference_count", "execution_count"):
        assert is_count(stat[k]), f"{k}: {stat[k]!r}"
    assert set(stat["inference_stats"]) == set(DURATIONS)
    for k in DURATIONS:
        assert_duration(stat["inference_stats"][k], f"inference_stats.{k}")
    assert stat["response_stats"] == {} and stat["memory_usage"] == []
    for b in stat["batch_stats"]:
        assert set(b) == {"batch_size", "compute_input", "compute_infer", "compute_output"}
        assert is_count(b["batch_size"]) and b["batch_size"] >= 1
        for k in ("compute_input", "compute_infer", "compute_output"):
            assert_duration(b[k], f"batch_stats[{b['batch_size']}].{k}")


def as_triton_stat(stat: dict) -> service_pb2.ModelStatistics:
    """Strict parse into tritonclient's own message: an unknown or mistyped field fails."""
    return json_format.ParseDict({k: v for k, v in stat.items() if k not in OURS}, service_pb2.ModelStatistics())


@pytest.fixture(scope="module")
def gw(shared_gateway):
    return shared_gateway


@pytest.fixture(scope="module")
def http(gw):
    c = httpclient.InferenceServerClient(gw.http_url)
    yield c
    c.close()


@pytest.fixture(scope="module")
def grpc_client(gw):
    c = grpcclient.InferenceServerClient(gw.grpc_url)
    yield c
    c.close()


def mlp_rows(http, rows: int, seed: int) -> None:
    x = np.random.default_rng(seed).standard_normal((rows, 64)).astype(np.float32)
    inp = httpclient.InferInput("INPUT", [rows, 64], "FP32")
    inp.set_data_from_numpy(x)
    http.infer("mlp", [inp])


# -- statistics ----------------------------------------------------------------------------------

def test_statistics_of_a_never_run_model_are_zeros_not_missing(gw, http, grpc_client):
    status, doc = gw.http_json("GET", "/v2/models/identity/stats")
    assert status == 200
    [stat] = doc["model_stats"]
    assert_model_stat(stat)
    assert (stat["name"], stat["version"]) == ("identity", "1")
    assert stat["inference_count"] == 0 and stat["execution_count"] == 0 and stat["last_inference"] == 0
    assert all(stat["inference_stats"][k] == {"count": 0, "ns": 0} for k in DURATIONS)
    assert stat["batch_stats"] == []
    # tritonclient.http hands the JSON over as is: numbers stay numbers.
    parsed = http.get_inference_statistics("identity")
    assert parsed["model_stats"][0]["inference_stats"]["success"] == {"count": 0, "ns": 0}
    # The same content as the gRPC answer, in Triton's own message type.
    assert as_triton_stat(stat) == grpc_client.get_inference_statistics("identity").model_stats[0]


def test_statistics_after_requests_count_rows_batches_and_durations(gw, http, grpc_client):
    before = http.get_inference_statistics("mlp", "1")["model_stats"][0]
    for i, rows in enumerate((1, 3, 2)):
        mlp_rows(http, rows, seed=i)
    after = http.get_inference_statistics("mlp", "1")["model_stats"][0]
    assert_model_stat(after)
    assert after["inference_count"] - before["inference_count"] == 6
    assert after["execution_count"] - before["execution_count"] == 3  # one request at a time: one batch each
    success = after["inference_stats"]["success"]
    assert success["count"] - before["inference_stats"]["success"]["count"] == 3
    assert success["ns"] > before["inference_stats"]["success"]["ns"]
    assert after["last_inference"] > 1_600_000_000_000  # ms since the epoch
    sizes = {b["batch_size"]: b for b in after["batch_stats"]}
    assert {1, 2, 3} <= set(sizes)
    assert all(sizes[s]["compute_infer"]["count"] >= 1 and sizes[s]["compute_infer"]["ns"] > 0 for s in (1, 2, 3))
    assert [b["batch_size"] for b in after["batch_stats"]] == sorted(sizes)
    # Nothing ran in between: the gRPC answer carries the same numbers.
    assert as_triton_stat(after) == grpc_client.get_inference_statistics("mlp", "1").model_stats[0]


@pytest.mark.parametrize("path", ["/v2/models/stats", "/v2/models/mlp/stats", "/v2/models/mlp/versions/1/stats"])
def test_every_statistics_route_sends_the_schema(gw, path):
    status, doc = gw.http_json("GET", path)
    assert status == 200 and set(doc) == {"model_stats"} and doc["model_stats"]
    for stat in doc["model_stats"]:
        assert_model_stat(stat)
        as_triton_stat(stat)
    if path == "/v2/models/stats":
        assert {s["name"] for s in doc["model_stats"]} >= {"mlp", "simple", "identity"}


def test_statistics_errors_stay_json(gw):
    status, doc = gw.http_json("GET", "/v2/models/nope/stats")
    assert status == 404 and "nope" in doc["error"]
    status, doc = gw.http_json("GET", "/v2/models/mlp/versions/9/stats")
    assert status == 404 and "error" in doc


# -- model configuration -------------------------------------------------------------------------

def test_config_json_uses_numbers_and_prints_defaults_like_triton(gw, http, grpc_client):
    status, doc = gw.http_json("GET", "/v2/models/mlp/config")
    assert status == 200
    assert doc["input"][0]["dims"] == [64] and doc["output"][0]["dims"] == [8]
    assert doc["max_batch_size"] == 32
    db = doc["dynamic_batching"]
    assert db["preferred_batch_size"] == [8, 16, 32] and db["max_queue_delay_microseconds"] == 500
    assert db["default_queue_policy"]["default_timeout_microseconds"] == 0
    assert type(db["priority_levels"]) is int and type(db["default_priority_level"]) is int
    assert doc["version_policy"] == {"latest": {"num_versions": 1}}
    # Triton prints every scalar and list, defaults included (always_print_primitive_fields).
    assert doc["input"][0]["is_shape_tensor"] is False and doc["input"][0]["format"] == "FORMAT_NONE"
    assert doc["model_warmup"] == [] and doc["runtime"] == ""
    assert doc["input"][0]["data_type"] == "TYPE_FP32"
    # Strictly Triton's ModelConfig, and the same one gRPC answers.
    assert json_format.ParseDict(doc, model_config_pb2.ModelConfig()) == grpc_client.get_model_config("mlp").config
    assert http.get_model_config("mlp")["input"][0]["dims"] == [64]


def test_config_of_a_model_without_batching(gw, grpc_client):
    status, doc = gw.http_json("GET", "/v2/models/identity/versions/1/config")
    assert status == 200
    assert doc["max_batch_size"] == grpc_client.get_model_config("identity").config.max_batch_size
    assert all(type(d) is int for t in doc["input"] + doc["output"] for d in t["dims"])
    assert json_format.ParseDict(doc, model_config_pb2.ModelConfig()) == grpc_client.get_model_config("identity").config


# -- what this server does not offer -------------------------------------------------------------

GRPC_UNSUPPORTED = [
    ("get_cuda_shared_memory_status", (), "CUDA shared memory"),
    ("register_cuda_shared_memory", ("r", b"\0" * 64, 0, 64), "CUDA shared memory"),
    ("unregister_cuda_shared_memory", (), "CUDA shared memory"),
    ("get_trace_settings", (), "trace settings"),
    ("update_trace_settings", ("mlp", {"trace_rate": "10"}), "trace settings"),
    ("get_log_settings", (), "log settings"),
    ("update_log_settings", ({"log_info": True},), "log settings"),
]


@pytest.mark.parametrize("method,args,what", GRPC_UNSUPPORTED, ids=[m for m, _, _ in GRPC_UNSUPPORTED])
def test_grpc_unsupported_rpcs_answer_unimplemented_with_a_reason(grpc_client, method, args, what):
    with pytest.raises(InferenceServerException) as err:
        getattr(grpc_client, method)(*args)
    assert err.value.status() == "StatusCode.UNIMPLEMENTED"
    assert what in err.value.message() and "not" in err.value.message()


def test_grpcio_transport_answers_unimplemented_too(model_repo, start_gateway):
    gw = start_gateway(model_repo, "--grpc-transport", "grpcio")
    c = grpcclient.InferenceServerClient(gw.grpc_url)
    try:
        for method, args, what in GRPC_UNSUPPORTED:
            with pytest.raises(InferenceServerException) as err:
                getattr(c, method)(*args)
            assert err.value.status() == "StatusCode.UNIMPLEMENTED", method
            assert what in err.value.message(), method
    finally:
        c.close()


def test_no_rpc_of_triton_service_answers_unknown(gw):
    """Each unary RPC of Triton's service, called with an empty request, gets a deliberate status:
    grpcio's generated base would answer UNKNOWN "Unexpected NotImplementedError"."""
    skip = {"RepositoryModelLoad", "RepositoryModelUnload"}  # control calls, not for a shared daemon
    codes = {}
    with grpc.insecure_channel(gw.grpc_url) as channel:
        for method in SERVICE.methods:
            if method.client_streaming or method.server_streaming or method.name in skip:
                continue
            request_cls = getattr(service_pb2, method.input_type.name)
            response_cls = getattr(service_pb2, method.output_type.name)
            call = channel.unary_unary(f"/{SERVICE.full_name}/{method.name}",
                                       request_serializer=request_cls.SerializeToString,
                                       response_deserializer=response_cls.FromString)
            try:
                call(request_cls(), timeout=10)
                codes[method.name] = "OK"
            except grpc.RpcError as err:
                codes[method.name] = err.code().name
                assert "NotImplementedError" not in (err.details() or ""), (method.name, err.details())
    assert "UNKNOWN" not in codes.values(), codes
    for name in ("CudaSharedMemoryStatus", "CudaSharedMemoryRegister", "CudaSharedMemoryUnregister",
                 "TraceSetting", "LogSettings"):
        assert codes[name] == "UNIMPLEMENTED", codes


HTTP_UNSUPPORTED = [
    ("GET", "/v2/cudasharedmemory/status", "CUDA shared memory"),
    ("GET", "/v2/cudasharedmemory/region/r0/status", "CUDA shared memory"),
    ("POST", "/v2/cudasharedmemory/region/r0/register", "CUDA shared memory"),
    ("POST", "/v2/cudasharedmemory/region/r0/unregister", "CUDA shared memory"),
    ("POST", "/v2/cudasharedmemory/unregister", "CUDA shared memory"),
    ("GET", "/v2/trace/setting", "trace settings"),
    ("POST", "/v2/trace/setting", "trace settings"),
    ("GET", "/v2/models/mlp/trace/setting", "trace settings"),
    ("POST", "/v2/models/mlp/versions/1/trace/setting", "trace settings"),
    ("GET", "/v2/logging", "log settings"),
    ("POST", "/v2/logging", "log settings"),
]


@pytest.mark.parametrize("method,path,what", HTTP_UNSUPPORTED, ids=[f"{m} {p}" for m, p, _ in HTTP_UNSUPPORTED])
def test_http_unsupported_routes_answer_501_with_a_reason(gw, method, path, what):
    status, doc = gw.http_json(method, path, {} if method == "POST" else None)
    assert status == 501
    assert set(doc) == {"error"} and what in doc["error"]


@pytest.mark.parametrize("call,args,what", [
    ("get_cuda_shared_memory_status", (), "CUDA shared memory"),
    ("register_cuda_shared_memory", ("r", {"raw_handle": {"b64": "AA=="}}, 0, 64), "CUDA shared memory"),
    ("unregister_cuda_shared_memory", (), "CUDA shared memory"),
    ("get_trace_settings", ("mlp",), "trace settings"),
    ("update_trace_settings", (None, {"trace_rate": "10"}), "trace settings"),
    ("get_log_settings", (), "log settings"),
    ("update_log_settings", ({"log_info": True},), "log settings"),
])
def test_tritonclient_http_reports_the_reason(http, call, args, what):
    with pytest.raises(InferenceServerException) as err:
        getattr(http, call)(*args)
    assert err.value.status() == "501" and what in err.value.message()
