"""cancel_and_wait: the stop path of every background task."""

from __future__ import annotations

import asyncio

import pytest

from gateway.core.tasks import cancel_and_wait


def test_a_running_task_is_cancelled_and_awaited():
    async def main():
        started = asyncio.Event()

        async def forever():
            started.set()
            await asyncio.Event().wait()

        task = asyncio.create_task(forever())
        await asyncio.wait_for(started.wait(), 10)
        await cancel_and_wait(task)
        assert task.cancelled()
        await cancel_and_wait(None)

    asyncio.run(main())


def test_a_task_that_died_of_a_failure_still_reports_it():
    async def main():
        async def boom():
            raise RuntimeError("boom")

        task = asyncio.create_task(boom())
        await asyncio.wait([task], timeout=10)
        with pytest.raises(RuntimeError, match="boom"):
            await cancel_and_wait(task)

    asyncio.run(main())


def test_cancelling_the_caller_while_it_waits_propagates():
    async def main():
        started, cleaning = asyncio.Event(), asyncio.Event()

        async def slow_to_stop():
            started.set()
            try:
                await asyncio.Event().wait()
            finally:
                cleaning.set()
                await asyncio.Event().wait()  # cleanup that only a second cancel ends

        task = asyncio.create_task(slow_to_stop())
        await asyncio.wait_for(started.wait(), 10)
        stopper = asyncio.create_task(cancel_and_wait(task))
        await asyncio.wait_for(cleaning.wait(), 10)
        stopper.cancel()
        done, _ = await asyncio.wait([stopper], timeout=10)
        assert stopper in done and stopper.cancelled()
        assert task.cancelled()

    asyncio.run(main())
