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


def _chunk_batches(stream: GenerationStream, kind: str = "text", include_usage: bool = False):
    """What the SSE writer gets: CompletionServing.chunks' batches, as lists of texts (the usage chunk
    as "usage"), and the error that ended them (None)."""
    from gateway.api.openai.completions_serving import CompletionServing

    async def main():
        batches, error = [], None
        try:
            async for batch in CompletionServing(None).chunks(kind, "m", stream, False, include_usage):  # type: ignore[arg-type]
                batches.append([c["choices"][0]["text"] if c["choices"] else "usage" for c in batch])
        except ExecutorError as exc:
            error = exc
        return batches, error

    return main()


def test_chunks_that_are_ready_together_go_in_one_batch():
    async def main():
        s = _stream()
        for text in ("a", "b", "c"):  # one hand-off of the engine: three steps' tokens at once
            s.push(GenerationEvent(0, text, (5,)))
        reader = asyncio.get_running_loop().create_task(_chunk_batches(s, include_usage=True))
        for _ in range(100):  # bounded: until the reader has taken the three and waits for more
            await asyncio.sleep(0)
            if not s.ready:
                break
        s.push(GenerationEvent(0, "d", (6,), finish_reason="length"))
        return await asyncio.wait_for(reader, 10)

    batches, error = asyncio.run(main())
    assert error is None and batches == [["a", "b", "c"], ["d", "usage"]]


def test_tokens_made_before_a_failure_are_sent_before_the_error():
    async def main():
        s = _stream()
        s.push(GenerationEvent(0, "a", (5,)))
        s.push(GenerationEvent(0, "b", (6,)))
        s.fail(ExecutorError("the model failed"))  # in the same hand-off as the tokens
        return await _chunk_batches(s)

    batches, error = asyncio.run(main())
    assert batches == [["a", "b"]] and isinstance(error, ExecutorError)
