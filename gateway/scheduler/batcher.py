"""The dynamic batcher of one model version: a plain synchronous object.

The clock is passed in (monotonic ns); nothing here sleeps, spawns or reads
time, so tests step it by hand and the asyncio glue around it stays thin.

The glue's loop, whenever a request arrives, an executor instance frees up or
the time from ``next_wakeup`` comes:

    for r in batcher.expire(now):   fail r (deadline exceeded)
    while an instance is free and (batch := batcher.next_batch(now)):
        run batch on it
    sleep until batcher.next_wakeup(now), a new arrival or a free instance

``next_batch`` does not expire anything itself: call ``expire`` first, or a
request past its deadline may still be dispatched.

Batch formation, as Triton's dynamic batcher behaves:
- Service order is priority level 1 first, FIFO within a level; requests
  delayed by the "delay" timeout action come after every normal request of
  every level. A batch starts at the first request in that order and is filled
  in the same order, lower levels included when higher ones leave room.
- Only requests with the head's ``shape_key`` join; others keep their place.
- Rows are summed up to ``max_batch_size``. A request is never split, and the
  fill stops at the first request that would overflow, so no later request
  jumps ahead of it.
- The batch is sent at once when it is full (``max_batch_size`` reached, or the
  next request does not fit), when a preferred size can be formed exactly, or
  when the rows reach the largest preferred size. It is then cut to the largest
  preferred size (``max_batch_size`` counts as one) formed exactly by a prefix,
  else sent whole. Otherwise a partial batch waits until its oldest request
  has waited ``max_queue_delay_ns`` (0: no wait).
- ``max_batch_size`` 0: every batch is the head request alone.

Deadlines: ``deadline_ns`` is the queue-policy timeout, ``hard_deadline_ns`` the
client's own (transport) deadline. Under "reject" passing either removes the
request; under "delay" a passed timeout only moves the request behind all
normal ones, but a passed client deadline still removes it.
"""

from __future__ import annotations

from gateway.core.errors import InvalidInputError, QueueFullError
from gateway.scheduler.policy import BatchingPolicy
from gateway.scheduler.queue import PriorityQueue, QueuedRequest


class DynamicBatcher:
    __slots__ = ("policy", "_queue", "_max", "_sizes", "_send_at", "_delay", "_delay_on_timeout")

    def __init__(self, policy: BatchingPolicy) -> None:
        self.policy = policy
        self._queue = PriorityQueue(policy.priority_levels)
        self._max = policy.max_batch_size
        # max_batch_size is always a size worth sending whole.
        self._sizes = frozenset(policy.preferred_batch_sizes) | {policy.max_batch_size}
        # Rows beyond which waiting cannot reach a better preferred size.
        self._send_at = max(policy.preferred_batch_sizes, default=policy.max_batch_size)
        self._delay = policy.max_queue_delay_ns
        self._delay_on_timeout = policy.timeout_action == "delay"

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def queued_rows(self) -> int:
        return self._queue.rows

    def add(self, item: QueuedRequest, now_ns: int, waiting_elsewhere: int = 0) -> None:
        """Queue ``item``, or raise without queueing it.

        ``waiting_elsewhere``: requests taken from the queue that still wait (a prepared batch),
        counted against ``max_queue_size`` with the queued ones.

        Resolves priority 0 to the default level, stamps ``enqueue_ns`` and sets
        ``deadline_ns`` to the effective queue timeout: the policy's default
        timeout, shortened (never lengthened) by the request's own deadline when
        ``allow_timeout_override``; the request's own is ignored otherwise.
        ``hard_deadline_ns`` is kept as given.
        """
        p = self.policy
        priority = item.priority or p.default_priority
        if not 1 <= priority <= p.priority_levels:
            raise InvalidInputError(
                f"priority {item.priority} is out of range: use 0 (the default) "
                f"or a level from 1 to {p.priority_levels}"
            )
        if item.rows < 1:
            raise InvalidInputError(f"a request must contribute at least 1 row, got {item.rows}")
        if self._max and item.rows > self._max:
            raise InvalidInputError(
                f"request batch size {item.rows} exceeds the model's max_batch_size {self._max}"
            )
        if len(self._queue) + waiting_elsewhere >= p.max_queue_size:
            raise QueueFullError(f"request rejected: exceeds maximum queue size {p.max_queue_size}")

        item.priority = priority
        item.enqueue_ns = now_ns
        item.deadline_ns = p.queue_deadline(now_ns, item.deadline_ns)
        item.delayed = False
        self._queue.push(item)

    def expire(self, now_ns: int) -> list[QueuedRequest]:
        """Remove and return the requests that must be failed as timed out.

        Under "delay", requests whose queue timeout passed are moved behind the
        normal ones and not returned; past a client deadline they are returned.
        """
        return self._queue.pop_due(now_ns, self._delay_on_timeout)

    def next_batch(self, now_ns: int) -> list[QueuedRequest] | None:
        """The batch to run on a free executor instance now, or None to wait."""
        plan = self._plan()
        if plan is None or plan[1] > now_ns:
            return None
        batch = plan[0]
        self._queue.take(batch)
        return batch

    def next_wakeup(self, now_ns: int) -> int | None:
        """The earliest time (never before ``now_ns``) at which ``next_batch`` or
        ``expire`` may answer differently without new arrivals; None if empty.

        ``now_ns`` means a batch is ready now: with no instance free, wait for
        one (or for ``next_deadline``) instead.
        """
        plan = self._plan()
        if plan is None:
            return None
        wake = plan[1]
        deadline = self._queue.next_deadline()
        if deadline is not None and deadline < wake:
            wake = deadline
        return wake if wake > now_ns else now_ns

    def next_deadline(self) -> int | None:
        """The earliest pending deadline (queue timeout or client's), or None."""
        return self._queue.next_deadline()

    def set_queue_delay(self, delay_ns: int) -> None:
        """Change how long a partial batch may wait (adaptive batching); capped by the policy."""
        self._delay = min(max(0, delay_ns), self.policy.max_queue_delay_ns)

    def oldest_enqueue_ns(self) -> int:
        """When the request at the head of the queue came (0 when empty)."""
        head = self._queue.head()
        return head.enqueue_ns if head is not None else 0

    @property
    def target_rows(self) -> int:
        """Rows at which a batch goes out without waiting."""
        return self._send_at

    def remove(self, item: QueuedRequest) -> bool:
        """Take one request out (its client went away); False if it is not queued."""
        return self._queue.remove(item)

    def drain_all(self) -> list[QueuedRequest]:
        """Remove and return every queued request, in service order (shutdown, unload)."""
        return self._queue.drain()

    def _plan(self) -> tuple[list[QueuedRequest], int] | None:
        """(the batch next_batch would send, the earliest time it may be sent)."""
        lanes = self._queue.lanes()
        head = self._queue.head()
        if head is None:
            return None
        if not self._max:
            return [head], head.enqueue_ns

        key, limit, sizes = head.shape_key, self._max, self._sizes
        picked: list[QueuedRequest] = []
        total = 0
        cut = 0  # length of the longest prefix whose rows are a preferred size
        full = False
        oldest = head.enqueue_ns
        for lane in lanes:
            for item in lane:
                if item.shape_key != key:
                    continue
                if total + item.rows > limit:
                    full = True
                    break
                total += item.rows
                picked.append(item)
                if item.enqueue_ns < oldest:
                    oldest = item.enqueue_ns
                if total in sizes:
                    cut = len(picked)
                    if total == limit:
                        full = True
                        break
            if full:
                break

        if full or cut or total >= self._send_at:
            return (picked[:cut] if cut else picked), oldest
        # Partial: held until the oldest request has waited the queue delay.
        return picked, oldest + self._delay
