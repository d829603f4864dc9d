"""Per model-version counters, as Triton's ModelStatistics reports them.

Updated on the event loop only (once per batch and once per request), so no
locks. Durations are nanoseconds.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import asdict, dataclass, field, fields

# Upper bounds (ns) of latency buckets: 50 us .. 10 s, as Prometheus's ``le``.
LATENCY_BOUNDS_NS: tuple[int, ...] = (
    50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000, 25_000_000, 50_000_000,
    100_000_000, 250_000_000, 500_000_000, 1_000_000_000, 2_500_000_000, 5_000_000_000, 10_000_000_000,
)


@dataclass(slots=True)
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns


@dataclass(slots=True)
class Histogram:
    """Fixed-bucket counts; ``counts[i]`` holds values <= ``bounds[i]`` and > ``bounds[i-1]``,
    the last one the rest. The one histogram of the gateway: latencies in ns (ints), cache
    similarities and seconds (floats) alike.

    One bisect and two additions per observation (about 0.2 us), so it can sit on
    the event loop's per-batch path; exporters turn it into cumulative buckets.
    """

    bounds: tuple[float, ...] = LATENCY_BOUNDS_NS
    counts: list[int] = field(default_factory=list)
    total: float = 0  # stays an int while only ints are observed (ns sums exact)

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    @property
    def count(self) -> int:
        """Observations so far (each lands in exactly one bucket)."""
        return sum(self.counts)

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value


@dataclass(slots=True)
class BatchSizeStats:
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass(slots=True)
class ModelStats:
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    rejected_queue_full: int = 0
    rejected_deadline: int = 0
    execute_timeouts: int = 0  # batches past the model's execute_timeout_s
    inference_count: int = 0  # rows executed
    execution_count: int = 0  # batches executed
    last_inference_ms: int = 0  # wall clock, for display only
    batches: dict[int, BatchSizeStats] = field(default_factory=dict)
    # Response cache, as Triton reports it: lookups that hit / missed and their time.
    cache_hit: Duration = field(default_factory=Duration)
    cache_miss: Duration = field(default_factory=Duration)
    # Of cache_hit: requests answered by an identical request's execution (single flight).
    cache_coalesced: Duration = field(default_factory=Duration)
    # Distributions for dashboards (the sums above are Triton's statistics).
    queue_histogram: Histogram = field(default_factory=Histogram)
    execute_histogram: Histogram = field(default_factory=Histogram)  # one per batch: gather + run + scatter

    def record_queue(self, ns: int) -> None:
        self.queue.add(ns)
        self.queue_histogram.observe(ns)

    def record_batch(self, size: int, input_ns: int, infer_ns: int, output_ns: int) -> None:
        self.execute_histogram.observe(input_ns + infer_ns + output_ns)
        self.execution_count += 1
        self.inference_count += size
        self.compute_input.add(input_ns, size)
        self.compute_infer.add(infer_ns, size)
        self.compute_output.add(output_ns, size)
        per = self.batches.get(size)
        if per is None:
            per = self.batches[size] = BatchSizeStats()
        per.compute_input.add(input_ns)
        per.compute_infer.add(infer_ns)
        per.compute_output.add(output_ns)


def stats_to_dict(s: ModelStats) -> dict:
    return asdict(s)


def _kinds() -> dict[str, str]:
    """Field name -> how workers' values combine (from the fields' default values)."""
    sample = ModelStats()
    kinds = {}
    for f in fields(ModelStats):
        value = getattr(sample, f.name)
        kinds[f.name] = type(value).__name__ if f.name not in ("last_inference_ms", "batches") else f.name
    return kinds


_KINDS = _kinds()


def stats_from_dict(d: dict) -> ModelStats:
    s = ModelStats()
    for name, kind in _KINDS.items():
        if name not in d:
            continue  # a worker on an older build
        value = d[name]
        if kind == "Duration":
            setattr(s, name, Duration(int(value["count"]), int(value["ns"])))
        elif kind == "Histogram":
            setattr(s, name, Histogram(tuple(value["bounds"]), [int(c) for c in value["counts"]], int(value["total"])))
        elif kind == "batches":
            s.batches = {
                int(size): BatchSizeStats(*(Duration(int(b[k]["count"]), int(b[k]["ns"]))
                                            for k in ("compute_input", "compute_infer", "compute_output")))
                for size, b in value.items()
            }
        else:
            setattr(s, name, int(value))
    return s


def merge_stats(parts: list[ModelStats]) -> ModelStats:
    """Sum of several workers' counters for one model version."""
    total = ModelStats()
    for s in parts:
        for name, kind in _KINDS.items():
            value = getattr(s, name)
            if kind == "Duration":
                getattr(total, name).add(value.ns, value.count)
            elif kind == "Histogram":
                h = getattr(total, name)
                if h.bounds == value.bounds:
                    h.counts = [a + b for a, b in zip(h.counts, value.counts)]
                    h.total += value.total
            elif kind == "batches":
                for size, b in value.items():
                    t = total.batches.setdefault(size, BatchSizeStats())
                    for k in ("compute_input", "compute_infer", "compute_output"):
                        d = getattr(b, k)
                        getattr(t, k).add(d.ns, d.count)
            elif kind == "last_inference_ms":
                total.last_inference_ms = max(total.last_inference_ms, value)
            else:
                setattr(total, name, getattr(total, name) + value)
    return total
