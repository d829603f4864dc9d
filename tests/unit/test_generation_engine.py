"""The generation engine in process on the tiny decoder: continuous batching must give
every sequence exactly what a step-by-step batch-1 reference loop gives it."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import tiny_llm

from gateway.core.errors import InvalidInputError, QueueFullError
from gateway.core.generation import ContextLengthError, GenerationRequest, SamplingParams
from gateway.core.model_config import GenerationConfig
from gateway.executors.decoder import KvCacheDecoder
from gateway.executors.onnxruntime import OnnxRuntimeExecutor
from gateway.service.generation import build_generation_engine

PROMPTS = ["Hello", "Once upon a time there was a little town", "The quick brown fox", "a b c", "Python is"]


def _engine(model_dir, **cfg):
    model_file = str(model_dir / "1" / "model.onnx")
    return build_generation_engine("tiny", "1", GenerationConfig(context_length=256, **cfg), OnnxRuntimeExecutor(model_file), model_file)


async def _collect(stream):
    tokens, text, reason = [], "", None
    async for event in stream:
        tokens += event.token_ids
        text += event.text
        reason = event.finish_reason
    return tokens, text, reason


@pytest.mark.parametrize("kv_cache", ["host", "device"])
def test_staggered_joins_and_leaves_match_the_reference(tiny_llm_model, kv_cache):
    # One hand-off per step, so the later prompts join while the first ones still decode.
    engine = _engine(tiny_llm_model, kv_cache=kv_cache, stream_interval_ms=0)
    assert type(engine.decoder.store).__name__ == {"host": "HostKv", "device": "DeviceKv"}[kv_cache]
    stop = tuple(engine.tokenizer.eos_token_ids)

    async def run():
        def submit(prompt, n):
            return engine.submit(GenerationRequest("tiny", SamplingParams(max_tokens=n, temperature=0), prompt=prompt))

        first = [asyncio.ensure_future(_collect(submit(p, 6 + 5 * i))) for i, p in enumerate(PROMPTS[:3])]
        await asyncio.sleep(0)  # let the first ones start before the others arrive
        for _ in range(30_000):  # bounded: 30 s
            if engine.stats.decode_steps >= 3:
                break
            await asyncio.sleep(0.001)
        later = [asyncio.ensure_future(_collect(submit(p, 12))) for p in PROMPTS[3:]]
        return await asyncio.gather(*first, *later)

    results = asyncio.run(run())
    budgets = [6, 11, 16, 12, 12]
    for prompt, n, (tokens, _, reason) in zip(PROMPTS, budgets, results):
        want = tiny_llm.reference_greedy(tiny_llm_model / "1", engine.tokenizer.encode(prompt), n, stop)
        assert tokens == want
        assert reason == "length"
    assert engine.stats.steps_multi > 0
    assert engine.stats.active == 0


def test_left_padded_batch_equals_rows_run_alone(tiny_llm_model):
    ex = OnnxRuntimeExecutor(str(tiny_llm_model / "1" / "model.onnx"))
    batch = KvCacheDecoder(ex)
    prompts = {1: [5, 6, 7, 8, 9, 10], 2: [11, 12], 3: [13, 14, 15]}
    first = {}
    for slot, ids in prompts.items():
        first.update(batch.prefill([slot], np.array([ids])))
    batch.release([1])  # the longest leaves: leading columns are trimmed
    assert batch.length == 3
    out = batch.decode({2: 20, 3: 21})
    for slot, token in ((2, 20), (3, 21)):
        alone = KvCacheDecoder(ex)
        alone.prefill([slot], np.array([prompts[slot]]))
        np.testing.assert_allclose(alone.decode({slot: token})[slot], out[slot], rtol=1e-5, atol=1e-5)


def test_limits_are_checked_at_submit(tiny_llm_model):
    engine = _engine(tiny_llm_model, max_sequences=1, max_waiting_sequences=0, default_max_tokens=4)

    async def run():
        with pytest.raises(ContextLengthError, match="maximum context length is 256") as info:
            engine.submit(GenerationRequest("tiny", SamplingParams(max_tokens=300), prompt="hi"))
        assert info.value.param == "max_tokens"
        stream = engine.submit(GenerationRequest("tiny", SamplingParams(temperature=0), prompt="hi"))
        with pytest.raises(QueueFullError):
            engine.submit(GenerationRequest("tiny", SamplingParams(temperature=0), prompt="hi"))
        tokens, _, _ = await _collect(stream)
        assert len(tokens) <= 4  # default_max_tokens
        assert engine.stats.rejected == 1

    asyncio.run(run())


# The end-of-text tokens of tiny-gpt, biased away: a sequence runs to its max_tokens.
NO_EOS = ((0, -100.0), (2, -100.0))


@pytest.mark.parametrize("interval_ms", [0, 1000])
def test_a_closed_stream_leaves_at_the_next_step(tiny_llm_model, interval_ms):
    engine = _engine(tiny_llm_model, stream_interval_ms=interval_ms)

    async def run():
        stream = engine.submit(GenerationRequest("tiny", SamplingParams(max_tokens=240, temperature=0, logit_bias=NO_EOS),
                                                 prompt="hello"))
        await stream.__anext__()
        assert engine.stats.active == 1
        stream.close()  # while the worker runs ahead with interval_ms 1000: it stops after its step
        for _ in range(6000):  # bounded: 30 s
            if engine.stats.active == 0 and engine.decoder.rows == 0:
                break
            await asyncio.sleep(0.005)
        assert engine.stats.active == 0 and engine.stats.cancelled == 1
        assert engine.decoder.rows == 0
        assert engine.stats.finished == {}  # it left cancelled, not at max_tokens
        assert engine.stats.generated_tokens < 240

    asyncio.run(run())


def test_a_stable_batch_runs_ahead_and_hands_its_tokens_over_together(tiny_llm_model):
    """With nothing joining or leaving, the worker runs decode steps back to back within
    stream_interval_ms: the tokens after the first reach the stream at once, each its own event,
    and they are those of one hand-off per step."""
    request = GenerationRequest("tiny", SamplingParams(max_tokens=40, temperature=0, logit_bias=NO_EOS), prompt="hello")

    async def step_by_step():
        return (await _collect(_engine(tiny_llm_model, stream_interval_ms=0).submit(request)))[0]

    want = asyncio.run(step_by_step())
    engine = _engine(tiny_llm_model, stream_interval_ms=1000)

    async def run():
        stream = engine.submit(request)
        tokens = list((await stream.__anext__()).token_ids)  # the prefill's token: handed over alone, at once
        tokens += (await stream.__anext__()).token_ids
        waits = 0
        while True:
            waits += not stream.ready
            try:
                event = await stream.__anext__()
            except StopAsyncIteration:
                break
            tokens += event.token_ids
        return tokens, waits

    tokens, waits = asyncio.run(run())
    assert len(want) == 40 and tokens == want
    assert waits == 0  # every token after the second was already there: one hand-off carried them
    assert engine.stats.decode_steps == 39


def test_a_long_run_hands_its_tokens_over_while_it_goes_on(tiny_llm_model):
    """Past stream_interval_ms the worker hands the tokens made so far to the loop and keeps
    decoding, instead of stopping for a round trip to the loop: one call for the prefill and the
    whole run after it, several deliveries during it, and the tokens of one hand-off per step."""
    request = GenerationRequest("tiny", SamplingParams(max_tokens=200, temperature=0, logit_bias=NO_EOS), prompt="hello")

    async def step_by_step():
        return (await _collect(_engine(tiny_llm_model, stream_interval_ms=0).submit(request)))[0]

    want = asyncio.run(step_by_step())
    engine = _engine(tiny_llm_model, stream_interval_ms=0.5)
    steps, deliveries = [], []
    step, deliver_events = engine._step, engine._deliver_events

    def counting_step(plan, keep_running=False):
        if plan.joining or plan.decoding:  # not the final release, which may or may not run before the end
            steps.append((len(plan.joining), len(plan.decoding), keep_running))
        return step(plan, keep_running)

    def counting_deliver(events):
        deliveries.append(len(events))
        return deliver_events(events)

    engine._step, engine._deliver_events = counting_step, counting_deliver

    async def run():
        return (await _collect(engine.submit(request)))[0]

    tokens = asyncio.run(run())
    assert len(want) == 200 and tokens == want
    assert steps == [(1, 0, True)]  # one hand-off: the prefill, then the run to max_tokens
    # The prefill's token, several hand-overs during the run, then its last tokens with the finish.
    assert len(deliveries) >= 4 and sum(deliveries) == 200, deliveries
    assert engine.stats.decode_steps == 199


def test_a_waiting_sequence_keeps_runs_within_the_interval(long_tiny_llm_model):
    """While a sequence waits for a place, runs end every interval, so its queue timeout is
    judged on time (not when the running one finishes)."""
    model_file = str(long_tiny_llm_model / "1" / "model.onnx")
    engine = build_generation_engine("tiny", "1", GenerationConfig(context_length=4096, max_sequences=1, queue_timeout_s=0.05),
                                     OnnxRuntimeExecutor(model_file), model_file)

    async def run():
        long = engine.submit(GenerationRequest("tiny", SamplingParams(max_tokens=4000, temperature=0, logit_bias=NO_EOS),
                                               prompt="hello"))
        await long.__anext__()  # running: the only place is taken
        waiting = engine.submit(GenerationRequest("tiny", SamplingParams(max_tokens=5, temperature=0), prompt="Python is"))
        with pytest.raises(Exception, match="queue_timeout_s"):
            await asyncio.wait_for(_collect(waiting), 30)
        still_running = engine.stats.active == 1
        long.close()
        return still_running

    assert asyncio.run(run())


def test_an_arrival_ends_a_run_ahead_at_once(tiny_llm_model):
    """A request arriving while a long sequence runs ahead joins at the next step: it finishes
    (with the reference's tokens) long before the long one, not after its interval."""
    engine = _engine(tiny_llm_model, stream_interval_ms=1000)
    stop = tuple(engine.tokenizer.eos_token_ids)
    want = tiny_llm.reference_greedy(tiny_llm_model / "1", engine.tokenizer.encode("Python is"), 5, stop)

    async def run():
        order = []

        async def collect(name, stream):
            tokens = []
            async for event in stream:
                tokens += event.token_ids
            order.append(name)
            return tokens

        long = engine.submit(GenerationRequest("tiny", SamplingParams(max_tokens=240, temperature=0, logit_bias=NO_EOS),
                                               prompt="hello"))
        await long.__anext__()  # decoding now: the worker runs ahead
        short = engine.submit(GenerationRequest("tiny", SamplingParams(max_tokens=5, temperature=0), prompt="Python is"))
        got = await asyncio.gather(collect("long", long), collect("short", short))
        return order, got

    order, (long_tokens, short_tokens) = asyncio.run(run())
    assert short_tokens == want
    assert len(long_tokens) == 239  # its first token was read before
    assert order == ["short", "long"]


def test_a_join_and_a_finish_do_not_end_a_run_while_nothing_waits(tiny_llm_model):
    """A sequence that joins a running one, with nobody waiting, does not hand the step back after
    its prefill: its first token is handed over at once and both rows decode on in the same call.
    When it finishes, it leaves the batch in the worker, its last tokens reach its stream, and the
    other row goes on in the same call. The statistics count the shared steps as steps of two rows."""
    engine = _engine(tiny_llm_model, stream_interval_ms=1000)
    stop = tuple(engine.tokenizer.eos_token_ids)
    want = tiny_llm.reference_greedy(tiny_llm_model / "1", engine.tokenizer.encode("Python is"), 5, stop)
    steps = []
    step = engine._step

    def counting_step(plan, keep_running=False):
        if plan.joining or plan.decoding:  # not the last one's release, which may or may not run before the end
            steps.append((len(plan.joining), len(plan.decoding)))
        return step(plan, keep_running)

    engine._step = counting_step

    async def run():
        order = []

        async def collect(name, stream):
            got = await _collect(stream)
            order.append((name, engine.stats.active))
            return got

        long = engine.submit(GenerationRequest("tiny", SamplingParams(max_tokens=120, temperature=0, logit_bias=NO_EOS),
                                               prompt="hello"))
        await long.__anext__()
        short = engine.submit(GenerationRequest("tiny", SamplingParams(max_tokens=5, temperature=0), prompt="Python is"))
        got = await asyncio.gather(collect("long", long), collect("short", short))
        return order, got

    order, ((long_tokens, _, _), (short_tokens, _, reason)) = asyncio.run(run())
    assert len(want) == 5 and short_tokens == want and reason == "length" and len(long_tokens) == 119
    # The long one's prefill and run (ended by the arrival), then the join and one run to the end.
    assert steps == [(1, 0), (1, 1)]
    assert order == [("short", 1), ("long", 0)]  # the short one left the batcher while the long one ran
    assert engine.stats.steps_multi == 4  # the short one's 4 decode steps, each with the long one
    assert engine.stats.decode_steps == 119  # model calls: the short one's 4 were among the long one's
    assert engine.stats.finished == {"length": 2} and engine.decoder.rows <= 1

def test_penalised_and_plain_sequences_share_steps(tiny_llm_model):
    """A batch mixing sequences with and without logit_bias/penalties: the plain ones still equal
    the reference, the biased one emits its token every step, the penalised one repeats less."""
    engine = _engine(tiny_llm_model)
    stop = tuple(engine.tokenizer.eos_token_ids)
    prompt = "a b c"
    ids = engine.tokenizer.encode(prompt)
    want = tiny_llm.reference_greedy(tiny_llm_model / "1", ids, 24, stop)
    forced = next(t for t in range(engine.tokenizer.vocab_size) if t not in stop and t != want[0])

    async def run():
        def submit(**params):
            return _collect(engine.submit(GenerationRequest("tiny", SamplingParams(max_tokens=24, temperature=0, **params),
                                                            prompt=prompt)))

        return await asyncio.gather(
            submit(), submit(logit_bias=((forced, 100.0),)), submit(frequency_penalty=2.0), submit(),
        )

    plain, biased, penalised, plain2 = asyncio.run(run())
    assert plain[0] == want and plain2[0] == want
    assert biased[0] == [forced] * 24
    repeats = len(want) - len(set(want))
    assert repeats > 0, "the reference must repeat itself for this test to mean anything"
    assert len(penalised[0]) - len(set(penalised[0])) < repeats
    assert engine.stats.steps_multi > 0


def test_logit_bias_outside_the_vocabulary_is_refused_at_submit(tiny_llm_model):
    engine = _engine(tiny_llm_model)
    vocab = engine.tokenizer.vocab_size

    async def run():
        with pytest.raises(InvalidInputError, match="outside the vocabulary") as info:
            engine.submit(GenerationRequest("tiny", SamplingParams(logit_bias=((vocab, 1.0),)), prompt="hi"))
        assert info.value.param == "logit_bias"

    asyncio.run(run())
