"""locust: KServe v2 gRPC ModelInfer, driven correctly under gevent.

    locust -f loadtests/v2_grpc.py --host 127.0.0.1:8001 --headless -u 32 -r 8 -t 60s \
        --csv reports/v2_grpc --html reports/v2_grpc.html [--model mlp] [--rows 1]

The pattern: locust monkey-patches the standard library with gevent when it is imported;
grpcio's C core has its own threads and polling, so ``grpc.experimental.gevent.init_gevent()``
must run after that patching and before any channel exists, or every call blocks the
whole gevent hub and throughput silently drops (~7x measured). Each simulated user owns
one channel and a blocking stub; each call is reported to locust's ``request`` event
with its latency, size and exception, so gRPC results appear in the same CSV/HTML report.
The messages come from tritonclient's generated stubs (the same ``inference`` protocol).
"""

from __future__ import annotations

import time

import grpc
import grpc.experimental.gevent as grpc_gevent
from locust import User, events, task

grpc_gevent.init_gevent()  # locust has patched the stdlib by now; no channel exists yet

import numpy as np  # noqa: E402
from common import random_input, refresh_gevent_clock  # noqa: E402
from tritonclient.grpc import service_pb2, service_pb2_grpc  # noqa: E402


@events.init_command_line_parser.add_listener
def _options(parser):
    parser.add_argument("--model", default="mlp", help="model to infer")
    parser.add_argument("--rows", type=int, default=1, help="batch rows per request")
    parser.add_argument("--grpc-timeout-s", type=float, default=30.0, help="deadline of each call")


class GrpcUser(User):
    """Base for gRPC users: one channel per user, calls timed and reported to locust."""

    abstract = True

    def __init__(self, environment) -> None:
        super().__init__(environment)
        target = self.host.split("://", 1)[-1]
        self.channel = grpc.insecure_channel(target)
        self.stub = service_pb2_grpc.GRPCInferenceServiceStub(self.channel)
        self.timeout_s = environment.parsed_options.grpc_timeout_s

    def call(self, name: str, method, request):
        start = time.perf_counter()
        response, exception, length = None, None, 0
        try:
            response = method(request, timeout=self.timeout_s)
            length = response.ByteSize()
        except grpc.RpcError as exc:
            exception = exc
        self.environment.events.request.fire(
            request_type="grpc", name=name, response_time=(time.perf_counter() - start) * 1000,
            response_length=length, response=response, exception=exception, context={},
        )
        return response

    def on_stop(self) -> None:
        self.channel.close()


class V2GrpcUser(GrpcUser):
    def on_start(self) -> None:
        opts = self.environment.parsed_options
        md = self.call("ModelMetadata", self.stub.ModelMetadata, service_pb2.ModelMetadataRequest(name=opts.model))
        if md is None:
            raise RuntimeError(f"model '{opts.model}' is not served")
        rng = np.random.default_rng(0)
        req = service_pb2.ModelInferRequest(model_name=opts.model)
        for spec in md.inputs:
            arr = random_input(spec.name, spec.datatype, list(spec.shape), opts.rows, rng)
            req.inputs.add(name=spec.name, datatype=spec.datatype, shape=arr.shape)
            req.raw_input_contents.append(arr.tobytes())
        self.request = req
        self.call_name = f"ModelInfer {opts.model}"

    @task
    def infer(self) -> None:
        self.call(self.call_name, self.stub.ModelInfer, self.request)


refresh_gevent_clock()
