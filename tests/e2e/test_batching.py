"""Dynamic batching seen from outside: batches form, deadlines hold, full queues refuse."""

from __future__ import annotations

import concurrent.futures
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

import make_models

WAIT_S = 30


def write(root, name, config: str):
    make_models.write_repository(str(root), [name])
    (root / name / "model.yaml").write_text(config)


def mlp_input(value: float = 0.5, rows: int = 1):
    inp = grpcclient.InferInput("INPUT", [rows, 64], "FP32")
    inp.set_data_from_numpy(np.full((rows, 64), value, dtype=np.float32))
    return inp


def stats(client, model):
    return client.get_inference_statistics(model).model_stats[0]


def test_concurrent_batch1_requests_execute_in_larger_batches(tmp_path, start_gateway):
    root = tmp_path / "models"
    # A 20 ms window makes batching independent of how fast this machine is.
    write(root, "mlp", "max_batch_size: 16\ndynamic_batching:\n  max_queue_delay_us: 20000\n  adaptive_delay: false\n")
    gw = start_gateway(root)
    client = grpcclient.InferenceServerClient(gw.grpc_url)
    n = 48
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda i: client.infer("mlp", [mlp_input(i)]).as_numpy("OUTPUT"), range(n)))
    assert all(r.shape == (1, 8) for r in results)
    # Different inputs must get their own rows back, not a neighbour's.
    assert len({r.tobytes() for r in results}) == n
    s = stats(client, "mlp")
    assert s.inference_count == n
    assert s.execution_count < n, "no request was batched with another"
    assert max(b.batch_size for b in s.batch_stats) > 1
    assert sum(b.batch_size * b.compute_infer.count for b in s.batch_stats) == n
    client.close()


def test_queue_full_and_deadline_without_running(tmp_path, start_gateway):
    root = tmp_path / "models"
    # One queue slot and a long window: the first request waits in the queue,
    # which makes "full" and "timed out before execution" deterministic.
    write(root, "mlp", "max_batch_size: 8\ndynamic_batching:\n  max_queue_delay_us: 3000000\n  adaptive_delay: false\n  max_queue_size: 1\n")
    gw = start_gateway(root)
    client = grpcclient.InferenceServerClient(gw.grpc_url)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        waiting = pool.submit(lambda: client.infer("mlp", [mlp_input()], timeout=200_000))  # µs, schedule-policy timeout
        gw.wait_until(lambda: _queued(gw), what="the first request to be queued")
        t0 = time.monotonic()
        with pytest.raises(InferenceServerException) as full:
            client.infer("mlp", [mlp_input()])
        assert time.monotonic() - t0 < 2, "a full queue must answer at once"
        assert full.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
        assert "queue" in full.value.message()
        with pytest.raises(InferenceServerException) as late:
            waiting.result(WAIT_S)
        assert late.value.status() == "StatusCode.DEADLINE_EXCEEDED"
    s = stats(client, "mlp")
    assert s.execution_count == 0, "a request past its deadline must not run"
    # HTTP shows the same two outcomes as 429 and 504.
    body = {"inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [1, 64], "data": [0.0] * 64}],
            "parameters": {"timeout": 100_000}}
    status, doc = gw.http_json("POST", "/v2/models/mlp/infer", body)
    assert status == 504 and "timed out" in doc["error"]
    client.close()


def _depth(gw) -> int:
    """Requests waiting in the queue (a gateway extension of the v2 stats JSON)."""
    status, doc = gw.http_json("GET", "/v2/models/mlp/stats")
    assert status == 200, doc
    return doc["model_stats"][0]["queue_depth"]


def _queued(gw) -> bool:
    return _depth(gw) > 0


def test_grpc_client_deadline_is_enforced(tmp_path, start_gateway):
    root = tmp_path / "models"
    write(root, "mlp", "max_batch_size: 8\ndynamic_batching:\n  max_queue_delay_us: 2000000\n  adaptive_delay: false\n")
    gw = start_gateway(root)
    client = grpcclient.InferenceServerClient(gw.grpc_url)
    t0 = time.monotonic()
    with pytest.raises(InferenceServerException) as err:
        client.infer("mlp", [mlp_input()], client_timeout=0.2)
    assert err.value.status() == "StatusCode.DEADLINE_EXCEEDED"
    assert time.monotonic() - t0 < 1.5
    gw.wait_until(lambda: _depth(gw) == 0, what="the expired request to leave the queue")
    assert stats(client, "mlp").execution_count == 0
    client.close()
