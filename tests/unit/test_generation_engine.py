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
    engine = _engine(tiny_llm_model, kv_cache=kv_cache)
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


def test_a_closed_stream_leaves_at_the_next_step(tiny_llm_model):
    engine = _engine(tiny_llm_model)

    async def run():
        stream = engine.submit(GenerationRequest("tiny", SamplingParams(max_tokens=200, temperature=0), prompt="hello"))
        await stream.__anext__()
        assert engine.stats.active == 1
        stream.close()
        for _ in range(6000):  # bounded: 30 s
            if engine.stats.active == 0 and engine.decoder.rows == 0:
                break
            await asyncio.sleep(0.005)
        assert engine.stats.active == 0 and engine.stats.cancelled == 1
        assert engine.decoder.rows == 0

    asyncio.run(run())


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
