"""Queued requests and the priority queue that holds them.

The queue has ``2 * levels`` FIFO lanes in service order: the normal lanes of
levels 1..N, then the "delayed" lanes of levels 1..N. A request whose queue
timeout passed under the "delay" action moves to its level's delayed lane, so
it is served only once no normal request of any level is waiting.

Deadlines sit on a min-heap so that finding expired requests costs
O(log n) per expiry rather than a scan of the queue per tick. Heap entries of
requests that already left the queue are dropped lazily when they reach the
top, and the heap is rebuilt when such stale entries dominate it.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from itertools import islice


# eq=False: requests are compared by identity. Field equality would be wrong
# (two identical requests are still two requests) and payloads may hold numpy
# arrays, whose == is elementwise.
@dataclass(slots=True, eq=False)
class QueuedRequest:
    # Rows along dim 0 this request contributes; 1 for max_batch_size 0 models.
    rows: int
    # Requests with different keys never share a batch (e.g. other non-batch dims).
    shape_key: Hashable
    # 0 = the policy's default level; DynamicBatcher.add resolves it.
    priority: int = 0
    # Stamped by DynamicBatcher.add.
    enqueue_ns: int = 0
    # Queue-policy timeout (absolute monotonic ns, 0 = none). On input: the
    # request's own "timeout" parameter turned absolute; add() replaces it with
    # the effective one. Passing it rejects or delays per timeout_action.
    deadline_ns: int = 0
    # The client's deadline from the transport (e.g. gRPC deadline); 0 = none.
    # Once passed the request is always rejected: nobody waits for the answer.
    hard_deadline_ns: int = 0
    payload: object = None
    # Set when the queue timeout passed under the "delay" action.
    delayed: bool = False
    # Identity within the queue; assigned on push, so a re-queued request
    # never matches a heap entry left over from its previous stay.
    seq: int = field(default=0, repr=False)


# (time, seq, is_hard, request); seq is unique, so comparison never reaches the request.
_Entry = tuple[int, int, bool, QueuedRequest]


class PriorityQueue:
    """FIFO lanes per priority level with request and row counts, plus deadlines."""

    __slots__ = ("_levels", "_lanes", "_live", "_heap", "_rows", "_next_seq")

    def __init__(self, levels: int) -> None:
        if levels < 1:
            raise ValueError(f"levels: must be >= 1, got {levels}")
        self._levels = levels
        self._lanes: tuple[deque[QueuedRequest], ...] = tuple(deque() for _ in range(2 * levels))
        self._live: dict[int, QueuedRequest] = {}
        self._heap: list[_Entry] = []
        self._rows = 0
        self._next_seq = 1

    def __len__(self) -> int:
        return len(self._live)

    @property
    def rows(self) -> int:
        return self._rows

    def lanes(self) -> tuple[deque[QueuedRequest], ...]:
        """The lanes in service order. Read them; change them only through this class."""
        return self._lanes

    def head(self) -> QueuedRequest | None:
        for lane in self._lanes:
            if lane:
                return lane[0]
        return None

    def contains(self, item: QueuedRequest) -> bool:
        return self._live.get(item.seq) is item

    def push(self, item: QueuedRequest) -> None:
        """Append ``item`` (priority already resolved to 1..levels) to the tail of its lane."""
        if not 1 <= item.priority <= self._levels:
            raise ValueError(f"priority {item.priority} outside 1..{self._levels}")
        item.seq = seq = self._next_seq
        self._next_seq += 1
        self._live[seq] = item
        self._rows += item.rows
        self._lanes[self._lane_index(item)].append(item)
        soft, hard = item.deadline_ns, item.hard_deadline_ns
        if hard:
            heapq.heappush(self._heap, (hard, seq, True, item))
        # A queue timeout at or after the client's deadline can never act first.
        if soft and (not hard or soft < hard):
            heapq.heappush(self._heap, (soft, seq, False, item))

    def take(self, items: list[QueuedRequest]) -> None:
        """Remove queued ``items`` (listed in service order), e.g. a batch being dispatched."""
        self._unlink(items)
        self._forget(items)

    def remove(self, item: QueuedRequest) -> bool:
        """Remove one request wherever it is (e.g. the client cancelled); False if not queued."""
        if not self.contains(item):
            return False
        self.take([item])
        return True

    def pop_due(self, now_ns: int, delay_on_timeout: bool) -> list[QueuedRequest]:
        """Remove and return requests whose deadline is <= ``now_ns``.

        With ``delay_on_timeout`` a passed queue timeout moves the request to
        its delayed lane instead; a passed client deadline always removes it.
        """
        heap, live = self._heap, self._live
        due: dict[int, QueuedRequest] = {}
        delay: dict[int, QueuedRequest] = {}
        while heap and heap[0][0] <= now_ns:
            _, seq, hard, item = heapq.heappop(heap)
            if live.get(seq) is not item:
                continue
            if hard or not delay_on_timeout:
                due[seq] = item
            elif not item.delayed:
                delay[seq] = item
        # A request can pass both its timeout and its client deadline in one tick.
        to_delay = [it for seq, it in delay.items() if seq not in due]
        if to_delay:
            self._unlink(to_delay)
            for it in to_delay:
                it.delayed = True
                self._lanes[self._lane_index(it)].append(it)
        out = list(due.values())
        if out:
            self._unlink(out)
            self._forget(out)
        return out

    def next_deadline(self) -> int | None:
        """The earliest pending deadline of a queued request, or None."""
        heap, live = self._heap, self._live
        while heap and live.get(heap[0][1]) is not heap[0][3]:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def drain(self) -> list[QueuedRequest]:
        """Remove and return everything, in service order."""
        out = [it for lane in self._lanes for it in lane]
        for lane in self._lanes:
            lane.clear()
        self._live.clear()
        self._heap.clear()
        self._rows = 0
        return out

    def _lane_index(self, item: QueuedRequest) -> int:
        return item.priority - 1 + (self._levels if item.delayed else 0)

    def _unlink(self, items: Iterable[QueuedRequest]) -> None:
        groups: dict[int, list[QueuedRequest]] = {}
        for it in items:
            groups.setdefault(self._lane_index(it), []).append(it)
        for index, group in groups.items():
            lane = self._lanes[index]
            n = len(group)
            # Dispatch almost always takes a prefix of one lane: O(batch) popleft.
            if n <= len(lane) and all(a is b for a, b in zip(group, islice(lane, n))):
                for _ in range(n):
                    lane.popleft()
            else:
                gone = {id(it) for it in group}
                kept = [it for it in lane if id(it) not in gone]
                lane.clear()
                lane.extend(kept)

    def _forget(self, items: Iterable[QueuedRequest]) -> None:
        for it in items:
            del self._live[it.seq]
            self._rows -= it.rows
        heap = self._heap
        if len(heap) > 64 and len(heap) > 2 * len(self._live):
            live = self._live
            self._heap = [e for e in heap if live.get(e[1]) is e[3]]
            heapq.heapify(self._heap)
