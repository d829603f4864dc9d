"""Per model-version counters, as Triton's ModelStatistics reports them.

Updated on the event loop only (once per batch and once per request), so no
locks. Durations are nanoseconds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(slots=True)
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns


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
    inference_count: int = 0  # rows executed
    execution_count: int = 0  # batches executed
    last_inference_ms: int = 0  # wall clock, for display only
    batches: dict[int, BatchSizeStats] = field(default_factory=dict)

    def record_batch(self, size: int, input_ns: int, infer_ns: int, output_ns: int) -> None:
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


def stats_from_dict(d: dict) -> ModelStats:
    def dur(x) -> Duration:
        return Duration(int(x["count"]), int(x["ns"]))

    s = ModelStats()
    for name in ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output"):
        setattr(s, name, dur(d[name]))
    for name in ("rejected_queue_full", "rejected_deadline", "inference_count", "execution_count", "last_inference_ms"):
        setattr(s, name, int(d[name]))
    s.batches = {
        int(size): BatchSizeStats(dur(b["compute_input"]), dur(b["compute_infer"]), dur(b["compute_output"]))
        for size, b in d["batches"].items()
    }
    return s


def merge_stats(parts: list[ModelStats]) -> ModelStats:
    """Sum of several workers' counters for one model version."""
    total = ModelStats()
    for s in parts:
        for name in ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output"):
            d = getattr(s, name)
            getattr(total, name).add(d.ns, d.count)
        total.rejected_queue_full += s.rejected_queue_full
        total.rejected_deadline += s.rejected_deadline
        total.inference_count += s.inference_count
        total.execution_count += s.execution_count
        total.last_inference_ms = max(total.last_inference_ms, s.last_inference_ms)
        for size, b in s.batches.items():
            t = total.batches.setdefault(size, BatchSizeStats())
            for name in ("compute_input", "compute_infer", "compute_output"):
                d = getattr(b, name)
                getattr(t, name).add(d.ns, d.count)
    return total
