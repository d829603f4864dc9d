"""The native gRPC transport against real grpcio clients (grpc.aio channels with tritonclient's stubs):
deadlines, compression, large messages, limits, health, reflection and a long request stream."""

from __future__ import annotations

import asyncio
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from transport_helpers import (
    MAX_REQUEST_BYTES, SIMPLE_QUEUE, check_simple, echo_output, echo_request, grpc_options, metric_value, native_gw,
    simple_arrays, simple_request, slow_grpc_request, stub,
)

__all__ = ["native_gw"]

LONG = 20_000_000  # loop iterations of the slow model: about a minute, unless the call is abandoned


def run(coro, timeout_s: float = 60):
    return asyncio.run(asyncio.wait_for(coro, timeout_s))


async def _busy(gw, model: str) -> float:
    return await asyncio.to_thread(metric_value, gw, "gateway_executor_busy_instances", model=model)


async def _until(predicate, timeout_s: float = 20):
    async with asyncio.timeout(timeout_s):
        while not await predicate():
            await asyncio.sleep(0.02)


def test_deadline_exceeded_against_a_slow_model(native_gw):
    async def scenario():
        async with grpc.aio.insecure_channel(native_gw.grpc_url) as channel:
            infer = stub(channel).ModelInfer
            assert (await infer(slow_grpc_request(1), timeout=30)).model_name == "slow"
            started = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await infer(slow_grpc_request(LONG), timeout=0.5)
            assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert time.monotonic() - started < 5
            # The run is abandoned on the server too, and the same channel serves.
            await _until(lambda: _wait_busy_zero(native_gw))
            answer = await infer(slow_grpc_request(10, x=2.0), timeout=30)
            assert answer.model_name == "slow"

    run(scenario())


async def _wait_busy_zero(gw) -> bool:
    return await _busy(gw, "slow") == 0


@pytest.mark.parametrize("compression", [grpc.Compression.Gzip, grpc.Compression.Deflate])
def test_compressed_requests(native_gw, compression):
    payload = (b"compressible " * 50_000) + bytes(range(256))  # ~650 KiB, gzip shrinks it a lot

    async def scenario():
        async with grpc.aio.insecure_channel(native_gw.grpc_url, options=grpc_options(), compression=compression) as channel:
            answer = await stub(channel).ModelInfer(echo_request(payload), timeout=30)
            assert echo_output(answer.SerializeToString()) == payload
            a, b = simple_arrays(3)
            check_simple((await stub(channel).ModelInfer(simple_request(a, b), timeout=30)).SerializeToString(), a, b)
        # Compression per call on an uncompressed channel.
        async with grpc.aio.insecure_channel(native_gw.grpc_url, options=grpc_options()) as channel:
            answer = await stub(channel).ModelInfer(echo_request(payload), timeout=30, compression=compression)
            assert echo_output(answer.SerializeToString()) == payload

    run(scenario())


def test_a_compressed_request_above_the_limit_once_inflated_is_refused(native_gw):
    payload = bytes(MAX_REQUEST_BYTES + 1024)  # zeros: a few KiB once gzipped

    async def scenario():
        async with grpc.aio.insecure_channel(native_gw.grpc_url, options=grpc_options(), compression=grpc.Compression.Gzip) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub(channel).ModelInfer(echo_request(payload), timeout=30)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert (await stub(channel).ServerLive(_live(), timeout=30)).live

    run(scenario())


def _live():
    from tritonclient.grpc import service_pb2 as pb

    return pb.ServerLiveRequest()


def test_large_request_and_answer_are_bit_exact(native_gw):
    """Above the 4 MiB stream window and the 1 MiB frame size, both ways."""
    payload = np.random.default_rng(5).integers(0, 256, 6 << 20, dtype=np.uint8).tobytes()

    async def scenario():
        async with grpc.aio.insecure_channel(native_gw.grpc_url, options=grpc_options()) as channel:
            infer = stub(channel).ModelInfer
            answers = await asyncio.gather(*(infer(echo_request(payload[i:] + payload[:i], f"big{i}"), timeout=60)
                                             for i in range(3)))
            for i, answer in enumerate(answers):
                assert answer.id == f"big{i}"
                assert echo_output(answer.SerializeToString()) == payload[i:] + payload[:i]

    run(scenario())


def test_request_above_max_request_bytes_then_the_channel_serves_on(native_gw):
    payload = bytes(MAX_REQUEST_BYTES)  # the message is the payload plus its protobuf framing: just above

    async def scenario():
        async with grpc.aio.insecure_channel(native_gw.grpc_url, options=grpc_options()) as channel:
            infer = stub(channel).ModelInfer
            for _ in range(2):
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await infer(echo_request(payload), timeout=30)
                assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "larger than max" in err.value.details()
                small = bytes(range(200))
                assert echo_output((await infer(echo_request(small), timeout=30)).SerializeToString()) == small

    run(scenario())


def test_health_check_and_watch(native_gw):
    async def scenario():
        async with grpc.aio.insecure_channel(native_gw.grpc_url) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for service in ("", "inference.GRPCInferenceService"):
                answer = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
                assert answer.status == health_pb2.HealthCheckResponse.SERVING
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=10)
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
            # Watch streams answers: the first is the current status.
            for service, status in (("", health_pb2.HealthCheckResponse.SERVING),
                                    ("no.such.Service", health_pb2.HealthCheckResponse.SERVICE_UNKNOWN)):
                call = health.Watch(health_pb2.HealthCheckRequest(service=service))
                first = await asyncio.wait_for(call.read(), 10)
                assert first.status == status
                call.cancel()
                assert await call.code() == grpc.StatusCode.CANCELLED
            assert (await health.Check(health_pb2.HealthCheckRequest(), timeout=10)).status == health_pb2.HealthCheckResponse.SERVING

    run(scenario())


def test_reflection_lists_the_services(native_gw):
    async def scenario():
        async with grpc.aio.insecure_channel(native_gw.grpc_url) as channel:
            reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
            requests = [
                reflection_pb2.ServerReflectionRequest(list_services=""),
                reflection_pb2.ServerReflectionRequest(file_containing_symbol="inference.GRPCInferenceService"),
            ]
            answers = [a async for a in reflection.ServerReflectionInfo(iter(requests), timeout=10)]
            assert len(answers) == 2
            names = {s.name for s in answers[0].list_services_response.service}
            assert {"inference.GRPCInferenceService", "grpc.health.v1.Health",
                    "grpc.reflection.v1alpha.ServerReflection"} <= names
            assert answers[1].file_descriptor_response.file_descriptor_proto

    run(scenario())


def test_thousands_of_requests_on_one_stream(native_gw):
    """Far more requests than the model's queue takes, and more bytes than the stream window: the
    stream is read as the model serves, so none is refused, and every one is answered once."""
    count = 4000
    pad = "p" * 2000  # ids are echoed: ~9 MiB each way, above the 4 MiB stream window
    assert count > 10 * SIMPLE_QUEUE
    arrays = simple_arrays(1, seed=3)

    async def scenario():
        async with grpc.aio.insecure_channel(native_gw.grpc_url) as channel:
            async def requests():
                for i in range(count):
                    yield simple_request(*arrays, request_id=f"{i}:{pad}")

            seen: dict[str, bytes] = {}
            errors = []
            async for answer in stub(channel).ModelStreamInfer(requests(), timeout=120):
                if answer.error_message:
                    errors.append(answer.error_message)
                else:
                    key, _, rest = answer.infer_response.id.partition(":")
                    assert rest == pad and key not in seen, "answered twice, or another id"
                    seen[key] = answer.infer_response.SerializeToString()
            return seen, errors

    seen, errors = run(scenario(), timeout_s=120)
    assert errors == []
    assert set(seen) == {str(i) for i in range(count)}
    for i in (0, count // 2, count - 1):
        check_simple(seen[str(i)], *arrays)


def test_many_concurrent_unary_calls_on_one_channel(native_gw):
    async def scenario():
        async with grpc.aio.insecure_channel(native_gw.grpc_url) as channel:
            infer = stub(channel).ModelInfer
            inputs = [simple_arrays(1 + i % 4, seed=i) for i in range(200)]
            answers = await asyncio.gather(*(infer(simple_request(a, b, str(i)), timeout=60) for i, (a, b) in enumerate(inputs)))
            for i, ((a, b), answer) in enumerate(zip(inputs, answers)):
                assert answer.id == str(i)
                check_simple(answer.SerializeToString(), a, b)

    run(scenario())
