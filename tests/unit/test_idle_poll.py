"""IdlePoll on a real uvloop loop: it keeps the loop polling while there is traffic, for the
window after the last work, and then lets it sleep."""

from __future__ import annotations

import asyncio
import time

import pytest
import uvloop

from gateway.api.idle_poll import IdlePoll

WINDOW_US = 2000
BOUND_S = 5.0  # every wait below ends by this, whatever the machine's load


async def _until_stopped(poll: IdlePoll) -> float:
    """Seconds until the poller stopped (bounded)."""
    started = time.monotonic()
    while poll.polling:
        if time.monotonic() - started > BOUND_S:
            raise AssertionError(f"still polling after {BOUND_S} s")
        await asyncio.sleep(0.001)
    return time.monotonic() - started


def _work(seconds: float) -> None:
    """A callback that keeps the loop busy, as serving a request does."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def test_a_poke_polls_for_the_window_then_stops():
    async def main():
        poll = IdlePoll(asyncio.get_running_loop(), WINDOW_US)
        assert not poll.polling
        started = time.monotonic()
        poll.poke()
        assert poll.polling
        await _until_stopped(poll)
        took = time.monotonic() - started
        assert took >= WINDOW_US / 1e6
        assert poll.passes > 0
        passes = poll.passes
        # Stopped means stopped: no pass runs until the next poke.
        await asyncio.sleep(0.05)
        assert poll.passes == passes and not poll.polling
        poll.poke()
        assert poll.polling
        await _until_stopped(poll)
        assert poll.passes > passes

    uvloop.run(main())


def test_a_busy_loop_keeps_it_polling_past_the_window():
    """Passes that found other callbacks running restart the window: the poller stops a window
    after the loop's last work, not a window after the poke."""
    async def main():
        loop = asyncio.get_running_loop()
        poll = IdlePoll(loop, WINDOW_US)
        poll.poke()
        started = time.monotonic()
        for _ in range(10):  # 10 ms of work in 1 ms pieces, five windows long
            loop.call_soon(_work, 0.001)
            await asyncio.sleep(0)
            assert poll.polling
        busy_until = time.monotonic()
        await _until_stopped(poll)
        assert time.monotonic() - started >= busy_until - started + WINDOW_US / 1e6 * 0.5

    uvloop.run(main())


def test_other_callbacks_and_timers_run_while_it_polls():
    async def main():
        loop = asyncio.get_running_loop()
        poll = IdlePoll(loop, 50_000)
        poll.poke()
        fired = loop.create_future()
        loop.call_later(0.005, fired.set_result, True)
        assert await asyncio.wait_for(fired, BOUND_S)
        done = await asyncio.wait_for(loop.run_in_executor(None, sum, range(1000)), BOUND_S)
        assert done == 499500 and poll.polling

    uvloop.run(main())


@pytest.mark.parametrize("window", [0, -1])
def test_the_window_must_be_positive(window):
    loop = uvloop.new_event_loop()
    try:
        with pytest.raises(ValueError, match="idle_poll_us"):
            IdlePoll(loop, window)
    finally:
        loop.close()
