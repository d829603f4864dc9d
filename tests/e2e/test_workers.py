"""--workers N: processes share the ports, statistics are summed, a dead worker is replaced."""

from __future__ import annotations

import os
import re
import signal

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

import make_models

WAIT_S = 60


def children(pid: int) -> list[int]:
    """Worker processes of the supervisor (not multiprocessing's resource tracker)."""
    with open(f"/proc/{pid}/task/{pid}/children") as fh:
        pids = [int(p) for p in fh.read().split()]
    workers = []
    for p in pids:
        with open(f"/proc/{p}/cmdline", "rb") as fh:
            if b"resource_tracker" not in fh.read():
                workers.append(p)
    return workers


def infer_once(url: str) -> np.ndarray:
    # A new client per call: a new connection, which the kernel may give to either worker.
    client = httpclient.InferenceServerClient(url)
    try:
        inp = httpclient.InferInput("INPUT", [1, 64], "FP32")
        inp.set_data_from_numpy(np.ones((1, 64), np.float32))
        return client.infer("mlp", [inp]).as_numpy("OUTPUT")
    finally:
        client.close()


def test_two_workers_share_ports_sum_stats_and_restart(tmp_path, start_gateway):
    root = tmp_path / "models"
    make_models.write_repository(str(root), ["mlp"])
    gw = start_gateway(root, "--workers", "2")
    workers = children(gw.proc.pid)
    assert len(workers) == 2
    n = 40
    for _ in range(n):
        assert infer_once(gw.http_url).shape == (1, 8)

    def total() -> int:
        status, doc = gw.http_json("GET", "/v2/models/mlp/stats")
        return int(doc["model_stats"][0]["inference_count"]) if status == 200 else -1

    # Any worker answers for both, and at once: it asks the other for a snapshot first. Twenty
    # queries on new connections land on both workers; none may lag behind the answers already
    # given (perf_analyzer fails when a model's count has not grown over its measurement window).
    assert [total() for _ in range(20)] == [n] * 20

    def grpc_total() -> int:
        client = grpcclient.InferenceServerClient(gw.grpc_url)
        try:
            return int(client.get_inference_statistics("mlp").model_stats[0].inference_count)
        finally:
            client.close()

    assert [grpc_total() for _ in range(10)] == [n] * 10

    def instances() -> set[float]:
        """gateway_executor_instances of mlp on /metrics: a gauge of the host, whichever worker is scraped."""
        status, _, body = gw.http("GET", "/metrics")
        found = re.search(rb'^gateway_executor_instances\{model="mlp",version="1"\} ([\d.]+)$', body, re.M)
        return {float(found.group(1))} if status == 200 and found else set()

    gw.wait_until(lambda: set().union(*(instances() for _ in range(10))) == {2.0}, timeout=WAIT_S,
                  what="both workers' instances on every scrape")

    def requests_ok() -> set[float]:
        status, _, body = gw.http("GET", "/metrics")
        found = re.search(rb'^gateway_requests_total\{code="ok",model="mlp",protocol="http",version="1"\} ([\d.]+)$',
                          body, re.M)
        return {float(found.group(1))} if status == 200 and found else set()

    gw.wait_until(lambda: set().union(*(requests_ok() for _ in range(10))) == {float(n)}, timeout=WAIT_S,
                  what=f"gateway_requests_total {n} (both workers' requests) on every scrape")

    start = len(gw.lines)
    os.kill(workers[0], signal.SIGKILL)
    gw.wait_for_log(re.compile(r"worker \d is back"), timeout=WAIT_S, start=start)
    assert len(children(gw.proc.pid)) == 2
    for _ in range(10):
        assert infer_once(gw.http_url).shape == (1, 8)
    assert gw.terminate() == 0
