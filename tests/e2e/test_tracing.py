"""Traces through the gateway's real OTLP/HTTP exporter into a receiver started by the test."""

from __future__ import annotations

import json
import secrets
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from otlp_receiver import OtlpGrpcReceiver, OtlpReceiver
from tritonclient.utils import InferenceServerException

SERVER_KIND = 2  # opentelemetry.proto.trace.v1.Span.SpanKind.SPAN_KIND_SERVER
STATUS_ERROR = 2
HOPS = {"decode", "queue wait", "batch execute", "encode"}


@pytest.fixture(scope="module")
def receiver():
    r = OtlpReceiver()
    yield r
    r.close()


def otel_env(receiver: OtlpReceiver, **extra: str) -> dict[str, str]:
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_SERVICE_NAME": "gateway-under-test",
        "OTEL_BSP_SCHEDULE_DELAY": "50",  # ms: spans reach the receiver soon after each request
        **extra,
    }


@pytest.fixture(scope="module")
def traced(receiver, tmp_path_factory):
    """A gateway with tracing on (auto: the endpoint is set); mlp batches 4 rows, waiting up to 10 s for them."""
    import make_models
    from daemons import Gateway

    root = tmp_path_factory.mktemp("traced") / "models"
    make_models.write_repository(str(root), ["mlp", "simple"])
    (root / "mlp" / "model.yaml").write_text(
        "max_batch_size: 8\ndynamic_batching:\n  preferred_batch_sizes: [4]\n  max_queue_delay_us: 10000000\n  adaptive_delay: false\n"
    )
    gw = Gateway(root, env=otel_env(receiver))
    yield gw
    gw.terminate()


def traceparent() -> tuple[str, str, str]:
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


def simple_body(request_id: str = "") -> bytes:
    doc = {
        "inputs": [
            {"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "data": list(range(16))},
            {"name": "INPUT1", "datatype": "INT32", "shape": [1, 16], "data": [1] * 16},
        ]
    }
    if request_id:
        doc["id"] = request_id
    return json.dumps(doc).encode()


def by_name(spans) -> dict:
    names = [s.name for s in spans]
    assert len(names) == len(set(names)), names
    return {s.name: s for s in spans}


def test_http_request_continues_the_callers_trace(traced, receiver):
    header, trace_id, caller_span = traceparent()
    status, _, _ = traced.http("POST", "/v2/models/simple/infer", simple_body("h-1"),
                               {"Content-Type": "application/json", "traceparent": header})
    assert status == 200
    spans = by_name(receiver.trace(trace_id, 5))
    root = spans["POST /v2/models/{model}/infer"]
    assert root.parent_span_id == caller_span
    assert root.kind == SERVER_KIND
    assert root.service == "gateway-under-test"
    assert root.attributes["gateway.model.name"] == "simple"
    assert root.attributes["http.response.status_code"] == 200
    assert set(spans) == HOPS | {root.name}
    for name in HOPS:
        child = spans[name]
        assert child.parent_span_id == root.span_id, name
        assert root.start_ns <= child.start_ns <= child.end_ns <= root.end_ns, name
    # The hops follow one another.
    assert spans["decode"].end_ns <= spans["queue wait"].start_ns
    assert spans["queue wait"].end_ns <= spans["batch execute"].start_ns
    assert spans["batch execute"].end_ns <= spans["encode"].start_ns
    assert spans["batch execute"].attributes["gateway.batch.size"] == 1


def test_grpc_request_continues_the_callers_trace(traced, receiver):
    header, trace_id, caller_span = traceparent()
    client = grpcclient.InferenceServerClient(traced.grpc_url)
    x = np.arange(32, dtype=np.int32).reshape(2, 16)
    ins = [grpcclient.InferInput("INPUT0", [2, 16], "INT32"), grpcclient.InferInput("INPUT1", [2, 16], "INT32")]
    ins[0].set_data_from_numpy(x)
    ins[1].set_data_from_numpy(x)
    client.infer("simple", ins, headers={"traceparent": header})
    client.close()
    spans = by_name(receiver.trace(trace_id, 5))
    root = spans["inference.GRPCInferenceService/ModelInfer"]
    assert root.parent_span_id == caller_span and root.kind == SERVER_KIND
    assert root.attributes["rpc.system"] == "grpc" and root.attributes["rpc.grpc.status_code"] == 0
    assert all(spans[n].parent_span_id == root.span_id for n in HOPS)
    assert spans["batch execute"].attributes["gateway.batch.size"] == 2


def test_requests_batched_together_share_the_batch_size(traced, receiver):
    """Two 2-row requests complete mlp's preferred batch of 4; each trace shows that batch."""
    x = np.random.default_rng(0).standard_normal((2, 64)).astype(np.float32)
    body = json.dumps({"inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [2, 64], "data": x.ravel().tolist()}]}).encode()
    parents = [traceparent() for _ in range(2)]

    def send(header):
        return traced.http("POST", "/v2/models/mlp/infer", body, {"Content-Type": "application/json", "traceparent": header})[0]

    with ThreadPoolExecutor(2) as pool:
        assert list(pool.map(send, [p[0] for p in parents])) == [200, 200]
    executes = []
    for _, trace_id, _ in parents:
        spans = by_name(receiver.trace(trace_id, 5))
        executes.append(spans["batch execute"])
    for span in executes:
        assert span.attributes["gateway.batch.size"] == 4
        assert span.attributes["gateway.batch.requests"] == 2
    # One batch seen from both traces (each trace maps the monotonic clock to wall time on its own: ~us apart).
    assert abs(executes[0].start_ns - executes[1].start_ns) < 1_000_000


def test_failed_request_span_has_error_status(traced, receiver):
    header, trace_id, _ = traceparent()
    bad = json.dumps({"inputs": [{"name": "NOPE", "datatype": "INT32", "shape": [1, 16], "data": [0] * 16}]}).encode()
    status, _, _ = traced.http("POST", "/v2/models/simple/infer", bad, {"Content-Type": "application/json", "traceparent": header})
    assert status == 400
    spans = by_name(receiver.trace(trace_id, 2))
    assert set(spans) == {"POST /v2/models/{model}/infer", "decode"}  # validation failed before any queue
    root = spans["POST /v2/models/{model}/infer"]
    assert root.status_code == STATUS_ERROR
    assert "NOPE" in root.status_message
    assert root.attributes["http.response.status_code"] == 400


def test_grpc_failure_is_traced_and_status_kept(traced, receiver):
    header, trace_id, _ = traceparent()
    client = grpcclient.InferenceServerClient(traced.grpc_url)
    with pytest.raises(InferenceServerException) as err:
        client.infer("no_such_model", [grpcclient.InferInput("X", [1], "INT32").set_data_from_numpy(np.zeros(1, np.int32))],
                     headers={"traceparent": header})
    client.close()
    assert err.value.status() == "StatusCode.NOT_FOUND"
    spans = by_name(receiver.trace(trace_id, 2))
    assert set(spans) == {"inference.GRPCInferenceService/ModelInfer", "decode"}  # it never reached a queue
    root = spans["inference.GRPCInferenceService/ModelInfer"]
    assert root.status_code == STATUS_ERROR and root.attributes["rpc.grpc.status_code"] == 5


def test_sample_ratio_zero_keeps_only_callers_sampled_traces(receiver, model_repo, start_gateway):
    gw = start_gateway(model_repo, "--trace-sample-ratio", "0", env=otel_env(receiver, OTEL_SERVICE_NAME="sampled-test"))
    unsampled_header, unsampled_trace, _ = traceparent()
    unsampled_header = unsampled_header[:-2] + "00"  # the caller did not sample: neither do we
    assert gw.http("POST", "/v2/models/simple/infer", simple_body(), {"Content-Type": "application/json"})[0] == 200
    assert gw.http("POST", "/v2/models/simple/infer", simple_body(),
                   {"Content-Type": "application/json", "traceparent": unsampled_header})[0] == 200
    header, trace_id, caller = traceparent()
    assert gw.http("POST", "/v2/models/simple/infer", simple_body(),
                   {"Content-Type": "application/json", "traceparent": header})[0] == 200
    spans = receiver.trace(trace_id, 5)
    assert any(s.parent_span_id == caller for s in spans)
    # Spans leave in the order they ended: the two earlier requests would have arrived first.
    assert {s.trace_id for s in receiver.spans if s.service == "sampled-test"} == {trace_id}


def test_unsupported_otlp_protocol_is_a_clear_startup_error(model_repo, receiver):
    import subprocess
    import sys

    from daemons import ROOT

    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--host", "127.0.0.1", "--http-port", "0", "--grpc-port", "0",
         "--model-repository", str(model_repo)],
        env={**__import__("os").environ, **otel_env(receiver, OTEL_EXPORTER_OTLP_PROTOCOL="http/json")},
        capture_output=True, text=True, timeout=60, cwd=str(ROOT),
    )
    assert proc.returncode == 2
    assert "OTEL_EXPORTER_OTLP_PROTOCOL" in proc.stderr and "http/json" in proc.stderr


def test_otlp_grpc_exporter(model_repo, start_gateway):
    receiver = OtlpGrpcReceiver()
    try:
        gw = start_gateway(model_repo, env=otel_env(receiver, OTEL_EXPORTER_OTLP_PROTOCOL="grpc"))
        header, trace_id, caller = traceparent()
        assert gw.http("POST", "/v2/models/simple/infer", simple_body(),
                       {"Content-Type": "application/json", "traceparent": header})[0] == 200
        spans = by_name(receiver.trace(trace_id, 5))
        assert spans["POST /v2/models/{model}/infer"].parent_span_id == caller
        assert set(spans) == HOPS | {"POST /v2/models/{model}/infer"}
    finally:
        receiver.close()
