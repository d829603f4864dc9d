"""Graceful drain: requests accepted before SIGTERM complete; then the daemon exits 0."""

from __future__ import annotations

import concurrent.futures
import signal

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

import make_models

WAIT_S = 30


def test_sigterm_drains_accepted_requests(tmp_path, start_gateway):
    root = tmp_path / "models"
    make_models.write_repository(str(root), ["mlp"])
    # Requests sit in the queue for up to 1.5 s, so they are surely in flight at SIGTERM.
    (root / "mlp" / "model.yaml").write_text("max_batch_size: 32\ndynamic_batching:\n  max_queue_delay_us: 1500000\n  adaptive_delay: false\n")
    gw = start_gateway(root, process=True)  # SIGTERM and the exit code
    grpc_client = grpcclient.InferenceServerClient(gw.grpc_url)
    http_client = httpclient.InferenceServerClient(gw.http_url, concurrency=4)

    def via_grpc(i):
        inp = grpcclient.InferInput("INPUT", [1, 64], "FP32")
        inp.set_data_from_numpy(np.full((1, 64), i, np.float32))
        return grpc_client.infer("mlp", [inp]).as_numpy("OUTPUT")

    def via_http(i):
        inp = httpclient.InferInput("INPUT", [1, 64], "FP32")
        inp.set_data_from_numpy(np.full((1, 64), i, np.float32))
        return http_client.infer("mlp", [inp]).as_numpy("OUTPUT")

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(via_grpc, i) for i in range(4)] + [pool.submit(via_http, i) for i in range(4)]
        gw.wait_until(lambda: gw.http_json("GET", "/v2/models/mlp/stats")[1]["model_stats"][0]["queue_depth"] == 8,
                      what="eight queued requests")
        gw.proc.send_signal(signal.SIGTERM)
        results = [f.result(WAIT_S) for f in futures]
    assert all(r.shape == (1, 8) for r in results)
    assert gw.proc.wait(WAIT_S) == 0
    assert "stopped" in gw.log()
    grpc_client.close()
    http_client.close()


def test_readiness_follows_model_state(tmp_path, start_gateway):
    root = tmp_path / "models"
    make_models.write_repository(str(root), ["simple", "mlp"])
    good = (root / "mlp" / "1" / "model.onnx").read_bytes()
    (root / "mlp" / "1" / "model.onnx").write_bytes(b"corrupt")
    gw = start_gateway(root)
    status, doc = gw.http_json("GET", "/v2/health/ready")
    assert status == 503 and doc["ready"] is False
    assert gw.http_json("GET", "/v2/health/live")[0] == 200
    assert gw.http_json("GET", "/v2/models/simple/ready")[0] == 200
    status, doc = gw.http_json("GET", "/v2/models/mlp/ready")
    assert status == 503
    # Fixed on disk: picked up by the next scans, and the server is ready again.
    tmp = root / "mlp" / "1" / "model.onnx.tmp"
    tmp.write_bytes(good)
    tmp.replace(root / "mlp" / "1" / "model.onnx")
    gw.wait_until(lambda: gw.http_json("GET", "/v2/health/ready")[0] == 200, what="ready after the fix")
    assert gw.http_json("GET", "/v2/models/mlp/ready")[0] == 200
