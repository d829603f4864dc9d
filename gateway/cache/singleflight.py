"""Concurrent identical misses run once; everyone waiting gets that one answer.

The work runs in its own task, so a waiter that goes away (client cancelled,
deadline passed) neither cancels it nor loses it for the others.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Hashable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class SingleFlight(Generic[T]):
    def __init__(self) -> None:
        self._flights: dict[Hashable, asyncio.Task[T]] = {}

    def __len__(self) -> int:
        return len(self._flights)

    def join(self, key: Hashable, start: Callable[[], Coroutine[Any, Any, T]]) -> tuple[asyncio.Task[T], bool]:
        """The flight for ``key`` and whether this caller started it."""
        task = self._flights.get(key)
        if task is not None:
            return task, False
        task = asyncio.get_running_loop().create_task(start())
        self._flights[key] = task
        task.add_done_callback(lambda t: self._land(key, t))
        return task, True

    def _land(self, key: Hashable, task: asyncio.Task[T]) -> None:
        if self._flights.get(key) is task:
            del self._flights[key]
        if not task.cancelled():
            task.exception()  # retrieved: nobody waiting must not log "never retrieved"

    @staticmethod
    async def wait(task: asyncio.Task[T], timeout_s: float | None) -> T:
        """The flight's result; TimeoutError after ``timeout_s`` (the flight goes on)."""
        if timeout_s is None:
            return await asyncio.shield(task)
        return await asyncio.wait_for(asyncio.shield(task), timeout_s)
