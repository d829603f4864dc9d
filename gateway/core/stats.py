"""Per model-version counters, as Triton's ModelStatistics reports them.

Updated on the event loop only (once per batch and once per request), so no
locks. Durations are nanoseconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field


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
    # Response cache, as Triton reports it: lookups that hit / missed and their time.
    cache_hit: Duration = field(default_factory=Duration)
    cache_miss: Duration = field(default_factory=Duration)

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
