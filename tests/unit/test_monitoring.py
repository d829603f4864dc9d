"""Monitoring pieces without a server: histograms, the Prometheus collector, tracing set-up, log levels."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gateway.core.errors import ConfigError
from gateway.core.settings import load_settings
from gateway.core.stats import Histogram, ModelStats
from gateway.monitoring import ModelSample, Telemetry
from gateway.monitoring.tracing import Tracing, build_exporter, tracing_wanted

OTEL_VARS = ("OTEL_SDK_DISABLED", "OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT",
             "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")


@pytest.fixture
def clean_env(monkeypatch):
    for v in OTEL_VARS:
        monkeypatch.delenv(v, raising=False)
    return monkeypatch


def test_histogram_bounds_are_inclusive_upper_edges():
    h = Histogram(bounds=(10, 20))
    for v in (0, 10, 11, 20, 21, 10**9):
        h.observe(v)
    assert h.counts == [2, 2, 2]
    assert h.total == 0 + 10 + 11 + 20 + 21 + 10**9


def samples_of(telemetry: Telemetry) -> dict:
    text = generate_latest(telemetry.registry).decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_collector_reads_model_stats_and_request_series():
    stats = ModelStats()
    stats.record_queue(30_000)        # 30 us
    stats.record_queue(2_000_000)     # 2 ms
    stats.record_batch(3, 1_000, 400_000, 1_000)
    stats.record_batch(16, 1_000, 900_000, 1_000)
    stats.rejected_queue_full = 4
    stats.cache_hit.add(1000, 7)
    stats.cache_coalesced.add(300, 2)  # of the 7 hits, 2 were answered by an identical request's run
    telemetry = Telemetry()
    telemetry.bind(lambda: [ModelSample("m", "2", stats, queue_depth=5, instances=2, busy_instances=1)], lambda m, v: (m, v))
    telemetry.request_done("grpc", "m", "2", "ok", 0, 1_500_000, None)
    telemetry.request_done("grpc", "m", "2", "resource_exhausted", 0, 100_000, None, error="queue full")
    s = samples_of(telemetry)
    mv = (("model", "m"), ("version", "2"))

    def get(name, *extra):
        return s[(name, tuple(sorted(mv + extra)))]

    assert get("gateway_queue_duration_seconds_bucket", ("le", "5e-05")) == 1
    assert get("gateway_queue_duration_seconds_bucket", ("le", "0.0025")) == 2
    assert get("gateway_queue_duration_seconds_sum") == pytest.approx(0.00203)
    # Batch sizes 3 and 16 fall in the le=4 and le=16 buckets (cumulative).
    assert get("gateway_batch_size_bucket", ("le", "2.0")) == 0
    assert get("gateway_batch_size_bucket", ("le", "4.0")) == 1
    assert get("gateway_batch_size_bucket", ("le", "16.0")) == 2
    assert get("gateway_batch_size_count") == 2 and get("gateway_batch_size_sum") == 19
    assert get("gateway_batch_execute_duration_seconds_count") == 2
    assert get("gateway_executor_busy_seconds_total") == pytest.approx(0.001304)
    assert get("gateway_queue_depth") == 5 and get("gateway_executor_busy_instances") == 1
    assert get("gateway_rejected_requests_total", ("reason", "queue_full")) == 4
    assert get("gateway_cache_lookups_total", ("result", "hit")) == 5
    assert get("gateway_cache_lookups_total", ("result", "coalesced")) == 2
    assert get("gateway_requests_total", ("protocol", "grpc"), ("code", "ok")) == 1
    assert get("gateway_requests_total", ("protocol", "grpc"), ("code", "resource_exhausted")) == 1
    assert get("gateway_request_duration_seconds_count", ("protocol", "grpc")) == 2


def test_failed_requests_are_labelled_through_the_resolver():
    telemetry = Telemetry()
    telemetry.bind(lambda: [], lambda m, v: ("", ""))
    telemetry.request_done("http", "junk-name", "9", "not_found", 0, 1, None, error="unknown model")
    telemetry.request_done("http", "real", "1", "ok", 0, 1, None)  # successes keep their labels
    assert set(telemetry.requests.series) == {("", "", "http"), ("real", "1", "http")}


def test_tracing_is_wanted_only_when_configured(clean_env):
    assert not tracing_wanted("auto")
    assert tracing_wanted("on")
    clean_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    assert tracing_wanted("auto")
    assert not tracing_wanted("off")
    clean_env.setenv("OTEL_TRACES_EXPORTER", "none")
    assert not tracing_wanted("on")
    clean_env.delenv("OTEL_TRACES_EXPORTER")
    clean_env.setenv("OTEL_SDK_DISABLED", "true")
    assert not tracing_wanted("on")


def test_exporter_follows_the_standard_protocol_variables(clean_env):
    assert type(build_exporter()).__module__.startswith("opentelemetry.exporter.otlp.proto.http")
    clean_env.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    assert type(build_exporter()).__module__.startswith("opentelemetry.exporter.otlp.proto.grpc")
    clean_env.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json")  # the per-signal variable wins
    with pytest.raises(ConfigError) as err:
        build_exporter()
    assert err.value.field == "OTEL_EXPORTER_OTLP_PROTOCOL" and "http/json" in err.value.reason


def in_memory_tracing(sampler=None) -> tuple[Tracing, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=sampler) if sampler else TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Tracing(provider), exporter


def test_request_trace_builds_hop_spans_from_stamps():
    tracing, exporter = in_memory_tracing()
    trace = tracing.begin("req", {}, start_ns=1_000, attributes={"gateway.model.name": "m"})
    trace.decoded_ns = 2_000
    trace.record.cache_lookup(2_100, 2_200, hit=False)
    trace.record.batched(2_300, 3_000, 5_000, rows=6, requests=3)
    trace.served_ns = 5_100
    trace.finish(6_000, None)
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {"req", "decode", "cache lookup", "queue wait", "batch execute", "encode"}
    root = spans["req"]
    offset = root.start_time - 1_000
    assert root.end_time - offset == 6_000
    assert spans["queue wait"].start_time - offset == 2_300 and spans["queue wait"].end_time - offset == 3_000
    assert dict(spans["batch execute"].attributes) == {"gateway.batch.size": 6, "gateway.batch.requests": 3}
    assert spans["cache lookup"].attributes["gateway.cache.hit"] is False
    assert all(s.parent.span_id == root.context.span_id for n, s in spans.items() if n != "req")


def test_unsampled_request_gets_no_trace_at_all():
    tracing, exporter = in_memory_tracing(ALWAYS_OFF)
    assert tracing.begin("req", {}, start_ns=1, attributes={}) is None
    assert exporter.get_finished_spans() == ()


def test_default_telemetry_has_tracing_off():
    assert Telemetry().tracing is None


def test_log_levels_setting_accepts_a_mapping_in_the_file(tmp_path):
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text("log_levels:\n  gateway.scheduler: debug\n  gateway.http: WARNING\n")
    settings = load_settings(str(cfg))
    assert settings.module_levels == {"gateway.scheduler": "debug", "gateway.http": "warning"}
    cfg.write_text("log_levels:\n  gateway.http: chatty\n")
    with pytest.raises(ConfigError) as err:
        load_settings(str(cfg))
    assert err.value.field == "log_levels" and "chatty" in err.value.reason
