"""Faults: a model raising on some inputs, an execution stuck past execute_timeout_s, Redis killed
and restarted, a corrupt model file in a hot reload. Each gets its status; other models keep serving."""

from __future__ import annotations

import json
import os
import re
import threading

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from reliability_helpers import (
    ADMIN_TOKEN, Stopwatch, executed_rows, slow_json, version_state, write_slow_model,
)
from tritonclient.utils import InferenceServerException

import make_models

JSON = {"Content-Type": "application/json"}
SIMPLE_BODY = json.dumps({"inputs": [
    {"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "data": list(range(16))},
    {"name": "INPUT1", "datatype": "INT32", "shape": [1, 16], "data": [1] * 16},
]}).encode()


class Background:
    """Requests to another model in a loop while a fault happens; every answer must be a 200."""

    def __init__(self, gw, path: str = "/v2/models/simple/infer", body: bytes = SIMPLE_BODY) -> None:
        self.gw, self.path, self.body = gw, path, body
        self.ok = 0
        self.failures: list[tuple[int, bytes]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            status, _, body = self.gw.http("POST", self.path, self.body, JSON)
            if status == 200:
                self.ok += 1
            else:
                self.failures.append((status, body))

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(60)
        assert not self._thread.is_alive()


def test_model_raising_on_some_inputs(tmp_path, start_gateway):
    root = tmp_path / "models"
    make_models.write_repository(str(root), ["lookup", "simple"])
    gw = start_gateway(root)
    client = grpcclient.InferenceServerClient(gw.grpc_url)

    def lookup_grpc(i: int):
        inp = grpcclient.InferInput("INDEX", [1, 1], "INT64")
        inp.set_data_from_numpy(np.array([[i]], dtype=np.int64))
        return client.infer("lookup", [inp]).as_numpy("EMBEDDING")

    with Background(gw) as other:
        for i in range(20):
            bad = 10 + i  # outside the 10-row table: onnxruntime fails at run time
            with pytest.raises(InferenceServerException) as err:
                lookup_grpc(bad)
            assert err.value.status() == "StatusCode.INTERNAL"
            status, _, body = gw.http("POST", "/v2/models/lookup/infer", json.dumps({"inputs": [
                {"name": "INDEX", "datatype": "INT64", "shape": [1, 1], "data": [bad]}]}).encode(), JSON)
            assert status == 500 and b"lookup" in body
            np.testing.assert_array_equal(lookup_grpc(i % 10)[0, 0], np.arange(4 * (i % 10), 4 * (i % 10) + 4))
    assert other.ok > 0 and other.failures == []
    assert gw.proc.poll() is None
    client.close()


def test_execution_stuck_past_execute_timeout(tmp_path, start_gateway):
    root = tmp_path / "models"
    make_models.write_repository(str(root), ["simple"])
    write_slow_model(root, "max_batch_size: 1\ninstances: 1\nexecute_timeout_s: 1\n")
    gw = start_gateway(root, "--admin-token", ADMIN_TOKEN)
    client = grpcclient.InferenceServerClient(gw.grpc_url)
    stuck = 10**10  # hours of loop iterations
    rows0 = executed_rows(gw, "slow")

    def slow_grpc(iters: int):
        x = grpcclient.InferInput("X", [1, 1], "FP32")
        x.set_data_from_numpy(np.ones((1, 1), np.float32))
        n = grpcclient.InferInput("ITERS", [1, 1], "INT64")
        n.set_data_from_numpy(np.array([[iters]], np.int64))
        return client.infer("slow", [x, n])

    with Background(gw) as other:
        watch = Stopwatch()
        with pytest.raises(InferenceServerException) as err:
            slow_grpc(stuck)
        answered_s = watch.elapsed_s
        assert err.value.status() == "StatusCode.DEADLINE_EXCEEDED"
        assert "execute_timeout_s=1s" in err.value.message()
        # onnxruntime honours the abort: the instance comes back and serves again.
        gw.wait_until(lambda: version_state(gw, "slow")["stuck_instances"] == 0, 60, "the instance back")
        back_s = watch.elapsed_s
        status, _, body = gw.http("POST", "/v2/models/slow/infer", slow_json(stuck), JSON)
        assert status == 504 and b"execute_timeout_s" in body
        gw.wait_until(lambda: version_state(gw, "slow")["stuck_instances"] == 0, 60, "the instance back")
        assert slow_grpc(1).as_numpy("Y").shape == (1, 1)
    assert other.ok > 0 and other.failures == []
    state = version_state(gw, "slow")
    assert state["execute_timeouts"] == 2 and state["busy_instances"] == 0
    assert executed_rows(gw, "slow") - rows0 == 1  # the aborted runs are not counted as executed
    gw.wait_for_log(re.compile(r"passed execute_timeout_s=1s; aborting its instance"), timeout=30)
    status, _, _ = gw.http("GET", "/v2/models/slow/ready")
    assert status == 200
    client.close()
    print(f"\n[execute timeout] answered after {answered_s:.2f}s (execute_timeout_s=1), instance back after "
          f"{back_s:.2f}s; other model served {other.ok} requests meanwhile, 0 failed")


def test_redis_killed_and_restarted_under_traffic(tmp_path, start_gateway, redis_server):
    root = tmp_path / "models"
    make_models.write_repository(str(root), ["simple", "mlp"])
    (root / "simple" / "model.yaml").write_text("max_batch_size: 8\ncache:\n  exact: true\n  max_bytes: 0\n")
    gw = start_gateway(root, "--cache-url", redis_server.url, "--cache-timeout-ms", "500")
    mlp_body = json.dumps({"inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [1, 64], "data": [0.5] * 64}]}).encode()

    def shared() -> dict:
        return json.loads(gw.http("GET", "/v2/cache/stats")[2])["shared"]

    with Background(gw) as cached, Background(gw, "/v2/models/mlp/infer", mlp_body) as uncached:
        gw.wait_until(lambda: cached.ok >= 5, 60, "traffic with Redis up")
        redis_server.stop()
        watch = Stopwatch()
        gw.wait_until(lambda: shared()["up"] is False, 60, "the cache to notice Redis is gone")
        seen = cached.ok
        gw.wait_until(lambda: cached.ok >= seen + 20, 60, "traffic with Redis down")
        redis_server.start()  # same port
        restarted = Stopwatch()
        gw.wait_until(lambda: shared()["up"] is True, 60, "the cache to reconnect")
        reconnect_s = restarted.elapsed_s
        seen = cached.ok
        gw.wait_until(lambda: cached.ok >= seen + 5, 60, "traffic with Redis back")
    assert cached.failures == [] and uncached.failures == []
    assert shared()["recoveries"] >= 1
    print(f"\n[redis] down {watch.elapsed_s - reconnect_s:.2f}s, reconnected {reconnect_s:.2f}s after restart; "
          f"served {cached.ok + uncached.ok} requests, 0 failed")


def test_corrupt_model_file_in_hot_reload_keeps_previous_version(tmp_path, start_gateway):
    root = tmp_path / "models"
    make_models.write_repository(str(root), ["simple", "mlp"])
    gw = start_gateway(root)
    mlp_body = json.dumps({"inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [1, 64], "data": [0.5] * 64}]}).encode()
    status, _, before = gw.http("POST", "/v2/models/mlp/infer", mlp_body, JSON)
    assert status == 200
    model_file = root / "mlp" / "1" / "model.onnx"
    with Background(gw) as other, Background(gw, "/v2/models/mlp/infer", mlp_body) as mlp_traffic:
        tmp = model_file.with_name("model.onnx.tmp")
        tmp.write_bytes(b"\x08\x07this is not an ONNX model" * 100)
        os.replace(tmp, model_file)  # an atomic swap to garbage
        gw.wait_for_log(re.compile(rf"model mlp version 1 failed to load: {re.escape(str(model_file))}"), timeout=60)
        seen = mlp_traffic.ok
        gw.wait_until(lambda: mlp_traffic.ok >= seen + 10, 60, "mlp answering after the failed reload")
    assert other.failures == [] and mlp_traffic.failures == []
    status, _, after = gw.http("POST", "/v2/models/mlp/infer", mlp_body, JSON)
    assert status == 200 and after == before  # still the previous good version
    status, _, index = gw.http("POST", "/v2/repository/index")
    (row,) = [r for r in json.loads(index) if r["name"] == "mlp"]
    assert row["state"] == "READY" and str(model_file) in row["reason"]
    # A good file again is picked up.
    make_models.write_repository(str(root), ["mlp"])
    gw.wait_until(lambda: not [r for r in json.loads(gw.http("POST", "/v2/repository/index")[2])
                               if r["name"] == "mlp" and r["reason"]], 60, "the repaired file to load")


def test_request_whose_version_is_swapped_while_it_awaits_the_cache_is_served(tmp_path, start_gateway):
    """Regression (found by the soak test): a request resolves its version, awaits the shared cache,
    a hot reload swaps the version meanwhile; it must be served by the replacement, not refused."""
    import shutil
    import subprocess
    import time

    from redis_server import free_port

    port = free_port()
    redis = subprocess.Popen([shutil.which("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no", "--dir", str(tmp_path)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import redis as redis_client

        admin = redis_client.Redis(host="127.0.0.1", port=port)
        deadline = time.monotonic() + 30
        while True:
            try:
                admin.ping()
                break
            except redis_client.ConnectionError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.02)
        root = tmp_path / "models"
        make_models.write_repository(str(root), ["simple"])
        config = root / "simple" / "model.yaml"
        config.write_text("max_batch_size: 8\ncache:\n  exact: true\n  max_bytes: 0\n")
        gw = start_gateway(root, "--cache-url", f"redis://127.0.0.1:{port}/0", "--cache-timeout-ms", "10000")
        assert gw.http("POST", "/v2/models/simple/infer", SIMPLE_BODY, JSON)[0] == 200
        # Redis holds every client's commands for 3 s (the reload below takes ~0.5 s; CLIENT UNPAUSE
        # would wait out the pause too): the next request waits in its cache lookup while the
        # config changes under it.
        assert admin.execute_command("CLIENT", "PAUSE", "3000", "ALL")
        body = json.loads(SIMPLE_BODY)
        body["inputs"][0]["data"] = list(range(100, 116))
        answer: list = []
        request = threading.Thread(target=lambda: answer.append(
            gw.http("POST", "/v2/models/simple/infer", json.dumps(body).encode(), JSON)), daemon=True)
        mark = len(gw.lines)
        request.start()
        config.write_text("max_batch_size: 8\ndynamic_batching:\n  max_queue_delay_us: 100\n"
                          "cache:\n  exact: true\n  max_bytes: 0\n")
        gw.wait_for_log(re.compile(r"model simple version 1 loaded"), timeout=60, start=mark)
        if not request.is_alive():
            pytest.skip("the reload came after the request finished: the race was not exercised on this run")
        request.join(60)
        status, _, raw = answer[0]
        assert status == 200, raw
        assert json.loads(raw)["outputs"][0]["data"] == [i + 1 for i in range(100, 116)]
    finally:
        redis.kill()
        redis.wait(30)
