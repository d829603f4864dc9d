"""Prometheus metrics, computed when /metrics is scraped.

The hot path only bumps plain counters and fixed-bucket histograms on the event
loop: per request in the api layer (``RequestMetrics``) and per batch in the
scheduler (``ModelStats``, which also feeds Triton's statistics). This collector
turns them into Prometheus families at scrape time. The OpenTelemetry metrics
SDK is not used on that path: its synchronous instruments cost ~10 us per call
here (``benchmarks/metrics_record.py``), 40x a bucket bump, and it has no
asynchronous histogram to hand pre-aggregated counts to.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.utils import floatToGoString

from gateway.core.generation import GenerationStats
from gateway.core.stats import Histogram, ModelStats

# Batch-size buckets (rows): powers of two.
BATCH_SIZE_BOUNDS = tuple(2**i for i in range(11))


@dataclass(frozen=True, slots=True)
class ModelSample:
    """One served model version, as the collector reads it."""

    name: str
    version: str
    stats: ModelStats
    queue_depth: int
    instances: int
    busy_instances: int
    generation: GenerationStats | None = None  # text-generation models only


@dataclass(slots=True)
class RequestSeries:
    latency: Histogram = field(default_factory=Histogram)
    codes: dict[str, int] = field(default_factory=dict)


class RequestMetrics:
    """Requests as the clients see them: by protocol and outcome, latency including decode and encode.

    Updated on the event loop only (no locks); about 0.3 us per request.
    """

    def __init__(self) -> None:
        self.series: dict[tuple[str, str, str], RequestSeries] = {}

    def observe(self, model: str, version: str, protocol: str, code: str, duration_ns: int) -> None:
        key = (model, version, protocol)
        s = self.series.get(key)
        if s is None:
            s = self.series[key] = RequestSeries()
        s.latency.observe(duration_ns)
        s.codes[code] = s.codes.get(code, 0) + 1

    def to_json(self) -> list:
        """What a worker publishes for the others to sum (``--workers N``)."""
        return [[model, version, protocol, dict(s.codes), list(s.latency.counts), s.latency.total]
                for (model, version, protocol), s in self.series.items()]  # copies: written from a thread

    def merged(self, peers: Iterable[list]) -> dict[tuple[str, str, str], RequestSeries]:
        """This process's series plus the other workers' published ones."""
        out = {key: RequestSeries(Histogram(s.latency.bounds, list(s.latency.counts), s.latency.total), dict(s.codes))
               for key, s in self.series.items()}
        for entries in peers:
            for entry in entries:
                try:
                    model, version, protocol, codes, counts, total = entry
                    key = (str(model), str(version), str(protocol))
                    s = out.get(key)
                    if s is None:
                        s = out[key] = RequestSeries()
                    if len(counts) != len(s.latency.counts):
                        continue  # another build's buckets
                    s.latency.counts = [a + int(b) for a, b in zip(s.latency.counts, counts)]
                    s.latency.total += int(total)
                    for code, n in codes.items():
                        s.codes[str(code)] = s.codes.get(str(code), 0) + int(n)
                except (TypeError, ValueError, AttributeError):
                    continue  # a malformed entry never breaks a scrape
        return out


def _seconds_buckets(h: Histogram) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    running = 0
    for bound, n in zip(h.bounds, h.counts):
        running += n
        out.append((floatToGoString(bound / 1e9), running))
    out.append(("+Inf", running + h.counts[-1]))
    return out


def _batch_buckets(stats: ModelStats) -> list[tuple[str, float]]:
    counts = [0] * (len(BATCH_SIZE_BOUNDS) + 1)
    for size, per in stats.batches.items():
        i = next((i for i, b in enumerate(BATCH_SIZE_BOUNDS) if size <= b), len(BATCH_SIZE_BOUNDS))
        counts[i] += per.compute_infer.count
    out: list[tuple[str, float]] = []
    running = 0
    for bound, n in zip(BATCH_SIZE_BOUNDS, counts):
        running += n
        out.append((floatToGoString(bound), running))
    out.append(("+Inf", running + counts[-1]))
    return out


class GatewayCollector:
    """prometheus_client custom collector over RequestMetrics, the models' ModelStats and NVML."""

    def __init__(
        self,
        requests: RequestMetrics,
        models: Callable[[], Iterable[ModelSample]],
        gpu_collect: Callable[[], Iterable[Metric]] | None = None,
    ) -> None:
        self.requests = requests
        self.models = models
        self.gpu_collect = gpu_collect
        # The other workers' published request series (--workers N), summed into this one's.
        self.peer_requests: Callable[[], Iterable[list]] = tuple

    def describe(self) -> list[Metric]:
        return []  # names are dynamic; registering must not run a collection

    def collect(self) -> Iterator[Metric]:
        yield from self._request_families()
        yield from self._model_families()
        yield from self._generation_families()
        if self.gpu_collect is not None:
            yield from self.gpu_collect()

    def _request_families(self) -> Iterator[Metric]:
        count = CounterMetricFamily(
            "gateway_requests", "inference requests answered, by outcome code",
            labels=["model", "version", "protocol", "code"],
        )
        latency = HistogramMetricFamily(
            "gateway_request_duration_seconds", "end-to-end request latency in the server: decode to encoded answer",
            labels=["model", "version", "protocol"],
        )
        for (model, version, protocol), s in self.requests.merged(self.peer_requests()).items():
            for code, n in s.codes.items():
                count.add_metric([model, version, protocol, code], n)
            latency.add_metric([model, version, protocol], _seconds_buckets(s.latency), s.latency.total / 1e9)
        yield count
        yield latency

    def _model_families(self) -> Iterator[Metric]:
        mv = ["model", "version"]
        queue = HistogramMetricFamily("gateway_queue_duration_seconds", "time requests waited in the batch queue", labels=mv)
        execute = HistogramMetricFamily(
            "gateway_batch_execute_duration_seconds", "time to gather, run and scatter one batch", labels=mv
        )
        batch = HistogramMetricFamily("gateway_batch_size", "rows per executed batch", labels=mv)
        depth = GaugeMetricFamily("gateway_queue_depth", "requests waiting in the batch queue", labels=mv)
        rejected = CounterMetricFamily(
            "gateway_rejected_requests", "requests refused by the queue policy", labels=[*mv, "reason"]
        )
        instances = GaugeMetricFamily("gateway_executor_instances", "executor instances (sessions) per version", labels=mv)
        busy = GaugeMetricFamily("gateway_executor_busy_instances", "executor instances running a batch now", labels=mv)
        busy_s = CounterMetricFamily(
            "gateway_executor_busy_seconds",
            "executor time spent on batches; rate() / instances = utilisation",
            labels=mv,
        )
        cache = CounterMetricFamily("gateway_cache_lookups", "response-cache lookups", labels=[*mv, "result"])
        for m in self.models():
            labels = [m.name, m.version]
            s = m.stats
            queue.add_metric(labels, _seconds_buckets(s.queue_histogram), s.queue_histogram.total / 1e9)
            execute.add_metric(labels, _seconds_buckets(s.execute_histogram), s.execute_histogram.total / 1e9)
            batch.add_metric(labels, _batch_buckets(s), float(s.inference_count))
            depth.add_metric(labels, m.queue_depth)
            rejected.add_metric([*labels, "queue_full"], s.rejected_queue_full)
            rejected.add_metric([*labels, "deadline"], s.rejected_deadline)
            instances.add_metric(labels, m.instances)
            busy.add_metric(labels, m.busy_instances)
            busy_s.add_metric(labels, (s.compute_input.ns + s.compute_infer.ns + s.compute_output.ns) / 1e9)
            # Triton's cache_hit counts coalesced requests too (they did not run the model); split here.
            cache.add_metric([*labels, "hit"], s.cache_hit.count - s.cache_coalesced.count)
            cache.add_metric([*labels, "miss"], s.cache_miss.count)
            cache.add_metric([*labels, "coalesced"], s.cache_coalesced.count)
        yield from (queue, execute, batch, depth, rejected, instances, busy, busy_s, cache)

    def _generation_families(self) -> Iterator[Metric]:
        mv = ["model", "version"]
        steps = HistogramMetricFamily(
            "gateway_generation_step_sequences", "sequences decoded together per step (one batched model call)", labels=mv
        )
        multi = CounterMetricFamily("gateway_generation_multi_sequence_steps", "decode steps with more than one sequence", labels=mv)
        tokens = CounterMetricFamily("gateway_generation_tokens", "tokens read (prompt) and generated (completion)", labels=[*mv, "kind"])
        ttft = HistogramMetricFamily(
            "gateway_generation_time_to_first_token_seconds", "admission to the first generated token", labels=mv
        )
        active = GaugeMetricFamily("gateway_generation_active_sequences", "sequences in the decode batch", labels=mv)
        waiting = GaugeMetricFamily("gateway_generation_waiting_sequences", "sequences admitted, waiting to join", labels=mv)
        ended = CounterMetricFamily("gateway_generation_sequences", "sequences ended, by reason", labels=[*mv, "reason"])
        step_s = CounterMetricFamily(
            "gateway_generation_step_seconds", "worker time in generation steps; part=repad: KV-cache re-padding",
            labels=[*mv, "part"],
        )
        for m in self.models():
            g = m.generation
            if g is None:
                continue
            labels = [m.name, m.version]
            counts, running = [], 0
            for bound, n in zip(g.step_sequences.bounds, g.step_sequences.counts):
                running += n
                counts.append((floatToGoString(bound), running))
            counts.append(("+Inf", running + g.step_sequences.counts[-1]))
            steps.add_metric(labels, counts, float(g.step_sequences.total))
            multi.add_metric(labels, g.steps_multi)
            tokens.add_metric([*labels, "prompt"], g.prompt_tokens)
            tokens.add_metric([*labels, "completion"], g.generated_tokens)
            ttft.add_metric(labels, _seconds_buckets(g.time_to_first_token), g.time_to_first_token.total / 1e9)
            active.add_metric(labels, g.active)
            waiting.add_metric(labels, g.waiting)
            for reason, n in sorted(g.finished.items()):
                ended.add_metric([*labels, reason], n)
            ended.add_metric([*labels, "cancelled"], g.cancelled)
            ended.add_metric([*labels, "rejected"], g.rejected)
            step_s.add_metric([*labels, "total"], g.step_ns / 1e9)
            step_s.add_metric([*labels, "repad"], g.repad_ns / 1e9)
        yield from (steps, multi, tokens, ttft, active, waiting, ended, step_s)


def build_registry(collector: GatewayCollector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


def render(registry: CollectorRegistry, accept: str | None) -> tuple[bytes, str]:
    """The exposition body and its content type (OpenMetrics when the scraper asks for it)."""
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type


class DriftCollector:
    """Drift statistics of the latest judged window per model version and stream.

    ``monitors`` yields the versions' drift monitors (gateway.monitoring.drift.VersionDrift).
    """

    def __init__(self, monitors: Callable[[], Iterable]) -> None:
        self.monitors = monitors

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        mv = ["model", "version"]
        statistic = GaugeMetricFamily(
            "gateway_drift_statistic", "drift statistic of the latest judged window (psi, ks, ks_pvalue, jsd, chi2, chi2_pvalue)",
            labels=[*mv, "feature", "statistic"],
        )
        severity = GaugeMetricFamily(
            "gateway_drift_severity", "drift severity of the latest judged window: 0 none, 1 warning, 2 critical",
            labels=[*mv, "feature"],
        )
        windows = CounterMetricFamily("gateway_drift_windows", "drift windows closed", labels=mv)
        rows = CounterMetricFamily("gateway_drift_rows", "rows seen by drift monitoring", labels=mv)
        dropped = CounterMetricFamily(
            "gateway_drift_dropped_batches", "batches not counted because the drift thread was behind", labels=mv
        )
        alarms = CounterMetricFamily(
            "gateway_drift_page_hinkley_alarms", "Page-Hinkley change alarms on the watched output", labels=[*mv, "feature"]
        )
        for m in self.monitors():
            labels = [m.model, m.version]
            windows.add_metric(labels, m.windows_closed)
            rows.add_metric(labels, m.rows_seen)
            dropped.add_metric(labels, m.dropped)
            verdict = m.latest
            if verdict is not None:
                for r in verdict.streams:
                    for name, value in r.statistics.items():
                        if value == value:  # NaN: no value for this window
                            statistic.add_metric([*labels, r.name, name], value)
                    severity.add_metric([*labels, r.name], r.severity)
            ph = m.cfg.page_hinkley
            if ph is not None:
                alarms.add_metric([*labels, f"{ph.output}_{ph.column}"], m.ph_alarms)
        yield from (statistic, severity, windows, rows, dropped, alarms)


class RegistryState(Protocol):
    """What the registry client exposes (gateway/registry/health.py RegistryHealth)."""

    up: bool | None
    polls: int
    failures: dict[str, int]
    downloads: int
    downloaded_bytes: int
    reports: int
    assigned: dict[tuple[str, str], int]


class RegistryCollector:
    """The sidecar registry client's counters: polls, failures by operation, downloads, alias versions."""

    def __init__(self, state: RegistryState) -> None:
        self.state = state

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        s = self.state
        up = GaugeMetricFamily("gateway_registry_up", "1 when the last registry poll reached the registry")
        up.add_metric([], 1.0 if s.up else 0.0)
        polls = CounterMetricFamily("gateway_registry_polls", "registry polls started")
        polls.add_metric([], s.polls)
        failures = CounterMetricFamily(
            "gateway_registry_failures", "failed registry operations (poll, download, report, write)",
            labels=["operation"],
        )
        for operation in ("poll", "download", "report", "write"):
            failures.add_metric([operation], s.failures.get(operation, 0))
        downloads = CounterMetricFamily("gateway_registry_downloads", "model versions downloaded from the registry")
        downloads.add_metric([], s.downloads)
        nbytes = CounterMetricFamily("gateway_registry_downloaded_bytes", "bytes of model artifacts downloaded")
        nbytes.add_metric([], s.downloaded_bytes)
        reports = CounterMetricFamily("gateway_registry_reports", "metric reports logged to the registry")
        reports.add_metric([], s.reports)
        assigned = GaugeMetricFamily(
            "gateway_registry_alias_version", "the version each followed alias pointed at when last polled",
            labels=["model", "alias"],
        )
        for (model, alias), version in sorted(s.assigned.items()):
            assigned.add_metric([model, alias], version)
        yield from (up, polls, failures, downloads, nbytes, reports, assigned)
