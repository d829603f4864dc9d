"""KServe v2 / Triton-compatible gRPC servicer on grpc.aio, plus health and reflection."""

from __future__ import annotations

import asyncio
import logging
import ssl
import time

import grpc
from google.protobuf import json_format
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from gateway._proto import POOL
from gateway._proto import grpc_service_pb2 as pb
from gateway._proto import grpc_service_pb2_grpc as pb_grpc
from gateway.api.auth import AccessControl, metadata_value
from gateway.api.errors import GRPC_STATUS, classify
from gateway.api.grpc_native import NativeGrpcServer, TransportOptions
from gateway.api.grpc_native.message_stream import MessageStreamHandler, Reply, StreamRefused
from gateway.api.grpc_codec import decode_request, encode_response
from gateway.api.limits import ConnectionTimeouts, RequestLimits, check_request
from gateway.api.shared_memory import SharedMemoryRegistry
from gateway.api.shared_memory_rpcs import SharedMemoryRpcs
from gateway.api.unsupported_rpcs import UnsupportedRpcs
from gateway.api.v2_documents import model_config_message, statistics_document
from gateway.api.v2_request_policy import apply_output_plans, output_context_of, output_plans
from gateway.core import context as request_context
from gateway.core.errors import GatewayError, ModelNotFoundError, PermissionDeniedError, UnauthenticatedError
from gateway.core.stats import ModelStats
from gateway.service import InferenceService
from gateway.service.facade import EXTENSIONS, SERVER_NAME, SERVER_VERSION

_log = logging.getLogger(__name__)
SERVICE_NAME = "inference.GRPCInferenceService"
ROUTE_KEY_METADATA = "x-route-key"  # sticky routing key, as the HTTP header of the same name
# Requests of one stream in progress at once. Beyond it the stream is not read further, so a
# client sending faster than the model serves is held back by flow control instead of
# filling the model's queue (and being refused) with one stream.
STREAM_IN_FLIGHT = 256


def _deadline_ns(context: grpc.aio.ServicerContext) -> int:
    remaining = context.time_remaining()
    if remaining is None or remaining > 1e9:
        return 0
    return time.monotonic_ns() + int(remaining * 1e9)


def _route_key(context: grpc.aio.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == ROUTE_KEY_METADATA:
            return value if isinstance(value, str) else ""
    return ""


async def _abort(context: grpc.aio.ServicerContext, exc: BaseException):
    code, message = classify(exc)
    await context.abort(GRPC_STATUS[code], message)


def statistics_message(loaded, stats: ModelStats) -> pb.ModelStatistics:
    """The statistics document (``v2_documents``, what HTTP sends) as Triton's protobuf message."""
    return json_format.ParseDict(statistics_document(loaded, stats), pb.ModelStatistics())


_INFER_SPAN = SERVICE_NAME + "/ModelInfer"
_STREAM_SPAN = SERVICE_NAME + "/ModelStreamInfer"
_GRPC_OK = {"rpc.grpc.status_code": 0}


def _metadata(context: grpc.aio.ServicerContext) -> dict[str, str]:
    """Invocation metadata as a carrier for W3C trace-context extraction."""
    return {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}


def _span_attributes(request) -> dict[str, str]:
    return {"rpc.system": "grpc", "rpc.service": SERVICE_NAME, "gateway.model.name": request.model_name}


class InferenceServicer(SharedMemoryRpcs, UnsupportedRpcs, pb_grpc.GRPCInferenceServiceServicer):
    def __init__(
        self, service: InferenceService, limits: RequestLimits | None = None,
        shared_memory: SharedMemoryRegistry | None = None, access: AccessControl | None = None,
    ) -> None:
        self.service = service
        self.limits = limits or RequestLimits()
        self.shared_memory = shared_memory if shared_memory is not None else SharedMemoryRegistry()
        self._output_context = output_context_of(service)
        self.access = access or AccessControl.open()

    def _check_api_key(self, context: grpc.aio.ServicerContext) -> None:
        if self.access.api_keys.enabled:
            self.access.api_keys.check(metadata_value(context.invocation_metadata()))

    def _check_model_control(self, context: grpc.aio.ServicerContext) -> None:
        """Repository index, load and unload need the admin token (metadata 'authorization') when one is set."""
        self.access.admin.check_model_control(metadata_value(context.invocation_metadata()), context.peer())

    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=self.service.live)

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self.service.ready)

    async def ModelReady(self, request, context):
        return pb.ModelReadyResponse(ready=self.service.model_ready(request.name, request.version))

    async def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=SERVER_VERSION, extensions=EXTENSIONS)

    async def ModelMetadata(self, request, context):
        try:
            md = self.service.model_metadata(request.name, request.version)
        except GatewayError as exc:
            return await _abort(context, exc)
        tm = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=md.name,
            versions=md.versions,
            platform=md.platform,
            inputs=[tm(name=s.name, datatype=s.datatype, shape=s.shape) for s in md.inputs],
            outputs=[tm(name=s.name, datatype=s.datatype, shape=s.shape) for s in md.outputs],
        )

    async def ModelConfig(self, request, context):
        try:
            loaded = self.service.loaded(request.name, request.version)
        except GatewayError as exc:
            return await _abort(context, exc)
        return pb.ModelConfigResponse(config=model_config_message(loaded))

    async def ModelStatistics(self, request, context):
        try:
            versions = self.service.statistics(request.name, request.version)
        except GatewayError as exc:
            return await _abort(context, exc)
        peers = await self.service.peer_statistics()
        return pb.ModelStatisticsResponse(
            model_stats=[statistics_message(v, self.service.version_stats(v, peers)) for v in versions]
        )

    async def ModelInfer(self, request, context):
        try:
            self._check_api_key(context)
        except GatewayError as exc:
            return await _abort(context, exc)
        start = time.monotonic_ns()
        telemetry = self.service.telemetry
        trace = None
        if telemetry.tracing is not None:
            trace = telemetry.tracing.begin(_INFER_SPAN, _metadata(context), start, _span_attributes(request))
        try:
            return await self._infer(request, _deadline_ns(context), start, trace, _route_key(context))
        except asyncio.CancelledError:
            telemetry.request_done("grpc", request.model_name, request.model_version, "cancelled", start,
                                   time.monotonic_ns(), trace, "cancelled by the client")
            raise
        except Exception as exc:  # noqa: BLE001 - every failure becomes a status, never a crash
            code, message = classify(exc)
            telemetry.request_done("grpc", request.model_name, request.model_version, code.value, start,
                                   time.monotonic_ns(), trace, message, {"rpc.grpc.status_code": GRPC_STATUS[code].value[0]})
            await context.abort(GRPC_STATUS[code], message)

    async def _infer(self, request, deadline_ns: int, start: int, trace, route_key: str) -> pb.ModelInferResponse:
        """Decode, infer, encode one request and count it; failures propagate to the caller's status."""
        req = decode_request(request, deadline_ns, self.shared_memory)
        plans = output_plans(req.outputs, self.shared_memory) if req.outputs else None
        check_request(req, self.limits)
        req.route_key = route_key
        request_context.request_id.set(req.id)
        response = await self.service.infer_traced(req, trace)
        placed: frozenset[str] = frozenset()
        if plans:
            response, placed = apply_output_plans(response, plans, self._output_context)
        msg = encode_response(response, placed)
        self.service.telemetry.request_done("grpc", response.model, response.version, "ok", start, time.monotonic_ns(),
                                            trace, None, _GRPC_OK)
        return msg

    async def ModelStreamInfer(self, request_iterator, context):
        """Requests are served concurrently; each response (or error) carries its request's id.
        (The native transport serves this method through `open_native_stream` instead.)"""
        try:
            self._check_api_key(context)
        except GatewayError as exc:
            await _abort(context, exc)
        out: asyncio.Queue = asyncio.Queue()
        tasks: set[asyncio.Task] = set()
        room = asyncio.Semaphore(STREAM_IN_FLIGHT)
        route_key = _route_key(context)  # the stream's metadata applies to each of its requests
        carrier = _metadata(context) if self.service.telemetry.tracing is not None else None

        async def serve_one(req) -> None:
            msg, error = await self._stream_one(req, route_key, carrier)
            out.put_nowait(pb.ModelStreamInferResponse(error_message=error, infer_response=msg))

        async def read_all() -> None:
            async for req in request_iterator:
                await room.acquire()  # released once its answer is written: unread answers hold requests back
                task = asyncio.get_running_loop().create_task(serve_one(req))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            out.put_nowait(None)

        reader = asyncio.get_running_loop().create_task(read_all())
        reading = True
        try:
            while reading or tasks or not out.empty():
                item = await out.get()
                if item is None:
                    reading = False
                    if tasks:
                        await asyncio.wait(set(tasks))
                    continue
                yield item
                room.release()
        finally:
            reader.cancel()
            for t in tasks:
                t.cancel()

    def open_native_stream(self, context, reply: Reply) -> _NativeInferStream:
        """ModelStreamInfer on the native transport, message by message (grpc_native/message_stream.py)."""
        try:
            self._check_api_key(context)
        except GatewayError as exc:
            code, message = classify(exc)
            raise StreamRefused(GRPC_STATUS[code], message) from None
        carrier = _metadata(context) if self.service.telemetry.tracing is not None else None
        return _NativeInferStream(self, reply, _route_key(context), carrier)

    async def _stream_one(self, req, route_key: str, carrier: dict | None) -> tuple[pb.ModelInferResponse, str]:
        """One request of a stream: its answer, or an error message that ends this request only."""
        telemetry = self.service.telemetry
        start = time.monotonic_ns()
        trace = None
        tracing = telemetry.tracing
        if carrier is not None and tracing is not None:
            trace = tracing.begin(_STREAM_SPAN, carrier, start, _span_attributes(req))
        try:
            return await self._infer(req, 0, start, trace, route_key), ""
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure becomes the request's error, never the stream's
            code, message = classify(exc)
            telemetry.request_done("grpc", req.model_name, req.model_version, code.value, start,
                                   time.monotonic_ns(), trace, message)
            return pb.ModelInferResponse(model_name=req.model_name, model_version=req.model_version, id=req.id), message

    async def RepositoryIndex(self, request, context):
        try:
            self._check_model_control(context)
        except GatewayError as exc:
            return await _abort(context, exc)
        models = [
            pb.RepositoryIndexResponse.ModelIndex(name=row.name, version=row.version, state=row.state, reason=row.reason)
            for row in self.service.repository_index()
            if not request.ready or row.state == "READY"
        ]
        return pb.RepositoryIndexResponse(models=models)

    async def RepositoryModelLoad(self, request, context):
        try:
            self._check_model_control(context)
            await self.service.load_model(request.model_name)
        except GatewayError as exc:
            return await _abort(context, exc)
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(self, request, context):
        try:
            self._check_model_control(context)
            await self.service.unload_model(request.model_name)
        except (ModelNotFoundError, UnauthenticatedError, PermissionDeniedError) as exc:
            return await _abort(context, exc)
        return pb.RepositoryModelUnloadResponse()


class HealthMirror:
    """Keeps the standard gRPC health service in step with readiness."""

    def __init__(self, service: InferenceService) -> None:
        self.service = service
        self.servicer = health.aio.HealthServicer() if hasattr(health, "aio") else health.HealthServicer()

    async def update(self) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if self.service.ready else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", SERVICE_NAME):
            await _maybe_await(self.servicer.set(name, status))


async def _maybe_await(value) -> None:
    if asyncio.iscoroutine(value):
        await value


_DEFAULT_OPTIONS = TransportOptions()


class _NativeInferStream:
    """One ModelStreamInfer call on the native transport: a task per request, answered with `reply`
    in the order requests finish (each answer carries its request's id)."""

    __slots__ = ("_servicer", "_reply", "_route_key", "_carrier", "_tasks", "_loop")

    def __init__(self, servicer: InferenceServicer, reply: Reply, route_key: str, carrier: dict | None) -> None:
        self._servicer = servicer
        self._reply = reply
        self._route_key = route_key  # the stream's metadata applies to each of its requests
        self._carrier = carrier
        self._tasks: set[asyncio.Task] = set()
        self._loop = asyncio.get_running_loop()

    def on_message(self, request) -> None:
        task = self._loop.create_task(self._serve(request))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, request) -> None:
        msg, error = await self._servicer._stream_one(request, self._route_key, self._carrier)
        self._reply(stream_response_bytes(msg, error))

    def cancel(self) -> None:
        for task in list(self._tasks):
            task.cancel()


def stream_response_bytes(msg: pb.ModelInferResponse, error: str) -> bytes:
    """ModelStreamInferResponse{error_message, infer_response} serialized around the already built
    answer (field 1 and field 2, length-delimited), without copying it into a wrapper message."""
    inner = msg.SerializeToString()
    head = b""
    if error:
        text = error.encode()
        head = b"\x0a" + _varint(len(text)) + text
    return head + b"\x12" + _varint(len(inner)) + inner


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _reflection_pool():
    """Our private descriptor pool (see gateway._proto), with the health and reflection protos
    added, so reflection answers for all three services it lists."""
    for module in (health_pb2, reflection_pb2):
        try:
            POOL.FindFileByName(module.DESCRIPTOR.name)
        except KeyError:
            POOL.AddSerializedFile(module.DESCRIPTOR.serialized_pb)
    return POOL


def _register(
    server, service: InferenceService, limits: RequestLimits, shared_memory: SharedMemoryRegistry | None = None,
    access: AccessControl | None = None,
) -> HealthMirror:
    servicer = InferenceServicer(service, limits, shared_memory, access)
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    if isinstance(server, NativeGrpcServer):
        server.add_message_stream(SERVICE_NAME, "ModelStreamInfer", MessageStreamHandler(
            servicer.open_native_stream, pb.ModelInferRequest.FromString, STREAM_IN_FLIGHT))
    mirror = HealthMirror(service)
    health_pb2_grpc.add_HealthServicer_to_server(mirror.servicer, server)
    names = (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
        reflection.aio.ReflectionServicer(names, pool=_reflection_pool()), server
    )
    return mirror


def build_server(
    service: InferenceService, host: str, port: int, max_message_bytes: int,
    limits: RequestLimits | None = None, max_metadata_bytes: int = 0, credentials: grpc.ServerCredentials | None = None,
    transport: str = "native", ssl_context: ssl.SSLContext | None = None, timeouts: ConnectionTimeouts | None = None,
    shared_memory: SharedMemoryRegistry | None = None, access: AccessControl | None = None,
) -> tuple[grpc.aio.Server | NativeGrpcServer, HealthMirror, int]:
    """The gRPC server on ``transport``: TLS from ``ssl_context`` (native) or ``credentials`` (grpcio)."""
    limits = limits or RequestLimits()
    timeouts = timeouts or ConnectionTimeouts()
    if transport == "native":
        options = TransportOptions(
            max_message_bytes=max_message_bytes,
            max_header_bytes=max_metadata_bytes or _DEFAULT_OPTIONS.max_header_bytes,
            max_concurrent_calls=limits.max_concurrent_requests,
            max_concurrent_calls_words=limits.concurrency_words(),
            header_timeout_s=timeouts.header_s,
            idle_timeout_s=timeouts.idle_s,
            tls_handshake_timeout_s=timeouts.tls_handshake_s,
        )
        try:
            native = NativeGrpcServer(host, port, options, ssl_context)
        except OSError as exc:
            raise OSError(f"cannot listen for gRPC on {host}:{port}: {exc}") from exc
        return native, _register(native, service, limits, shared_memory, access), native.port
    channel_options = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.so_reuseport", 1),
        ("grpc.max_connection_idle_ms", int(timeouts.idle_s * 1000)),
        # A connection that has not finished its HTTP/2 (and TLS) handshake in time is dropped.
        ("grpc.server_handshake_timeout_ms", int(min(timeouts.header_s, timeouts.tls_handshake_s) * 1000)),
    ]
    if max_metadata_bytes:
        # Soft and hard limit alike: between the two grpc refuses only some requests at random.
        channel_options += [("grpc.max_metadata_size", max_metadata_bytes), ("grpc.absolute_max_metadata_size", max_metadata_bytes)]
    server = grpc.aio.server(
        options=channel_options,
        # Beyond it grpc answers RESOURCE_EXHAUSTED at once; a stream counts as one RPC.
        maximum_concurrent_rpcs=limits.max_concurrent_requests or None,
    )
    mirror = _register(server, service, limits, shared_memory, access)
    address = f"{host}:{port}"
    bound = server.add_secure_port(address, credentials) if credentials is not None else server.add_insecure_port(address)
    if bound == 0:
        raise OSError(f"cannot listen for gRPC on {host}:{port}")
    return server, mirror, bound
