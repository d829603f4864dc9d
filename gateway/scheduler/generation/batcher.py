"""The continuous batcher: which sequences leave, join and decode at each step.

A plain synchronous object with the clock passed in, stepped by the engine (or by a
test, by hand): ``admit`` new sequences, ask for the ``next_step`` plan, ``complete`` the
sequences that finished, ``cancel`` one whose client went away, ``expire``
those that waited too long to join. It never touches tensors.

Sequences join in arrival order (no overtaking, so a long request cannot starve) while
the decode batch has room: at most ``max_sequences`` rows, and the padded KV cache
(rows x the longest row's reserved length, prompt + max_tokens) within
``max_kv_tokens``. Admission beyond the waiting room is refused at once.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from gateway.core.errors import QueueFullError


@dataclass(slots=True)
class Ticket:
    seq_id: int
    reserved_tokens: int  # prompt + max_tokens: the most cache this sequence can hold
    admitted_ns: int = 0
    deadline_ns: int = 0  # join by then or expire (0 = no limit)


@dataclass(slots=True)
class StepPlan:
    leaving: list[int] = field(default_factory=list)  # release their cache rows first
    decoding: list[int] = field(default_factory=list)  # one batched decode call, in this order
    joining: list[int] = field(default_factory=list)  # prefilled this step, decode from the next

    def __bool__(self) -> bool:
        return bool(self.leaving or self.decoding or self.joining)


class ContinuousBatcher:
    def __init__(self, max_sequences: int, max_waiting: int, max_kv_tokens: int) -> None:
        self.max_sequences = max_sequences
        self.max_waiting = max_waiting
        self.max_kv_tokens = max_kv_tokens
        self._waiting: deque[Ticket] = deque()
        self._running: dict[int, Ticket] = {}
        self._leaving: list[int] = []
        self._cancelled: set[int] = set()

    @property
    def active(self) -> int:
        return len(self._running)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def idle(self) -> bool:
        return not (self._waiting or self._running or self._leaving)

    def admit(self, tickets: list[Ticket]) -> None:
        """All of a request's sequences or none: refused (429) when they exceed the free
        decode rows plus the waiting room."""
        free_rows = max(0, self.max_sequences - len(self._running))
        room = free_rows + self.max_waiting - len(self._waiting)
        if len(tickets) > room:
            raise QueueFullError(
                f"generation is at capacity: {len(self._running)} sequences decoding (max_sequences "
                f"{self.max_sequences}), {len(self._waiting)} waiting (max_waiting_sequences {self.max_waiting}); "
                "retry later"
            )
        self._waiting.extend(tickets)

    def cancel(self, seq_id: int) -> bool:
        """Free a sequence at the next step; True when it was still waiting (gone now, it never joins)."""
        if seq_id in self._running:
            self._cancelled.add(seq_id)
            return False
        for t in self._waiting:
            if t.seq_id == seq_id:
                self._waiting.remove(t)
                return True
        return False

    def expire(self, now_ns: int) -> list[int]:
        """Waiting sequences whose join deadline has passed, removed."""
        gone = [t.seq_id for t in self._waiting if t.deadline_ns and t.deadline_ns <= now_ns]
        if gone:
            drop = set(gone)
            self._waiting = deque(t for t in self._waiting if t.seq_id not in drop)
        return gone

    def next_step(self, now_ns: int) -> StepPlan:
        plan = StepPlan(leaving=self._leaving)
        self._leaving = []
        for seq_id in self._cancelled:
            if self._running.pop(seq_id, None) is not None:
                plan.leaving.append(seq_id)
        self._cancelled.clear()
        plan.decoding = list(self._running)
        longest = max((t.reserved_tokens for t in self._running.values()), default=0)
        while self._waiting and len(self._running) < self.max_sequences:
            head = self._waiting[0]
            if head.deadline_ns and head.deadline_ns <= now_ns:
                break  # expire() reports it
            new_longest = max(longest, head.reserved_tokens)
            if (len(self._running) + 1) * new_longest > self.max_kv_tokens:
                break
            self._waiting.popleft()
            self._running[head.seq_id] = head
            plan.joining.append(head.seq_id)
            longest = new_longest
        return plan

    def complete(self, finished: Iterable[int]) -> None:
        """Running sequences that finished leave the batch at the next step (a step's, or those
        that finished while a run went on)."""
        for seq_id in finished:
            if self._running.pop(seq_id, None) is not None:
                self._leaving.append(seq_id)
                self._cancelled.discard(seq_id)

    def fail_all(self) -> list[int]:
        """Drop every running sequence (after a runtime failure); their ids."""
        ids = list(self._running)
        self._running.clear()
        self._cancelled.clear()
        self._leaving.clear()
        return ids
