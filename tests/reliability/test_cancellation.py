"""Deadlines and cancellation: a request whose caller went away before execution never runs the
model; one cancelled while it runs is dropped (the run aborted) and leaves nothing behind."""

from __future__ import annotations

import asyncio

import aiohttp
import grpc
from reliability_helpers import (
    ADMIN_TOKEN, debug_state, executed_rows, grpc_stub, quiescent, run_async, slow_grpc_request, slow_json,
    version_state, write_slow_model,
)

LONG = 2_000_000  # seconds of loop iterations: long enough to cancel others behind it, aborted by the tests
CONFIG = "max_batch_size: 1\ninstances: 1\n"


def _gateway(tmp_path, start_gateway):
    root = tmp_path / "models"
    write_slow_model(root, CONFIG)
    return start_gateway(root, "--admin-token", ADMIN_TOKEN)


async def _until(gw, predicate, what: str, timeout_s: float = 60):
    async with asyncio.timeout(timeout_s):
        while not predicate(await asyncio.to_thread(version_state, gw, "slow")):
            await asyncio.sleep(0.02)


async def _in_progress(gw, n: int, timeout_s: float = 60):
    async with asyncio.timeout(timeout_s):
        while (await asyncio.to_thread(debug_state, gw))["requests_in_progress"] != n:
            await asyncio.sleep(0.02)


def test_grpc_cancel_before_and_during_execution(tmp_path, start_gateway):
    gw = _gateway(tmp_path, start_gateway)
    baseline = quiescent(gw)["asyncio_tasks"]
    rows0 = executed_rows(gw, "slow")

    async def scenario():
        async with grpc.aio.insecure_channel(gw.grpc_url) as channel:
            stub = grpc_stub(channel)
            await stub.ModelInfer(slow_grpc_request(1), timeout=60)  # channel warm
            # Before execution: B waits behind A, B is cancelled, A is cancelled while running.
            a = stub.ModelInfer(slow_grpc_request(LONG, 1.0))
            await _until(gw, lambda s: s["busy_instances"] == 1, "A running")
            b = stub.ModelInfer(slow_grpc_request(1, 2.0))
            await _until(gw, lambda s: s["queued"] == 1, "B queued")
            b.cancel()
            await _in_progress(gw, 1)  # the server has seen B go
            a.cancel()
            for call in (a, b):
                try:
                    await call
                except (asyncio.CancelledError, grpc.aio.AioRpcError):
                    pass
                assert await call.code() == grpc.StatusCode.CANCELLED
            await _until(gw, lambda s: s["busy_instances"] == 0 and s["queued"] == 0, "instance free")
            # A deadline passing while queued: DEADLINE_EXCEEDED, never executed either.
            c = stub.ModelInfer(slow_grpc_request(LONG, 3.0))
            await _until(gw, lambda s: s["busy_instances"] == 1, "C running")
            try:
                await stub.ModelInfer(slow_grpc_request(1, 4.0), timeout=0.5)
                raise AssertionError("D should have passed its deadline in the queue")
            except grpc.aio.AioRpcError as err:
                assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            c.cancel()
            await _until(gw, lambda s: s["busy_instances"] == 0, "C aborted")
            answer = await stub.ModelInfer(slow_grpc_request(1, 5.0), timeout=60)
            assert answer.model_name == "slow"

    run_async(scenario())
    # warm-up and the last request ran; A and C were aborted mid-run, B and D never ran.
    assert executed_rows(gw, "slow") - rows0 == 2
    state = quiescent(gw, baseline_tasks=baseline)
    assert state["requests_in_progress"] == 0
    assert state["asyncio_tasks"] <= baseline
    assert "Traceback" not in gw.log() and "unexpected error" not in gw.log()


def test_http_client_hanging_up_before_and_during_execution(tmp_path, start_gateway):
    gw = _gateway(tmp_path, start_gateway)
    baseline = quiescent(gw)["asyncio_tasks"]
    rows0 = executed_rows(gw, "slow")
    url = f"http://{gw.http_url}/v2/models/slow/infer"
    headers = {"Content-Type": "application/json"}

    async def post(session, iters: int, x: float):
        async with session.post(url, data=slow_json(iters, x), headers=headers) as resp:
            return resp.status, await resp.read()

    async def scenario():
        # One session per request: cancelling a request closes its own connection.
        async with aiohttp.ClientSession() as sa, aiohttp.ClientSession() as sb, aiohttp.ClientSession() as sc:
            a = asyncio.create_task(post(sa, LONG, 1.0))
            await _until(gw, lambda s: s["busy_instances"] == 1, "A running")
            b = asyncio.create_task(post(sb, 1, 2.0))
            await _until(gw, lambda s: s["queued"] == 1, "B queued")
            b.cancel()
            await asyncio.gather(b, return_exceptions=True)
            await sb.close()
            # The server sees B's connection close: its handler is cancelled while B waits.
            await _in_progress(gw, 1)
            a.cancel()
            await asyncio.gather(a, return_exceptions=True)
            await sa.close()
            await _until(gw, lambda s: s["busy_instances"] == 0 and s["queued"] == 0, "instance free")
            status, _ = await post(sc, 1, 3.0)
            assert status == 200

    run_async(scenario())
    assert executed_rows(gw, "slow") - rows0 == 1  # only the last request ran to the end
    state = quiescent(gw, baseline_tasks=baseline)
    assert state["requests_in_progress"] == 0
    assert "Traceback" not in gw.log() and "unexpected error" not in gw.log()
