"""The batching and queue policy of one model version.

Durations are monotonic nanoseconds here; the config file speaks microseconds
and the loader converts. Every check names the field it rejects.
"""

from __future__ import annotations

from dataclasses import dataclass

TIMEOUT_ACTIONS = ("reject", "delay")


@dataclass(frozen=True, slots=True)
class BatchingPolicy:
    # 0 = the model takes no batch dim: every batch holds exactly one request.
    max_batch_size: int
    # Normalised to sorted, without duplicates.
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_ns: int = 0
    # Unlike Triton, 0 (unbounded) is refused: an unbounded queue hides overload
    # until memory or latency gives out.
    max_queue_size: int = 1024
    priority_levels: int = 1
    # 1 is the highest level, as in Triton.
    default_priority: int = 1
    # 0 = no queue timeout.
    default_timeout_ns: int = 0
    timeout_action: str = "reject"
    allow_timeout_override: bool = True

    def queue_deadline(self, now_ns: int, own_ns: int = 0) -> int:
        """The queue timeout of a request arriving at ``now_ns`` (0: none): the default timeout,
        shortened (never lengthened) by the request's own deadline when the policy allows it."""
        deadline = now_ns + self.default_timeout_ns if self.default_timeout_ns > 0 else 0
        if own_ns and self.allow_timeout_override and (not deadline or own_ns < deadline):
            deadline = own_ns
        return deadline

    def __post_init__(self) -> None:
        _int_at_least("max_batch_size", self.max_batch_size, 0)
        _int_at_least("max_queue_delay_ns", self.max_queue_delay_ns, 0)
        _int_at_least("max_queue_size", self.max_queue_size, 1)
        _int_at_least("priority_levels", self.priority_levels, 1)
        _int_at_least("default_priority", self.default_priority, 1)
        _int_at_least("default_timeout_ns", self.default_timeout_ns, 0)
        if self.default_priority > self.priority_levels:
            raise ValueError(
                f"default_priority: {self.default_priority} exceeds priority_levels {self.priority_levels}"
            )
        if self.timeout_action not in TIMEOUT_ACTIONS:
            raise ValueError(f"timeout_action: {self.timeout_action!r} is not one of {TIMEOUT_ACTIONS}")
        if not isinstance(self.allow_timeout_override, bool):
            raise ValueError("allow_timeout_override: must be a bool")

        sizes = self.preferred_batch_sizes
        if not isinstance(sizes, (tuple, list)):
            raise ValueError("preferred_batch_sizes: must be a tuple of ints")
        for s in sizes:
            _int_at_least("preferred_batch_sizes", s, 1)
        if sizes and self.max_batch_size == 0:
            raise ValueError("preferred_batch_sizes: must be empty when max_batch_size is 0 (no batching)")
        too_big = sorted(s for s in set(sizes) if s > self.max_batch_size)
        if too_big:
            raise ValueError(
                f"preferred_batch_sizes: sizes {too_big} exceed max_batch_size {self.max_batch_size}"
            )
        # The dataclass is frozen; normalising in place is the one sanctioned write.
        object.__setattr__(self, "preferred_batch_sizes", tuple(sorted(set(sizes))))


def _int_at_least(field: str, value: object, low: int) -> None:
    # bool is an int subclass; True as a size is always a mistake.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{field}: must be an int, got {value!r}")
    if value < low:
        raise ValueError(f"{field}: must be >= {low}, got {value}")
