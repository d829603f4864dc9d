"""Graceful stop of the native transport: on SIGTERM calls in flight finish (within the grace period),
new streams are refused with GOAWAY / REFUSED_STREAM, and the process exits."""

from __future__ import annotations

import asyncio
import signal
import time

import grpc
import pytest
from hyperframe.frame import RstStreamFrame
from transport_helpers import (
    INFER, LIVE, RawH2, grpc_frame, metric_value, slow_grpc_request, start_transport_gateway, stub,
)

REFUSED_STREAM, NO_ERROR = 0x7, 0x0
OK = 0


@pytest.fixture
def daemon(tmp_path_factory):
    """Starts a native-transport daemon with a given grace period; it is stopped by the test, or at the end."""
    started = []

    def start(grace_s: float):
        # A process: the tests send it SIGTERM and read its exit code.
        started.append(start_transport_gateway(tmp_path_factory, "native", "--grace-period-s", str(grace_s),
                                               process=True))
        return started[-1]

    yield start
    for gw in started:
        gw.terminate()


def _busy(gw) -> float:
    return metric_value(gw, "gateway_executor_busy_instances", model="slow")


def _sigterm_during_a_long_call(gw, raw: RawH2) -> float:
    """Stream 1 runs the slow model for minutes (unless abandoned); SIGTERM while it runs."""
    raw.unary(1, INFER, slow_grpc_request(50_000_000).SerializeToString())
    gw.wait_until(lambda: _busy(gw) == 1, 30, "the call running")
    signalled = time.monotonic()
    gw.proc.send_signal(signal.SIGTERM)
    return signalled


def test_sigterm_lets_calls_in_flight_finish(daemon):
    grace_s = 30
    gw = daemon(grace_s)
    # Each call runs the slow model for a second or more; both instances busy before the signal.
    iters = 400_000

    async def scenario():
        async with grpc.aio.insecure_channel(gw.grpc_url) as channel:
            grpcio_call = stub(channel).ModelInfer(slow_grpc_request(iters, x=3.0), timeout=60)
            with RawH2(gw.grpc_url) as raw:
                raw.unary(1, INFER, slow_grpc_request(iters, x=2.0).SerializeToString())
                await asyncio.to_thread(gw.wait_until, lambda: _busy(gw) == 2, 30, "both calls running")
                signalled = time.monotonic()
                gw.proc.send_signal(signal.SIGTERM)
                # The server says it stops: GOAWAY (no error) naming the last stream it takes.
                await asyncio.to_thread(raw.wait, lambda: raw.goaway is not None, 30)
                assert raw.goaway.error_code == NO_ERROR and raw.goaway.last_stream_id == 1
                # A stream opened after that is refused, the one in flight is answered.
                raw.headers(3, raw.request_block(LIVE))
                raw.data(3, grpc_frame(b""), end_stream=True)
                answer = await asyncio.to_thread(raw.response, 1, 60)
                assert answer.status == OK, answer.message
                refused = await asyncio.to_thread(raw.response, 3, 30)
                assert refused.reset == REFUSED_STREAM and refused.headers is None
                await asyncio.to_thread(raw.wait_closed, 30)
            response = await grpcio_call
            assert response.model_name == "slow"
            return signalled

    signalled = asyncio.run(asyncio.wait_for(scenario(), 90))
    assert gw.proc.wait(grace_s) == 0
    assert time.monotonic() - signalled < grace_s
    assert "stopped" in gw.log()
    assert "Traceback" not in gw.log()


def test_sigterm_cancels_what_outlasts_the_grace_period(daemon):
    grace_s = 1.0
    gw = daemon(grace_s)
    with RawH2(gw.grpc_url) as raw:
        signalled = _sigterm_during_a_long_call(gw, raw)
        raw.wait_closed(30)
        assert raw.goaway is not None
        state = raw.streams.get(1)
        assert state is None or state.status is None  # never answered OK
    assert gw.proc.wait(30) == 0
    assert time.monotonic() - signalled < grace_s + 10


def test_a_client_reset_during_the_drain_does_not_hold_the_stop(daemon):
    grace_s = 30
    gw = daemon(grace_s)
    with RawH2(gw.grpc_url) as raw:
        signalled = _sigterm_during_a_long_call(gw, raw)
        raw.wait(lambda: raw.goaway is not None, 30)
        raw.send_frame(RstStreamFrame(1, error_code=0x8))
        raw.wait_closed(30)
    assert gw.proc.wait(grace_s) == 0
    assert time.monotonic() - signalled < grace_s / 2  # the reset call did not keep the daemon up
