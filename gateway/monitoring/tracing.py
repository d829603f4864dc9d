"""OpenTelemetry traces: one server span per request, with its hops as child spans.

Hops are stamped on the monotonic clock while the request runs (``RequestTrace``
and the core ``TraceRecord`` the scheduler fills) and turned into spans with
explicit times when the request ends, so the hot path never opens or closes a
span. With tracing off the api layer holds ``None`` instead of a ``Tracing`` and
creates nothing at all.

Exporter, endpoint, headers, batch-processor timing, propagators, resource and
sampler come from the standard ``OTEL_*`` environment variables.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from typing import Any

from opentelemetry import propagate
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, Sampler, TraceIdRatioBased
from opentelemetry.trace import SpanKind, Status, StatusCode, format_trace_id, set_span_in_context

from gateway.core import context
from gateway.core.errors import ConfigError
from gateway.core.generation import GenerationTrace
from gateway.core.types import TraceRecord

_log = logging.getLogger(__name__)

ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
PROTOCOLS = ("http/protobuf", "grpc")


def _env(name: str) -> str:
    return os.environ.get(name, "").strip()


def tracing_wanted(mode: str) -> bool:
    """``mode`` is the ``tracing`` setting: on, off, or auto (on when an OTLP endpoint is configured)."""
    if mode == "off" or _env("OTEL_SDK_DISABLED").lower() == "true":
        return False
    exporter = _env("OTEL_TRACES_EXPORTER").lower()
    if exporter == "none":
        return False
    return mode == "on" or exporter == "console" or any(_env(v) for v in ENDPOINT_VARS)


def build_exporter() -> SpanExporter:
    exporter = _env("OTEL_TRACES_EXPORTER").lower() or "otlp"
    if exporter == "console":
        return ConsoleSpanExporter()
    if exporter != "otlp":
        raise ConfigError("environment", "OTEL_TRACES_EXPORTER", f"'{exporter}' is not supported (otlp, console, none)")
    protocol = _env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or _env("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf"
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter()
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

        return HttpExporter()
    raise ConfigError("environment", "OTEL_EXPORTER_OTLP_PROTOCOL", f"'{protocol}' is not supported ({', '.join(PROTOCOLS)})")


def build_sampler(sample_ratio: float) -> Sampler | None:
    """None lets the SDK read OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG."""
    if _env("OTEL_TRACES_SAMPLER"):
        return None
    return ParentBased(ALWAYS_ON if sample_ratio >= 1.0 else TraceIdRatioBased(sample_ratio))


def build_resource(service_version: str) -> Resource:
    resource = Resource.create({SERVICE_VERSION: service_version})
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: "gateway"}))
    return resource


class Tracing:
    def __init__(self, provider: TracerProvider) -> None:
        self._provider = provider
        self._tracer = provider.get_tracer("gateway")

    @classmethod
    def from_settings(cls, mode: str, sample_ratio: float, service_version: str) -> Tracing | None:
        if not tracing_wanted(mode):
            return None
        provider = TracerProvider(sampler=build_sampler(sample_ratio), resource=build_resource(service_version))
        exporter = build_exporter()
        provider.add_span_processor(BatchSpanProcessor(exporter))
        endpoint = next((_env(v) for v in ENDPOINT_VARS if _env(v)), "the exporter's default endpoint")
        _log.info("tracing on: %s to %s", type(exporter).__name__, endpoint)
        return cls(provider)

    def begin(self, name: str, carrier: Mapping[str, Any], start_ns: int, attributes: dict[str, Any]) -> RequestTrace | None:
        """Open a request's server span, continuing a W3C ``traceparent`` in ``carrier`` if there is one.

        Returns None when the sampler drops the trace: nothing more is recorded for it.
        """
        offset = time.time_ns() - time.monotonic_ns()
        span = self._tracer.start_span(
            name,
            context=propagate.extract(carrier),
            kind=SpanKind.SERVER,
            attributes=attributes,
            start_time=start_ns + offset,
        )
        if not span.is_recording():
            return None
        context.trace_id.set(format_trace_id(span.get_span_context().trace_id))
        return RequestTrace(self._tracer, span, start_ns, offset)

    def shutdown(self) -> None:
        """Flush spans still queued (blocking: call off the event loop)."""
        self._provider.shutdown()


class RequestTrace:
    """A traced request in flight: the api stamps decode/encode, the scheduler fills ``record``."""

    __slots__ = ("_tracer", "span", "record", "generation", "start_ns", "decoded_ns", "served_ns", "offset_ns")

    def __init__(self, tracer, span, start_ns: int, offset_ns: int) -> None:
        self._tracer = tracer
        self.span = span
        self.record = TraceRecord()
        self.generation: GenerationTrace | None = None
        self.start_ns = start_ns
        self.decoded_ns = 0
        self.served_ns = 0
        self.offset_ns = offset_ns

    def attach_generation(self) -> GenerationTrace:
        """A text-generation request (/v1): the body is parsed; the engine stamps the returned record."""
        self.decoded_ns = time.monotonic_ns()
        self.generation = GenerationTrace()
        return self.generation

    def attach(self, request: Any) -> None:
        """Decoding is done: stamp it and let the stages after it stamp theirs into ``request.trace``."""
        self.decoded_ns = time.monotonic_ns()
        request.trace = self.record

    def finish(self, end_ns: int, error: str | None, attributes: dict[str, Any] | None = None) -> None:
        """Emit the child spans from the stamps and end the request span at ``end_ns``."""
        parent = set_span_in_context(self.span)
        r = self.record
        # The wire decode; for a generation request "decode" is its token steps, so the body's is "read request".
        self._child(parent, "decode" if self.generation is None else "read request", self.start_ns, self.decoded_ns)
        if r.cache_start_ns:
            self._child(parent, "cache lookup", r.cache_start_ns, r.cache_end_ns, {"gateway.cache.hit": r.cache_hit})
        if r.dispatch_ns:
            self._child(parent, "queue wait", r.enqueue_ns, r.dispatch_ns)
            self._child(parent, "batch execute", r.dispatch_ns, r.done_ns, {
                "gateway.batch.size": r.batch_rows,
                "gateway.batch.requests": r.batch_requests,
            })
        if self.generation is not None:
            self._generation_children(parent, self.generation)
        if self.served_ns:
            self._child(parent, "encode", self.served_ns, end_ns)
        if attributes:
            self.span.set_attributes(attributes)
        if error is not None:
            self.span.set_status(Status(StatusCode.ERROR, error))
        self.span.end(end_time=end_ns + self.offset_ns)

    def _generation_children(self, parent, g: GenerationTrace) -> None:
        """tokenize, queue wait, prefill, one decode span for all steps, and detokenize (the summed
        worker time of turning tokens into text, laid from the first token on)."""
        self._child(parent, "tokenize", g.tokenize_start_ns, g.tokenize_end_ns, {"gateway.generation.prompt_tokens": g.prompt_tokens})
        if g.prefill_start_ns:
            self._child(parent, "queue wait", g.queued_ns, g.prefill_start_ns)
            self._child(parent, "prefill", g.prefill_start_ns, g.prefill_end_ns, {"gateway.generation.prompt_tokens": g.prompt_tokens})
        if g.decode_steps:
            self._child(parent, "decode", g.decode_start_ns, g.decode_end_ns, {"gateway.generation.decode_steps": g.decode_steps})
        if g.detokenized_tokens:
            first = g.prefill_start_ns or g.decode_start_ns
            self._child(parent, "detokenize", first, first + g.detokenize_ns, {
                "gateway.generation.tokens": g.detokenized_tokens, "gateway.generation.detokenize_summed": True})

    def _child(self, parent, name: str, start_ns: int, end_ns: int, attributes: dict[str, Any] | None = None) -> None:
        if start_ns and end_ns >= start_ns:
            span = self._tracer.start_span(name, context=parent, start_time=start_ns + self.offset_ns, attributes=attributes)
            span.end(end_time=end_ns + self.offset_ns)
