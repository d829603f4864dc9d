"""Stopping the background tasks components keep references to."""

from __future__ import annotations

import asyncio


async def cancel_and_wait(task: asyncio.Task | None) -> None:
    """Cancel ``task`` and wait until it has finished; its own cancellation is the expected end.

    A failure the task died of still surfaces, and a cancellation of the caller while it
    waits propagates (a bare ``except CancelledError: pass`` would swallow that too).
    """
    if task is None:
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
