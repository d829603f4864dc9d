"""Overload: a burst far above capacity is shed at once with RESOURCE_EXHAUSTED / 429, every
accepted request completes, memory stays bounded, and the model serves normally right after."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import grpc
import pytest
from reliability_helpers import (
    ADMIN_TOKEN, Stopwatch, executed_rows, grpc_stub, metric_value, quiescent, rss_bytes, run_async, slow_grpc_request,
    slow_json, write_slow_model,
)

QUEUE = 8
BATCH = 4
ITERS = 10_000  # ~30 ms per batch alone: ~130 rows/s, far below the burst
BURST = 240

SLOW_CONFIG = f"""max_batch_size: {BATCH}
dynamic_batching:
  max_queue_size: {QUEUE}
instances: 1
"""


async def _grpc_burst(url: str, n: int) -> list[tuple[str, float]]:
    async with grpc.aio.insecure_channel(url) as channel:
        stub = grpc_stub(channel)

        async def one(i: int) -> tuple[str, float]:
            t0 = time.monotonic()
            try:
                await stub.ModelInfer(slow_grpc_request(ITERS, float(i)), timeout=120)
                return "OK", time.monotonic() - t0
            except grpc.aio.AioRpcError as err:
                return err.code().name, time.monotonic() - t0

        return await asyncio.gather(*(one(i) for i in range(n)))


async def _http_burst(url: str, n: int) -> list[tuple[str, float]]:
    connector = aiohttp.TCPConnector(limit=n)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
        async def one(i: int) -> tuple[str, float]:
            t0 = time.monotonic()
            async with session.post(f"http://{url}/v2/models/slow/infer", data=slow_json(ITERS, float(i)),
                                    headers={"Content-Type": "application/json"}) as resp:
                await resp.read()
                return str(resp.status), time.monotonic() - t0

        return await asyncio.gather(*(one(i) for i in range(n)))


def _recovery_s(gw) -> float:
    """Seconds from the end of the burst until a request is served again (sequential probes)."""
    watch = Stopwatch()
    while True:
        status, _, _ = gw.http("POST", "/v2/models/slow/infer", slow_json(10), {"Content-Type": "application/json"})
        if status == 200:
            return watch.elapsed_s
        assert status == 429, status
        assert watch.elapsed_s < 60, "the model never served again after the burst"


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_burst_is_shed_accepted_complete_and_service_recovers(tmp_path, start_gateway, protocol):
    root = tmp_path / "models"
    write_slow_model(root, SLOW_CONFIG)
    gw = start_gateway(root, "--admin-token", ADMIN_TOKEN, process=True)  # its RSS is measured
    gw.http("POST", "/v2/models/slow/infer", slow_json(10), {"Content-Type": "application/json"})  # warm
    rss_before = rss_bytes(gw.proc.pid)
    executed_before = executed_rows(gw, "slow")

    burst = _grpc_burst(gw.grpc_url, BURST) if protocol == "grpc" else _http_burst(gw.http_url, BURST)
    watch = Stopwatch()
    results = run_async(burst)
    burst_s = watch.elapsed_s
    recovery_s = _recovery_s(gw)

    ok_code, shed_code = ("OK", "RESOURCE_EXHAUSTED") if protocol == "grpc" else ("200", "429")
    codes = [c for c, _ in results]
    ok, shed = codes.count(ok_code), codes.count(shed_code)
    assert ok + shed == BURST, f"unexpected answers: {sorted(set(codes) - {ok_code, shed_code})}"
    # Far above capacity: most are shed, and at least the queue's worth was accepted.
    assert shed >= BURST // 2, (ok, shed)
    assert ok >= QUEUE, (ok, shed)
    # Refusals come at once: a refused request never waits behind the accepted ones.
    shed_latency = sorted(t for c, t in results if c == shed_code)
    served_latency = sorted(t for c, t in results if c == ok_code)
    assert shed_latency[len(shed_latency) // 2] <= served_latency[-1]

    state = quiescent(gw)
    executed = executed_rows(gw, "slow") - executed_before
    assert executed == ok + 1, "every accepted request ran exactly once and no refused one ran"  # +1: recovery probe
    assert metric_value(gw, "gateway_rejected_requests_total", model="slow", reason="queue_full") == shed
    assert state["requests_in_progress"] == 0
    rss_growth = rss_bytes(gw.proc.pid) - rss_before
    assert rss_growth < 64 * 1024 * 1024, f"RSS grew {rss_growth / 2**20:.1f} MiB over one burst"

    # Throughput recovered: a closed-loop run at a sustainable rate loses nothing.
    after = run_async(_grpc_burst(gw.grpc_url, QUEUE) if protocol == "grpc" else _http_burst(gw.http_url, QUEUE))
    assert [c for c, _ in after] == [ok_code] * QUEUE
    print(f"\n[overload {protocol}] burst={BURST} accepted={ok} shed={shed} burst_s={burst_s:.2f} "
          f"shed_p50_ms={1000 * shed_latency[len(shed_latency) // 2]:.1f} "
          f"served_max_ms={1000 * served_latency[-1]:.1f} recovery_s={recovery_s:.3f} "
          f"rss_growth_mib={rss_growth / 2**20:.1f}")
