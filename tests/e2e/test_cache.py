"""The exact response cache seen from outside: daemons as subprocesses, a real
redis-server, tritonclient over gRPC and plain HTTP/JSON."""

from __future__ import annotations

import concurrent.futures
import re
import shutil
import time

import numpy as np
import pytest
import redis as redis_sync
import tritonclient.grpc as grpcclient
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

import make_models

WAIT_S = 30
SIMPLE_CACHED = "max_batch_size: 8\ncache:\n  exact: true\n  ttl_s: 300\n"


def write(root, name, config: str):
    make_models.write_repository(str(root), [name])
    (root / name / "model.yaml").write_text(config)


def simple_body(offset: int = 0, **parameters) -> dict:
    body = {
        "inputs": [
            {"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "data": [i + offset for i in range(16)]},
            {"name": "INPUT1", "datatype": "INT32", "shape": [1, 16], "data": [1] * 16},
        ]
    }
    if parameters:
        body["parameters"] = parameters
    return body


def infer_http(gw, model: str, body: dict) -> dict:
    status, doc = gw.http_json("POST", f"/v2/models/{model}/infer", body)
    assert status == 200, doc
    return doc


def hit(doc: dict) -> bool:
    return doc.get("parameters", {}).get("cache_hit", False)


def model_stats(gw, model: str, version: str = "") -> dict:
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/stats"
    status, doc = gw.http_json("GET", path)
    assert status == 200, doc
    stats = doc["model_stats"][0]
    # Protobuf JSON writes int64 as strings and leaves zeros out.
    return {k: int(stats.get(k, 0)) for k in ("execution_count", "inference_count")}


def cache_stats(gw) -> dict:
    status, doc = gw.http_json("GET", "/v2/cache/stats")
    assert status == 200, doc
    return doc


def tier(gw, model: str, name: str) -> dict:
    return cache_stats(gw)["models"].get(model, {}).get("tiers", {}).get(name, {})


def mlp_input(value: float):
    inp = grpcclient.InferInput("INPUT", [1, 64], "FP32")
    inp.set_data_from_numpy(np.full((1, 64), value, dtype=np.float32))
    return inp


def test_in_process_hits_over_http_and_grpc(tmp_path, start_gateway):
    root = tmp_path / "models"
    write(root, "simple", SIMPLE_CACHED)
    gw = start_gateway(root)
    first = infer_http(gw, "simple", simple_body())
    second = infer_http(gw, "simple", simple_body())
    assert not hit(first) and hit(second)
    assert second["outputs"] == first["outputs"]
    assert second["outputs"][0]["data"] == [i + 1 for i in range(16)]
    assert model_stats(gw, "simple")["execution_count"] == 1

    # The key is the tensors, not the transport: gRPC with raw contents hits the same entry.
    client = grpcclient.InferenceServerClient(gw.grpc_url)
    inputs = [grpcclient.InferInput("INPUT0", [1, 16], "INT32"), grpcclient.InferInput("INPUT1", [1, 16], "INT32")]
    inputs[0].set_data_from_numpy(np.arange(16, dtype=np.int32).reshape(1, 16))
    inputs[1].set_data_from_numpy(np.ones((1, 16), dtype=np.int32))
    result = client.infer("simple", inputs, request_id="grpc-1")
    response = result.get_response()
    assert response.parameters["cache_hit"].bool_param is True
    assert response.id == "grpc-1"
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), np.arange(16, dtype=np.int32).reshape(1, 16) - 1)
    stats = client.get_inference_statistics("simple").model_stats[0]
    assert stats.execution_count == 1
    assert stats.inference_stats.cache_hit.count == 2
    assert stats.inference_stats.cache_miss.count == 1
    assert stats.inference_stats.success.count == 3
    config = client.get_model_config("simple").config
    assert config.response_cache.enable is True
    client.close()

    # A different input misses; the opt-out parameter runs the model and leaves the cache alone.
    assert not hit(infer_http(gw, "simple", simple_body(offset=5)))
    assert not hit(infer_http(gw, "simple", simple_body(cache=False)))
    assert model_stats(gw, "simple")["execution_count"] == 3
    status, doc = gw.http_json("POST", "/v2/models/simple/infer", simple_body(cache="no"))
    assert status == 400 and "'cache' must be true or false" in doc["error"]
    memory = tier(gw, "simple", "memory")
    assert memory["hits"] == 2 and memory["misses"] == 2 and memory["entries"] == 2


def test_models_without_the_cache_section_are_not_cached(tmp_path, start_gateway):
    root = tmp_path / "models"
    write(root, "simple", "max_batch_size: 8\n")
    gw = start_gateway(root)
    assert not any(hit(infer_http(gw, "simple", simple_body())) for _ in range(3))
    assert model_stats(gw, "simple")["execution_count"] == 3
    assert cache_stats(gw)["models"] == {}
    status, doc = gw.http_json("POST", "/v2/models/simple/infer", simple_body(cache=0))
    assert status == 400 and "'cache' must be true or false" in doc["error"]


def test_a_new_version_never_serves_an_old_answer(tmp_path, start_gateway):
    root = tmp_path / "models"
    write(root, "simple", SIMPLE_CACHED)
    gw = start_gateway(root)
    assert not hit(infer_http(gw, "simple", simple_body()))
    assert hit(infer_http(gw, "simple", simple_body()))
    shutil.copytree(root / "simple" / "1", root / "simple" / "2")
    gw.wait_until(lambda: gw.http_json("GET", "/v2/models/simple")[1].get("versions") == ["2"], WAIT_S, "version 2")
    doc = infer_http(gw, "simple", simple_body())
    assert doc["model_version"] == "2" and not hit(doc)
    assert model_stats(gw, "simple", "2")["execution_count"] == 1


def test_concurrent_identical_requests_execute_once(tmp_path, start_gateway):
    root = tmp_path / "models"
    # A long batching window holds the first request in the queue while the others arrive.
    write(root, "mlp", "max_batch_size: 8\ndynamic_batching:\n  max_queue_delay_us: 2000000\n  adaptive_delay: false\ncache:\n  exact: true\n")
    gw = start_gateway(root)
    client = grpcclient.InferenceServerClient(gw.grpc_url)
    n = 16
    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        results = list(pool.map(lambda i: client.infer("mlp", [mlp_input(0.25)]).as_numpy("OUTPUT"), range(n)))
    assert all(np.array_equal(r, results[0]) for r in results)
    stats = client.get_inference_statistics("mlp").model_stats[0]
    assert stats.execution_count == 1 and stats.inference_count == 1
    assert stats.inference_stats.success.count == n
    doc = cache_stats(gw)["models"]["mlp"]
    # Every request but one was answered by that one execution: coalesced or, if late, a hit.
    assert doc.get("coalesced", 0) + doc["tiers"]["memory"]["hits"] == n - 1
    client.close()


# A batching window far longer than any request below: a lone request waits in the queue for it,
# so identical requests sent meanwhile join its flight.
HELD = "max_batch_size: 8\ndynamic_batching:\n  max_queue_delay_us: 3000000\n  adaptive_delay: false\ncache:\n  exact: true\n"


def queue_depth(gw, model: str) -> int:
    status, doc = gw.http_json("GET", f"/v2/models/{model}/stats")
    assert status == 200, doc
    return doc["model_stats"][0]["queue_depth"]


def metric(gw, name: str, **labels) -> float:
    status, _, body = gw.http("GET", "/metrics")
    assert status == 200
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def simple_grpc_inputs(offset: int):
    inputs = [grpcclient.InferInput("INPUT0", [1, 16], "INT32"), grpcclient.InferInput("INPUT1", [1, 16], "INT32")]
    inputs[0].set_data_from_numpy((np.arange(16, dtype=np.int32) + offset).reshape(1, 16))
    inputs[1].set_data_from_numpy(np.ones((1, 16), dtype=np.int32))
    return inputs


def test_a_coalesced_request_keeps_its_own_deadline(tmp_path, start_gateway):
    """A request waiting for an identical one's answer gets DEADLINE_EXCEEDED when its own
    timeout (parameter or gRPC deadline) passes; the one running goes on and its answer is cached."""
    root = tmp_path / "models"
    write(root, "simple", HELD)
    gw = start_gateway(root)
    client = grpcclient.InferenceServerClient(gw.grpc_url)
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        # Three leaders (three keys) wait in the queue together for the batching window.
        leaders = [pool.submit(gw.http_json, "POST", "/v2/models/simple/infer", simple_body(offset=k)) for k in range(3)]
        gw.wait_until(lambda: queue_depth(gw, "simple") == 3, WAIT_S, "the three leaders to queue")

        start = time.monotonic()
        status, doc = gw.http_json("POST", "/v2/models/simple/infer", simple_body(offset=0, timeout=100_000))
        http_s = time.monotonic() - start
        assert status == 504, doc
        assert "identical request" in doc["error"]

        start = time.monotonic()
        with pytest.raises(InferenceServerException) as by_parameter:
            client.infer("simple", simple_grpc_inputs(1), timeout=100_000)  # the request's timeout parameter, us
        parameter_s = time.monotonic() - start
        assert by_parameter.value.status() == "StatusCode.DEADLINE_EXCEEDED"

        start = time.monotonic()
        with pytest.raises(InferenceServerException) as by_deadline:
            client.infer("simple", simple_grpc_inputs(2), client_timeout=0.2)  # grpc-timeout
        deadline_s = time.monotonic() - start
        assert by_deadline.value.status() == "StatusCode.DEADLINE_EXCEEDED"
        # Each answered at its own deadline (0.1 s, 0.1 s, 0.2 s), long before the leaders' 3 s window ended.
        assert max(http_s, parameter_s, deadline_s) < 1.5, (http_s, parameter_s, deadline_s)
        assert all(not f.done() for f in leaders)

        for k, f in enumerate(leaders):
            status, doc = f.result(timeout=WAIT_S)
            assert status == 200 and not hit(doc), doc
            assert doc["outputs"][0]["data"] == [i + k + 1 for i in range(16)]
    # The leaders' answers were cached: the same requests now hit without running the model.
    for k in range(3):
        assert hit(infer_http(gw, "simple", simple_body(offset=k)))
    assert model_stats(gw, "simple")["execution_count"] == 1
    assert metric(gw, "gateway_requests_total", model="simple", protocol="http", code="deadline_exceeded") == 1
    client.close()


def test_coalesced_requests_are_counted_and_marked(tmp_path, start_gateway):
    """20 identical requests at once: one runs the model (the one miss), 19 are answered by it,
    counted as coalesced hits everywhere and marked so."""
    root = tmp_path / "models"
    write(root, "simple", HELD)
    gw = start_gateway(root)
    n = 20
    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        answers = list(pool.map(lambda _: infer_http(gw, "simple", simple_body(offset=7)), range(n)))
    assert all(a["outputs"] == answers[0]["outputs"] for a in answers)
    markers = sorted((a.get("parameters", {}).get("cache_coalesced", False), hit(a)) for a in answers)
    assert markers == [(False, False)] + [(True, False)] * (n - 1)

    client = grpcclient.InferenceServerClient(gw.grpc_url)
    stats = client.get_inference_statistics("simple").model_stats[0]
    assert stats.execution_count == 1
    assert stats.inference_stats.cache_miss.count == 1
    assert stats.inference_stats.cache_hit.count == n - 1  # they did not run the model
    assert stats.inference_stats.success.count == n
    client.close()
    assert metric(gw, "gateway_cache_lookups_total", model="simple", result="miss") == 1
    assert metric(gw, "gateway_cache_lookups_total", model="simple", result="hit") == 0
    assert metric(gw, "gateway_cache_lookups_total", model="simple", result="coalesced") == n - 1
    doc = cache_stats(gw)["models"]["simple"]
    memory = doc["tiers"]["memory"]
    # The tier and the service agree: hits + misses + coalesced = lookups.
    assert (memory["hits"], memory["misses"], doc["coalesced"]) == (0, 1, n - 1)
    assert metric(gw, "gateway_cache_coalesced_requests_total", model="simple") == n - 1


# ------------------------------------------------------------------ shared through Redis


def shared_args(redis_server) -> tuple[str, ...]:
    # A generous bound: a loaded 2-core test machine must not turn hits into timeouts.
    return ("--cache-url", redis_server.url, "--cache-timeout-ms", "500")


def test_two_gateways_share_the_exact_cache(tmp_path, start_gateway, redis_server):
    root = tmp_path / "models"
    write(root, "simple", SIMPLE_CACHED)
    a = start_gateway(root, *shared_args(redis_server))
    b = start_gateway(root, *shared_args(redis_server))
    assert not hit(infer_http(a, "simple", simple_body(offset=3)))
    a.wait_until(lambda: tier(a, "simple", "redis").get("stores") == 1, WAIT_S, "A's store into Redis")
    doc = infer_http(b, "simple", simple_body(offset=3))
    assert hit(doc)
    assert doc["outputs"][0]["data"] == [i + 4 for i in range(16)]
    assert model_stats(b, "simple")["execution_count"] == 0
    assert tier(b, "simple", "redis")["hits"] == 1
    assert tier(b, "simple", "memory")["misses"] == 1
    # B now holds it in-process as well.
    assert hit(infer_http(b, "simple", simple_body(offset=3)))
    assert tier(b, "simple", "memory")["hits"] == 1
    assert cache_stats(b)["shared"]["up"] is True


def test_shared_entries_expire_with_their_ttl(tmp_path, start_gateway, redis_server):
    root = tmp_path / "models"
    # Long enough that the hit below (two requests later, ~10 ms) comes before expiry even on a loaded machine.
    write(root, "simple", "max_batch_size: 8\ncache:\n  exact: true\n  ttl_s: 3\n  max_bytes: 0\n")
    gw = start_gateway(root, *shared_args(redis_server))
    assert not hit(infer_http(gw, "simple", simple_body()))
    gw.wait_until(lambda: tier(gw, "simple", "redis").get("stores") == 1, WAIT_S, "the store into Redis")
    admin = redis_sync.Redis.from_url(redis_server.url)
    (key,) = admin.keys("gw:x:simple:1:*")
    assert 0 < admin.pttl(key) <= 3000
    assert hit(infer_http(gw, "simple", simple_body()))
    gw.wait_until(lambda: not admin.exists(key), WAIT_S, "Redis to expire the entry")
    assert not hit(infer_http(gw, "simple", simple_body()))
    assert model_stats(gw, "simple")["execution_count"] == 2


def test_redis_killed_and_back(tmp_path, start_gateway, redis_server):
    root = tmp_path / "models"
    write(root, "simple", "max_batch_size: 8\ncache:\n  exact: true\n  max_bytes: 0\n")
    gw = start_gateway(root, *shared_args(redis_server))
    infer_http(gw, "simple", simple_body())
    gw.wait_until(lambda: tier(gw, "simple", "redis").get("stores") == 1, WAIT_S, "the store into Redis")
    assert hit(infer_http(gw, "simple", simple_body()))

    redis_server.stop()
    for i in range(10):  # every request is still answered, and correctly
        doc = infer_http(gw, "simple", simple_body(offset=i))
        assert doc["outputs"][0]["data"] == [j + i + 1 for j in range(16)] and not hit(doc)
    stats = cache_stats(gw)
    assert stats["shared"]["up"] is False
    redis = stats["models"]["simple"]["tiers"]["redis"]
    assert redis["errors"] >= 1
    assert redis["errors"] + redis["bypassed"] >= 10
    assert model_stats(gw, "simple")["execution_count"] == 11
    gw.wait_for_log(re.compile(r"shared cache redis://\S+ failed"), timeout=WAIT_S)

    redis_server.start()  # same port, empty: the next miss stores, the one after hits
    gw.wait_until(lambda: hit(infer_http(gw, "simple", simple_body(offset=100))), WAIT_S, "hits to resume")
    stats = cache_stats(gw)
    assert stats["shared"]["up"] is True and stats["shared"]["recoveries"] == 1
