"""GenerationStream's routing hooks (wait_started, observers, done callbacks) and the comparison of
two generations that shadow statistics count."""

from __future__ import annotations

import asyncio

import pytest

from gateway.core.errors import ExecutorError
from gateway.core.generation import GenerationEvent, GenerationStream
from gateway.routing.compare import PairStats, compare_generations


def _stream(choices: int = 1) -> GenerationStream:
    return GenerationStream("m", "1", 3, choices, lambda: None)


def test_wait_started_keeps_the_first_event_for_the_reader():
    async def main():
        s = _stream()
        s.push(GenerationEvent(0, "a", (5,)))
        await s.wait_started()
        s.push(GenerationEvent(0, "b", (6,), finish_reason="stop"))
        return [e.text async for e in s]

    assert asyncio.run(main()) == ["a", "b"]


def test_a_failure_before_the_first_event_is_raised_by_wait_started():
    async def main():
        s = _stream()
        s.fail(ExecutorError("boom"))
        with pytest.raises(ExecutorError):
            await s.wait_started()
        with pytest.raises(ExecutorError):
            [e async for e in s]

    asyncio.run(main())


def test_observers_see_every_event_and_done_callbacks_fire_once():
    async def main():
        s = _stream(choices=2)
        seen, done = [], []
        s.observe(lambda e: seen.append(e.text))
        s.add_done_callback(done.append)
        s.push(GenerationEvent(0, "x", (1,), finish_reason="stop"))
        assert done == []  # one choice still open
        s.push(GenerationEvent(1, "y", (2,), finish_reason="length"))
        s.fail(ExecutorError("late"))  # after the end: no second call
        late = []
        s.add_done_callback(late.append)  # registered after the end: called at once
        return seen, done, late

    seen, done, late = asyncio.run(main())
    assert seen == ["x", "y"] and done == [None] and late == [None]


def test_compare_generations_counts_exact_choices_and_agreeing_tokens():
    same = compare_generations([("ab", [1, 2])], [("ab", [1, 2])])
    assert same.exact and same.disagreed_rows == 0 and (same.tokens, same.tokens_agreed) == (2, 2)
    diff = compare_generations([("abc", [1, 2, 3]), ("z", [9])], [("abd", [1, 2, 4, 7]), ("z", [9])])
    assert not diff.exact and diff.rows == 2 and diff.disagreed_rows == 1
    assert (diff.tokens, diff.tokens_agreed) == (5, 3)  # 4 + 1 positions; 1, 2 and 9 agree
    missing = compare_generations([("a", [1]), ("b", [2])], [("a", [1])])
    assert missing.disagreed_rows == 1 and (missing.tokens, missing.tokens_agreed) == (2, 1)
    pair = PairStats()
    pair.add(same)
    pair.add(diff)
    doc = pair.to_json()
    assert doc["agreement_exact"] == 0.5 and doc["agreement_tokens"] == 5 / 7
