"""--workers 2 --max-concurrent-requests 4: the limit holds for the host, not per worker.

A slow model (one instance, batches of one) is held busy by many calls, each on its own
connection so that SO_REUSEPORT spreads them over both workers: four are admitted in all (each
worker its share of two: one running, one queued), every other call is refused at once with
RESOURCE_EXHAUSTED (gRPC) or 429 (HTTP). The host's count is read from /metrics, whose queue and
busy gauges are summed over the workers, so any one scrape sees all four.
"""

from __future__ import annotations

import asyncio
import re

import aiohttp
import grpc
import pytest
from reliability_helpers import grpc_stub, metric_value, run_async, slow_grpc_request, slow_json, write_slow_model

import make_models

LIMIT = 4
# Connections per protocol. Each lands on either worker (the kernel hashes the 4-tuple); a worker
# that got fewer than its share of 2 would admit fewer: with 24 connections the odds of that are
# 2 * 25 / 2**24, about 3 in a million.
CONNECTIONS = 24
HOLD = 1_000_000_000  # loop iterations: runs until its call is cancelled (the executor aborts it)
WAIT_S = 60
JSON = {"Content-Type": "application/json"}


@pytest.fixture
def gw(tmp_path, start_gateway):
    root = tmp_path / "models"
    make_models.write_repository(str(root), ["mlp"])
    write_slow_model(root, "max_batch_size: 1\ninstances: 1\n")
    return start_gateway(root, "--workers", "2", "--max-concurrent-requests", str(LIMIT))


def admitted(gw) -> int:
    """Slow requests running or queued on the host (any worker's /metrics sums both)."""
    return int(metric_value(gw, "gateway_executor_busy_instances", model="slow")
               + metric_value(gw, "gateway_queue_depth", model="slow"))


async def wait_for(predicate, what: str) -> None:
    async with asyncio.timeout(WAIT_S):
        while not await asyncio.to_thread(predicate):
            await asyncio.sleep(0.05)


async def settle(gw, refused: list, pending: int, what: str) -> int:
    """Waits until every call is either refused or admitted (counted on the host); returns admitted."""
    state = {}

    def done() -> bool:
        state["admitted"] = admitted(gw)
        return len(refused) + state["admitted"] >= pending

    try:
        await wait_for(done, what)
    except TimeoutError:
        raise AssertionError(f"{what}: {len(refused)} refused, {state.get('admitted')} admitted of {pending}") from None
    return state["admitted"]


async def idle(gw) -> None:
    await wait_for(lambda: admitted(gw) == 0, "the slow model idle again")


def test_the_limit_holds_for_the_host_over_grpc_and_http(gw):
    gw.wait_for_log(re.compile(r"max_concurrent_requests 4 for the host, per protocol: worker shares 2\+2"), timeout=5)
    # Both workers have published a snapshot: two executor instances in the host's gauge.
    gw.wait_until(lambda: metric_value(gw, "gateway_executor_instances", model="slow") == 2, WAIT_S,
                  "both workers' instances in /metrics")

    async def over_grpc() -> None:
        # A local subchannel pool per channel: a connection of its own (grpc shares them otherwise).
        channels = [grpc.aio.insecure_channel(gw.grpc_url, options=[("grpc.use_local_subchannel_pool", 1)])
                    for _ in range(CONNECTIONS)]
        refused: list[str] = []

        async def hold(channel) -> None:
            try:
                await grpc_stub(channel).ModelInfer(slow_grpc_request(HOLD))
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    refused.append(exc.details() or "")
                elif exc.code() != grpc.StatusCode.CANCELLED:
                    raise

        try:
            calls = [asyncio.create_task(hold(c)) for c in channels]
            n = await settle(gw, refused, CONNECTIONS, "gRPC calls refused or admitted")
            assert n == LIMIT, f"{n} admitted on the host, {len(refused)} refused"
            assert len(refused) == CONNECTIONS - LIMIT
            assert all("this worker's share 2 of max_concurrent_requests 4 (2 workers)" in d for d in refused), refused[:2]
            print(f"\ngRPC: {CONNECTIONS} connections, {n} admitted on the host, {len(refused)} RESOURCE_EXHAUSTED")
            for call in calls:
                call.cancel()
            await asyncio.gather(*calls, return_exceptions=True)
        finally:
            await asyncio.gather(*(c.close() for c in channels))
        await idle(gw)

    async def over_http() -> None:
        url = f"http://{gw.http_url}/v2/models/slow/infer"
        sessions = [aiohttp.ClientSession() for _ in range(CONNECTIONS)]  # a connector, so a connection, each
        refused: list[str] = []

        async def hold(session) -> None:
            async with session.post(url, data=slow_json(HOLD), headers=JSON) as resp:
                body = await resp.text()
                if resp.status == 429:
                    refused.append(body)
                else:
                    raise AssertionError(f"{resp.status}: {body}")

        try:
            calls = [asyncio.create_task(hold(s)) for s in sessions]
            n = await settle(gw, refused, CONNECTIONS, "HTTP requests refused or admitted")
            assert n == LIMIT, f"{n} admitted on the host, {len(refused)} refused"
            assert len(refused) == CONNECTIONS - LIMIT
            assert all("max_concurrent_requests 4 (2 workers)" in b for b in refused), refused[:2]
            print(f"HTTP: {CONNECTIONS} connections, {n} admitted on the host, {len(refused)} answered 429")
            for call in calls:
                call.cancel()
            await asyncio.gather(*calls, return_exceptions=True)
        finally:
            await asyncio.gather(*(s.close() for s in sessions))
        await idle(gw)

    run_async(over_grpc(), 180)
    run_async(over_http(), 180)
    # Probes and scrapes were never refused; the host serves again once the holders are gone.
    assert gw.http("GET", "/v2/health/ready")[0] == 200
    assert gw.terminate() == 0
