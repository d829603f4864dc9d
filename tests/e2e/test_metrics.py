"""GET /metrics: Prometheus exposition moves with the requests served."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from prometheus_client.parser import text_string_to_metric_families


@pytest.fixture(scope="module")
def gw(shared_gateway):
    return shared_gateway


def scrape(gw) -> dict[tuple, float]:
    status, headers, body = gw.http("GET", "/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples, name, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def mlp_body(rows: int) -> bytes:
    x = np.random.default_rng(rows).standard_normal((rows, 64)).astype(np.float32)
    return json.dumps({"inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [rows, 64], "data": x.ravel().tolist()}]}).encode()


def test_counters_and_histograms_move_with_requests(gw):
    before = scrape(gw)
    for _ in range(3):
        assert gw.http("POST", "/v2/models/mlp/infer", mlp_body(2), {"Content-Type": "application/json"})[0] == 200
    bad = json.dumps({"inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]}).encode()
    assert gw.http("POST", "/v2/models/mlp/infer", bad, {"Content-Type": "application/json"})[0] == 400
    assert gw.http("POST", "/v2/models/no_such_model/infer", mlp_body(1), {"Content-Type": "application/json"})[0] == 404
    client = grpcclient.InferenceServerClient(gw.grpc_url)
    inp = grpcclient.InferInput("INPUT", [1, 64], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 64), np.float32))
    for _ in range(2):
        client.infer("mlp", [inp])
    client.close()
    after = scrape(gw)

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    mv = {"model": "mlp", "version": "1"}
    assert delta("gateway_requests_total", protocol="http", code="ok", **mv) == 3
    assert delta("gateway_requests_total", protocol="grpc", code="ok", **mv) == 2
    assert delta("gateway_requests_total", protocol="http", code="invalid_argument", **mv) == 1
    # An unknown model is counted without its name, so junk names cannot grow the label set.
    assert delta("gateway_requests_total", protocol="http", code="not_found", model="", version="") == 1
    assert delta("gateway_request_duration_seconds_count", protocol="http", **mv) == 4
    assert delta("gateway_request_duration_seconds_sum", protocol="http", **mv) > 0
    assert delta("gateway_request_duration_seconds_bucket", protocol="grpc", le="+Inf", **mv) == 2
    # Per batch: 5 requests were executed (the bad one never queued), 8 rows in all.
    assert delta("gateway_queue_duration_seconds_count", **mv) == 5
    executed = delta("gateway_batch_size_count", **mv)
    assert 1 <= executed <= 5
    assert delta("gateway_batch_size_sum", **mv) == 8
    assert delta("gateway_batch_execute_duration_seconds_count", **mv) == executed
    assert delta("gateway_executor_busy_seconds_total", **mv) > 0
    assert value(after, "gateway_executor_instances", **mv) == 1
    assert value(after, "gateway_queue_depth", **mv) == 0
    assert value(after, "gateway_cache_lookups_total", result="hit", **mv) == 0  # no cache on this branch yet


def test_histogram_buckets_are_cumulative(gw):
    samples = scrape(gw)
    buckets = sorted(
        (float(dict(labels)["le"]), v) for (name, labels), v in samples.items()
        if name == "gateway_request_duration_seconds_bucket" and dict(labels).get("model") == "mlp"
        and dict(labels)["protocol"] == "http"
    )
    counts = [v for _, v in buckets]
    assert counts == sorted(counts) and counts[-1] == value(
        samples, "gateway_request_duration_seconds_count", model="mlp", version="1", protocol="http")


def test_openmetrics_on_request(gw):
    status, headers, body = gw.http("GET", "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert status == 200 and headers["Content-Type"].startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF")


def test_process_metrics_and_no_gpu_series_without_a_gpu(gw):
    samples = scrape(gw)
    assert any(name == "process_resident_memory_bytes" for name, _ in samples)
    if "NVML" in gw.log() and "no GPU metrics" in gw.log():
        assert not any(name.startswith("gateway_gpu_") for name, _ in samples)
