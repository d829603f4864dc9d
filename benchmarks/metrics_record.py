"""Cost of one metric update on the event loop: OpenTelemetry SDK instruments vs prometheus_client vs ours.

    .venv/bin/python benchmarks/metrics_record.py [--n 200000]

Why the gateway keeps its own fixed-bucket histograms (gateway.core.stats.Histogram) and
exposes them at scrape time instead of recording into OpenTelemetry instruments per request.
"""

from __future__ import annotations

import argparse
import platform
import time

import prometheus_client as pc
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from gateway.core import context
from gateway.core.stats import Histogram, ModelStats
from gateway.monitoring import Telemetry
from gateway.monitoring.metrics import RequestMetrics


def per_call_us(fn, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200_000)
    n = ap.parse_args().n
    attrs = {"model": "mlp", "version": "1", "protocol": "grpc", "code": "ok"}
    meter = MeterProvider(metric_readers=[InMemoryMetricReader()]).get_meter("bench")
    otel_hist, otel_counter = meter.create_histogram("latency", unit="s"), meter.create_counter("requests")
    registry = pc.CollectorRegistry()
    prom = pc.Histogram("latency", "latency", list(attrs), registry=registry)
    bound = prom.labels(*attrs.values())
    ours = Histogram()
    requests = RequestMetrics()
    telemetry = Telemetry()  # tracing off, as by default
    telemetry.bind(lambda: [], lambda m, v: (m, v))
    stats = ModelStats()

    def off_path() -> None:
        # Everything telemetry adds to one request with tracing off: the api's tracing test and
        # request-id context, the answered-request count + histogram, the queue histogram bump.
        if telemetry.tracing is None:
            context.request_id.set("r-1")
        stats.record_queue(20_000)
        telemetry.request_done("grpc", "mlp", "1", "ok", 0, 1_000_000, None)

    rows = [
        ("OpenTelemetry SDK Histogram.record", per_call_us(lambda: otel_hist.record(0.001, attrs), n)),
        ("OpenTelemetry SDK Counter.add", per_call_us(lambda: otel_counter.add(1, attrs), n)),
        ("prometheus_client labels().observe", per_call_us(lambda: prom.labels(*attrs.values()).observe(0.001), n)),
        ("prometheus_client bound observe", per_call_us(lambda: bound.observe(0.001), n)),
        ("gateway Histogram.observe", per_call_us(lambda: ours.observe(1_000_000), n)),
        ("gateway RequestMetrics.observe (count + histogram)", per_call_us(
            lambda: requests.observe("mlp", "1", "grpc", "ok", 1_000_000), n)),
        ("all telemetry added to one request, tracing off", per_call_us(off_path, n)),
        ("(for scale) ModelStats.queue.add, what the queue hop cost before", per_call_us(lambda: stats.queue.add(20_000), n)),
    ]
    print(f"Python {platform.python_version()}, {platform.processor() or platform.machine()}; {n:,} calls each")
    print("| update | us per call |\n|---|---:|")
    for name, us in rows:
        print(f"| {name} | {us:.2f} |")


if __name__ == "__main__":
    main()
