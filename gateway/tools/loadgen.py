"""A small closed-loop gRPC load generator (asyncio, one channel per 8 clients).

Used by ``gateway tune``. It runs in Python, so on a small host it shares the
CPU with the server: compare settings with it, do not quote its absolute
numbers as the server's capacity (benchmarks/ uses compiled generators).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import grpc
import numpy as np

from gateway._proto import grpc_service_pb2 as pb
from gateway._proto import grpc_service_pb2_grpc as pb_grpc
from gateway.core import datatypes

_METHOD = "/inference.GRPCInferenceService/ModelInfer"


@dataclass(frozen=True, slots=True)
class LoadResult:
    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def example_request(model: str, metadata: pb.ModelMetadataResponse, rows: int = 1, seed: int = 0) -> bytes:
    """A request with finite random values shaped from the model's metadata (-1 dims become 1)."""
    rng = np.random.default_rng(seed)
    req = pb.ModelInferRequest(model_name=model)
    for t in metadata.inputs:
        shape = [rows] + [d if d > 0 else 1 for d in t.shape[1:]] if t.shape and t.shape[0] == -1 else [
            d if d > 0 else 1 for d in t.shape
        ]
        dtype = datatypes.to_numpy(t.datatype)
        if dtype is None:
            arr = np.array([b"x"] * int(np.prod(shape)), dtype=object)
            raw = b"".join(len(b).to_bytes(4, "little") + b for b in arr)
        elif dtype.kind == "f":
            raw = rng.standard_normal(shape).astype(dtype).tobytes()
        elif dtype.kind == "b":
            raw = rng.integers(0, 2, shape).astype(dtype).tobytes()
        else:
            raw = rng.integers(0, 2, shape).astype(dtype).tobytes()
        req.inputs.add(name=t.name, datatype=t.datatype, shape=shape)
        req.raw_input_contents.append(raw)
    return req.SerializeToString()


async def fetch_metadata(target: str, model: str) -> pb.ModelMetadataResponse:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        return await stub.ModelMetadata(pb.ModelMetadataRequest(name=model), timeout=30)


async def run_load(target: str, body: bytes, concurrency: int, seconds: float, warmup_s: float = 0.5) -> LoadResult:
    channels = [grpc.aio.insecure_channel(target) for _ in range(max(1, (concurrency + 7) // 8))]
    calls = [
        ch.unary_unary(_METHOD, request_serializer=None, response_deserializer=None) for ch in channels
    ]
    latencies: list[float] = []
    errors = 0
    start = time.perf_counter()
    measure_from = start + warmup_s
    stop_at = measure_from + seconds

    async def client(i: int) -> None:
        nonlocal errors
        call = calls[i % len(calls)]
        while True:
            t0 = time.perf_counter()
            if t0 >= stop_at:
                return
            try:
                await call(body, timeout=30)
            except grpc.RpcError:
                if t0 >= measure_from:
                    errors += 1
                continue
            if t0 >= measure_from:
                latencies.append(time.perf_counter() - t0)

    try:
        await asyncio.gather(*(client(i) for i in range(concurrency)))
    finally:
        for ch in channels:
            await ch.close()
    elapsed = max(1e-9, min(time.perf_counter(), stop_at) - measure_from)
    if not latencies:
        return LoadResult(0, errors, elapsed, float("nan"), float("nan"))
    ms = np.array(latencies) * 1000
    return LoadResult(len(latencies), errors, elapsed, float(np.percentile(ms, 50)), float(np.percentile(ms, 99)))
