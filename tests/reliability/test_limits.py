"""Limits from the settings: body size, elements per tensor, rows per request, requests in
progress, header size; each refused with its status (413 / 400 / 429) on both protocols."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from reliability_helpers import grpc_stub, metric_value, run_async, slow_grpc_request, slow_json, write_slow_model
from tritonclient.utils import InferenceServerException

import make_models

JSON = {"Content-Type": "application/json"}
LIMIT_ARGS = (
    "--max-request-bytes", "65536", "--max-tensor-elements", "100", "--max-request-rows", "4",
    "--max-concurrent-requests", "2", "--max-header-bytes", "1024",
)
LONG = 2_000_000


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    from daemons import launch

    root = tmp_path_factory.mktemp("limits") / "models"
    make_models.write_repository(str(root), ["simple", "mlp"])
    write_slow_model(root, "max_batch_size: 1\ninstances: 1\n")
    gw = launch(root, *LIMIT_ARGS)
    yield gw
    gw.terminate()


def mlp_json(rows: int) -> bytes:
    return json.dumps({"inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [rows, 64], "data": [0.0] * 64 * rows}]}).encode()


def simple_json(rows: int) -> bytes:
    return json.dumps({"inputs": [
        {"name": "INPUT0", "datatype": "INT32", "shape": [rows, 16], "data": [1] * 16 * rows},
        {"name": "INPUT1", "datatype": "INT32", "shape": [rows, 16], "data": [1] * 16 * rows},
    ]}).encode()


def grpc_infer(gw, model: str, arrays: dict[str, tuple[np.ndarray, str]], headers=None):
    client = grpcclient.InferenceServerClient(gw.grpc_url)
    inputs = []
    for name, (array, datatype) in arrays.items():
        inp = grpcclient.InferInput(name, list(array.shape), datatype)
        inp.set_data_from_numpy(array)
        inputs.append(inp)
    try:
        return client.infer(model, inputs, headers=headers)
    finally:
        client.close()


def test_request_body_over_max_request_bytes(limited):
    status, _, body = limited.http("POST", "/v2/models/mlp/infer", b"{" + b" " * 70_000 + b"}", JSON)
    assert status == 413, body
    with pytest.raises(InferenceServerException) as err:
        grpc_infer(limited, "mlp", {"INPUT": (np.zeros((300, 64), np.float32), "FP32")})
    assert err.value.status() == "StatusCode.RESOURCE_EXHAUSTED"


def test_tensor_over_max_tensor_elements(limited):
    assert limited.http("POST", "/v2/models/mlp/infer", mlp_json(1), JSON)[0] == 200  # 64 elements
    status, _, body = limited.http("POST", "/v2/models/mlp/infer", mlp_json(2), JSON)  # 128 elements
    assert status == 413 and b"limit of 100" in body, body
    with pytest.raises(InferenceServerException) as err:
        grpc_infer(limited, "mlp", {"INPUT": (np.zeros((2, 64), np.float32), "FP32")})
    assert err.value.status() == "StatusCode.RESOURCE_EXHAUSTED" and "max_tensor_elements" in err.value.message()


def test_rows_over_max_request_rows(limited):
    assert limited.http("POST", "/v2/models/simple/infer", simple_json(4), JSON)[0] == 200
    status, _, body = limited.http("POST", "/v2/models/simple/infer", simple_json(5), JSON)
    assert status == 400 and b"max_request_rows 4" in body, body
    ones = np.ones((5, 16), np.int32)
    with pytest.raises(InferenceServerException) as err:
        grpc_infer(limited, "simple", {"INPUT0": (ones, "INT32"), "INPUT1": (ones, "INT32")})
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT" and "max_request_rows" in err.value.message()


def test_header_over_max_header_bytes(limited):
    status, _, body = limited.http("POST", "/v2/models/mlp/infer", mlp_json(1), {**JSON, "X-Big": "a" * 2000})
    assert status == 400, body
    assert limited.http("POST", "/v2/models/mlp/infer", mlp_json(1), {**JSON, "X-Small": "a" * 200})[0] == 200
    with pytest.raises(InferenceServerException) as err:
        grpc_infer(limited, "mlp", {"INPUT": (np.zeros((1, 64), np.float32), "FP32")}, headers={"x-big": "a" * 2000})
    assert err.value.status() == "StatusCode.RESOURCE_EXHAUSTED" and "metadata size exceeds" in err.value.message()
    out = grpc_infer(limited, "mlp", {"INPUT": (np.zeros((1, 64), np.float32), "FP32")}, headers={"x-small": "a" * 200})
    assert out.as_numpy("OUTPUT").shape == (1, 8)
    assert limited.proc.poll() is None


def _slow_busy_and_queued(gw) -> bool:
    return (metric_value(gw, "gateway_executor_busy_instances", model="slow") == 1
            and metric_value(gw, "gateway_queue_depth", model="slow") == 1)


async def _wait(gw, predicate, timeout_s: float = 60) -> None:
    async with asyncio.timeout(timeout_s):
        while not await asyncio.to_thread(predicate, gw):
            await asyncio.sleep(0.02)


def test_http_requests_over_max_concurrent_requests(limited):
    url = f"http://{limited.http_url}/v2/models/slow/infer"

    async def scenario():
        sessions = [aiohttp.ClientSession() for _ in range(2)]
        try:
            holders = [asyncio.create_task(s.post(url, data=slow_json(LONG), headers=JSON)) for s in sessions]
            await _wait(limited, _slow_busy_and_queued)
            status, _, body = await asyncio.to_thread(limited.http, "POST", "/v2/models/mlp/infer", mlp_json(1), JSON)
            assert status == 429 and b"max_concurrent_requests 2" in body
            # Probes and scrapes are never refused.
            assert (await asyncio.to_thread(limited.http, "GET", "/v2/health/ready"))[0] == 200
            for task in holders:
                task.cancel()
            await asyncio.gather(*holders, return_exceptions=True)
        finally:
            for s in sessions:
                await s.close()
        await _wait(limited, lambda gw: metric_value(gw, "gateway_executor_busy_instances", model="slow") == 0)

    run_async(scenario())
    limited.wait_until(lambda: limited.http("POST", "/v2/models/mlp/infer", mlp_json(1), JSON)[0] == 200, 60,
                       "a request accepted again")


def test_grpc_calls_over_max_concurrent_requests(limited):
    async def scenario():
        async with grpc.aio.insecure_channel(limited.grpc_url) as channel:
            stub = grpc_stub(channel)
            holders = [stub.ModelInfer(slow_grpc_request(LONG)) for _ in range(2)]
            await _wait(limited, _slow_busy_and_queued)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.ModelInfer(slow_grpc_request(1), timeout=30)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            for call in holders:
                call.cancel()
            await _wait(limited, lambda gw: metric_value(gw, "gateway_executor_busy_instances", model="slow") == 0)

            async def accepted():
                while True:
                    try:
                        return await stub.ModelInfer(slow_grpc_request(1), timeout=30)
                    except grpc.aio.AioRpcError as exc:
                        assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                        await asyncio.sleep(0.05)

            assert (await asyncio.wait_for(accepted(), 60)).model_name == "slow"

    run_async(scenario())

