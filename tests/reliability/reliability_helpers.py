"""Shared pieces of the reliability tests: a slow model, the admin debug state, RSS, gRPC over grpc.aio.

The test process never imports gateway._proto; gRPC goes through tritonclient's own stubs.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ADMIN_TOKEN = "reliability-admin-token"
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

# Rough cost of one loop iteration of the slow model on this machine kind (about 3 µs alone;
# more on a busy host). Tests never depend on it: they wait on observed state, not on time.
_STATE = 128


def slow_graph() -> onnx.GraphProto:
    """X FP32 [-1,1], ITERS INT64 [-1,1] -> Y = X * (1 + s); runs max(ITERS) matmul iterations.

    The run time follows the ITERS input, so one model serves quick, slow and "stuck" requests;
    onnxruntime's terminate flag interrupts the Loop between iterations.
    """
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((_STATE, _STATE)) / np.sqrt(_STATE)).astype(np.float32)
    body = helper.make_graph(
        [
            helper.make_node("MatMul", ["s_in", "W"], ["m"]),
            helper.make_node("Tanh", ["m"], ["s_out"]),
            helper.make_node("Identity", ["c_in"], ["c_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("c_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("s_in", TensorProto.FLOAT, None),
        ],
        [
            helper.make_tensor_value_info("c_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("s_out", TensorProto.FLOAT, None),
        ],
    )
    nodes = [
        helper.make_node("ReduceMax", ["ITERS"], ["trip"], keepdims=0),
        helper.make_node("Constant", [], ["cond"], value=helper.make_tensor("c", TensorProto.BOOL, [], [True])),
        helper.make_node("Constant", [], ["s0"], value=helper.make_tensor("z", TensorProto.FLOAT, [1, _STATE], [0.0] * _STATE)),
        helper.make_node("Loop", ["trip", "cond", "s0"], ["s_final"], body=body),
        helper.make_node("ReduceSum", ["s_final"], ["total"], keepdims=1),
        helper.make_node("Mul", ["X", "total"], ["scaled"]),
        helper.make_node("Add", ["X", "scaled"], ["Y"]),
    ]
    return helper.make_graph(
        nodes,
        "slow",
        [
            helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", 1]),
            helper.make_tensor_value_info("ITERS", TensorProto.INT64, ["batch", 1]),
        ],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", 1])],
        initializer=[numpy_helper.from_array(w, "W")],
    )


def write_slow_model(root: Path, config: str, name: str = "slow", version: int = 1) -> Path:
    model = helper.make_model(slow_graph(), opset_imports=[helper.make_opsetid("", 17)], producer_name="reliability")
    model.ir_version = 8
    onnx.checker.check_model(model)
    directory = root / name / str(version)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / "model.onnx.tmp"
    onnx.save(model, str(tmp))
    os.replace(tmp, directory / "model.onnx")
    (root / name / "model.yaml").write_text(config)
    return root / name


def slow_json(iters: int, x: float = 1.0, rows: int = 1) -> bytes:
    return json.dumps({"inputs": [
        {"name": "X", "datatype": "FP32", "shape": [rows, 1], "data": [x] * rows},
        {"name": "ITERS", "datatype": "INT64", "shape": [rows, 1], "data": [iters] * rows},
    ]}).encode()


def slow_grpc_request(iters: int, x: float = 1.0, model: str = "slow"):
    from tritonclient.grpc import service_pb2 as pb

    req = pb.ModelInferRequest(model_name=model)
    req.inputs.add(name="X", datatype="FP32", shape=[1, 1])
    req.inputs.add(name="ITERS", datatype="INT64", shape=[1, 1])
    req.raw_input_contents.extend([np.array([[x]], np.float32).tobytes(), np.array([[iters]], np.int64).tobytes()])
    return req


def grpc_stub(channel):
    from tritonclient.grpc import service_pb2_grpc

    return service_pb2_grpc.GRPCInferenceServiceStub(channel)


def debug_state(gw) -> dict:
    status, _, body = gw.http("GET", "/v2/admin/debug/state", headers=AUTH)
    assert status == 200, body
    return json.loads(body)


def version_state(gw, model: str, version: str = "1") -> dict:
    return debug_state(gw)["models"][model][version]


def model_stats(gw, model: str) -> dict:
    status, _, body = gw.http("GET", f"/v2/models/{model}/stats")
    assert status == 200, body
    return json.loads(body)["model_stats"][0]


def quiescent(gw, baseline_tasks: int | None = None, slack: int = 0):
    """The debug state once nothing is in progress (and, if given, tasks back to the baseline)."""
    def settled():
        state = debug_state(gw)
        idle = state["requests_in_progress"] == 0 and all(
            v["queued"] == 0 and v["busy_instances"] == 0 for vs in state["models"].values() for v in vs.values()
        )
        if baseline_tasks is not None and state["asyncio_tasks"] > baseline_tasks + slack:
            return None
        return state if idle else None

    return gw.wait_until(settled, timeout=60, what="no request in progress")


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def metric_value(gw, name: str, **labels) -> float:
    """Sum of a Prometheus sample over the series matching the labels."""
    status, _, body = gw.http("GET", "/metrics")
    assert status == 200
    total = 0.0
    for line in body.decode().splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


def run_async(coro, timeout_s: float = 120):
    return asyncio.run(asyncio.wait_for(coro, timeout_s))


class Stopwatch:
    def __init__(self) -> None:
        self.start = time.monotonic()

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self.start


def executed_rows(gw, model: str) -> int:
    """Rows the model has executed (Triton's inference_count; proto JSON writes uint64 as a string)."""
    return int(model_stats(gw, model).get("inference_count", 0))
