"""Constrained decoding (gateway/scheduler/generation/constraints.py) on the tiny model's
tokenizer and, through the engine, on its random weights: whatever the logits say, a
finished output is a document of the schema."""

from __future__ import annotations

import asyncio
import json

import jsonschema
import numpy as np
import pytest

from gateway.core.errors import InvalidInputError
from gateway.core.generation import GenerationRequest, OutputConstraint, SamplingParams
from gateway.core.model_config import GenerationConfig
from gateway.executors.onnxruntime import OnnxRuntimeExecutor
from gateway.scheduler.generation.constraints import ConstraintError, ConstraintFactory, compile_json_schema
from gateway.service.generation import build_generation_engine
from gateway.text.tokenizer import TextTokenizer

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 8},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "role": {"enum": ["admin", "user", "guest"]},
    },
    "required": ["name", "age", "role"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def tokenizer(tiny_llm_model) -> TextTokenizer:
    return TextTokenizer.from_dir(str(tiny_llm_model / "1"))


def _factory(tokenizer):
    return ConstraintFactory(tokenizer, tokenizer.eos_token_ids)


def _spec(schema) -> OutputConstraint:
    return OutputConstraint(json.dumps(schema), "response_format.json_schema.schema")


def _walk(tokenizer, constraint, rng, limit=200) -> tuple[str, bool]:
    """Random logits through the mask, token by token: (text, ended by the grammar or EOS)."""
    ids = []
    for _ in range(limit):
        row = rng.normal(size=tokenizer.vocab_size).astype(np.float32) * 5
        masked = constraint.mask(row)
        token = int(np.argmax(masked))
        if token in tokenizer.eos_token_ids:
            assert constraint.accepting  # EOS only once the document is complete
            return tokenizer.decode(ids), True
        constraint.advance(token)
        ids.append(token)
        if constraint.done:
            return tokenizer.decode(ids), True
    return tokenizer.decode(ids), False


def test_random_logits_through_the_mask_always_give_a_valid_document(tokenizer):
    factory = _factory(tokenizer)
    rng = np.random.default_rng(7)
    finished = 0
    for constraint in factory.create(_spec(PERSON), 40):
        text, ended = _walk(tokenizer, constraint, rng)
        if ended:
            finished += 1
            jsonschema.validate(json.loads(text), PERSON)
    assert finished >= 38


def test_mask_keeps_the_row_and_forbids_all_but_the_grammar(tokenizer):
    (constraint,) = _factory(tokenizer).create(_spec({"type": "object"}))
    row = np.zeros(tokenizer.vocab_size, dtype=np.float32)
    masked = constraint.mask(row)
    assert (row == 0).all()  # logprobs are of the model's own row
    allowed = np.flatnonzero(np.isfinite(masked))
    assert [tokenizer.decode([int(t)]) for t in allowed] == ["{"]
    assert not (set(allowed.tolist()) & tokenizer.eos_token_ids)


def test_rows_longer_than_the_vocabulary_mask_the_padding(tokenizer):
    (constraint,) = _factory(tokenizer).create(_spec({"type": "object"}))
    masked = constraint.mask(np.zeros(tokenizer.vocab_size + 64, dtype=np.float32))
    assert np.isneginf(masked[tokenizer.vocab_size:]).all()


def test_a_bad_schema_is_refused_with_llguidance_message(tokenizer):
    with pytest.raises(ConstraintError, match="objectx"):
        compile_json_schema(json.dumps({"type": "objectx"}))
    with pytest.raises(ConstraintError):
        _factory(tokenizer).create(_spec({"type": "object", "properties": {"a": {"$ref": "#/nowhere"}}}))


def _engine(model_dir):
    model_file = str(model_dir / "1" / "model.onnx")
    return build_generation_engine("tiny", "1", GenerationConfig(context_length=256), OnnxRuntimeExecutor(model_file), model_file)


async def _collect(stream):
    texts: dict[int, str] = {}
    reasons: dict[int, str] = {}
    async for event in stream:
        texts[event.index] = texts.get(event.index, "") + event.text
        if event.finish_reason is not None:
            reasons[event.index] = event.finish_reason
    return texts, reasons


def test_engine_outputs_validate_greedy_and_sampled(tiny_llm_model):
    engine = _engine(tiny_llm_model)

    async def run():
        streams = [
            engine.submit(GenerationRequest("tiny", SamplingParams(max_tokens=120, temperature=t, n=n, seed=3),
                                            prompt="Tell me about a person", constraint=_spec(PERSON)))
            for t, n in ((0.0, 1), (1.0, 8), (1.5, 8))
        ]
        return await asyncio.gather(*(_collect(s) for s in streams))

    outputs = asyncio.run(run())
    stops = 0
    for texts, reasons in outputs:
        for i, text in texts.items():
            if reasons[i] == "stop":
                stops += 1
                jsonschema.validate(json.loads(text), PERSON)
    assert stops >= 16


def test_engine_refuses_a_bad_schema_at_submit(tiny_llm_model):
    engine = _engine(tiny_llm_model)

    async def run():
        engine.submit(GenerationRequest("tiny", SamplingParams(max_tokens=10), prompt="x", constraint=_spec({"type": 3})))

    with pytest.raises(InvalidInputError) as info:
        asyncio.run(run())
    assert info.value.param == "response_format.json_schema.schema"
