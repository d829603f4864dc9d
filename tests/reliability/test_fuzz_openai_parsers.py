"""Property tests of the /v1 request parsers: any JSON document is either a parsed request or a
typed error naming the field (InvalidInputError with its param, mapped to a 4xx), never another
exception. In process, no daemon: the parsers are pure functions of the decoded body."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.api.errors import HTTP_STATUS, classify
from gateway.api.openai.completions_protocol import parse_chat, parse_completion
from gateway.api.openai.embeddings_protocol import parse_request
from gateway.api.openai.errors import error_document
from gateway.core.errors import GatewayError, InvalidInputError
from gateway.core.generation import GenerationRequest

SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Text as json.loads returns it: \\ud800 escapes give lone surrogates (hypothesis' default leaves them out).
texts = st.text(max_size=20) | st.text(st.characters(codec=None, categories=["Cs", "Ll"]), min_size=1, max_size=4)
# Any JSON value (what json.loads can return), nesting bounded.
scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | texts
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)

# Values chosen to sit near the edges of each known field's type and range.
edgy = (st.none() | st.booleans() | st.sampled_from([0, -1, 1, 2, 3, 5, 16, 17, 20, 21, 128, 129, 2**63, -(2**63), 2**64])
        | st.sampled_from([0.0, -0.0, 1e-300, 0.5, 1.0, 2.0, 2.5, -2.0, 1e308, float("inf"), float("-inf")])
        | texts | st.lists(st.integers(-2, 2**40) | texts, max_size=3) | json_values)
messages = st.lists(
    st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "tool", "bot", 1])},
                          optional={"content": texts | st.none() | st.lists(
                              st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url"]), "text": edgy}),
                              max_size=2) | edgy, "name": edgy}),
    max_size=3,
) | edgy

GENERATION_FIELDS = ["model", "max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "n", "stream",
                     "stream_options", "user", "presence_penalty", "frequency_penalty", "cache", "logit_bias",
                     "repetition_penalty", "min_p"]
COMPLETION_FIELDS = GENERATION_FIELDS + ["prompt", "logprobs", "echo", "suffix", "best_of"]
CHAT_FIELDS = GENERATION_FIELDS + ["max_completion_tokens", "logprobs", "top_logprobs", "tools", "tool_choice",
                                   "functions", "function_call", "parallel_tool_calls", "response_format", "audio",
                                   "modalities", "prediction"]
EMBEDDING_FIELDS = ["model", "input", "encoding_format", "dimensions", "user"]


def documents(fields: list[str], required: dict) -> st.SearchStrategy:
    """Objects of known fields with edgy values, the required ones usually valid, plus noise."""
    known = st.fixed_dictionaries(required, optional={f: edgy for f in fields if f not in required})
    noise = st.dictionaries(st.text(max_size=8), json_values, max_size=2)
    return st.tuples(known, noise).map(lambda kn: {**kn[1], **kn[0]}) | json_values


def check(parse, doc) -> None:
    # A document that went through the wire is what json.loads returns (inf becomes a float too).
    try:
        result = parse(doc)
    except InvalidInputError as exc:
        assert isinstance(exc.param, str)
        status, body = error_document(exc)
        assert status == 400 and body["error"]["param"] == exc.param and body["error"]["message"]
        json.dumps(body)  # the error is serialisable as sent
    except GatewayError as exc:
        assert 400 <= HTTP_STATUS[classify(exc)[0]] < 500, exc
    else:
        _assert_encodable(result)
        return result
    return None


def _assert_encodable(value) -> None:
    """Every text an accepted request carries has UTF-8 bytes (what a tokenizer needs)."""
    if isinstance(value, str):
        value.encode("utf-8")
    elif isinstance(value, (list, tuple)):
        for item in value:
            _assert_encodable(item)
    elif isinstance(value, dict):
        for item in value.values():
            _assert_encodable(item)
    elif hasattr(value, "__dataclass_fields__"):
        for name in value.__dataclass_fields__:
            _assert_encodable(getattr(value, name))
    elif hasattr(value, "model_dump"):
        _assert_encodable(value.model_dump())


@SETTINGS
@given(documents(COMPLETION_FIELDS, {"model": st.just("tiny-gpt"), "prompt": st.text(max_size=8) | edgy}))
def test_parse_completion_accepts_or_names_the_field(doc):
    parsed = check(parse_completion, doc)
    if parsed is not None:
        req, gens = parsed
        assert gens
        for gen in gens:
            assert isinstance(gen, GenerationRequest) and gen.model == doc["model"]
            assert (gen.prompt is None) != (gen.prompt_token_ids is None)
            assert gen.sampling.n >= 1 and (gen.sampling.max_tokens is None or gen.sampling.max_tokens >= 1)


@SETTINGS
@given(documents(CHAT_FIELDS, {"model": st.just("tiny-gpt"), "messages": messages}))
def test_parse_chat_accepts_or_names_the_field(doc):
    parsed = check(parse_chat, doc)
    if parsed is not None:
        req, gen = parsed
        assert gen.messages and all(isinstance(m["content"], str) for m in gen.messages)
        assert 0 <= gen.sampling.temperature <= 2 and 0 < gen.sampling.top_p <= 1


@SETTINGS
@given(documents(EMBEDDING_FIELDS, {"model": st.just("minilm"), "input": edgy}))
def test_parse_embedding_request_accepts_or_names_the_field(doc):
    req = check(parse_request, doc)
    if req is not None:
        assert req.input and req.encoding_format in ("float", "base64")


def test_lone_surrogates_are_refused_naming_the_field():
    """Regression: each reached the tokenizer and was a 500 (TypeError: TextInputSequence must be str)."""
    cases = [
        (parse_completion, {"model": "m", "prompt": "a\ud800"}, "prompt"),
        (parse_completion, {"model": "m", "prompt": ["\udfff"]}, "prompt"),
        (parse_completion, {"model": "m", "prompt": "a", "stop": ["x", "\ud800"]}, "stop"),
        (parse_chat, {"model": "m", "messages": [{"role": "user", "content": "ok"},
                                                 {"role": "user", "content": "\ud800"}]}, "messages[1].content"),
        (parse_chat, {"model": "m", "messages": [{"role": "user", "content": "ok", "name": "\udc00"}]}, "messages[0].name"),
        (parse_chat, {"model": "m", "messages": [{"role": "user", "content": "ok"}], "user": "\udc00"}, "user"),
        (parse_request, {"model": "m", "input": ["ok", "\ud800"]}, "input"),
    ]
    for parse, doc, param in cases:
        try:
            parse(doc)
        except InvalidInputError as exc:
            assert exc.param == param and "lone surrogate" in str(exc), (doc, exc)
        else:
            raise AssertionError(f"accepted {doc!r}")


@SETTINGS
@given(json_values)
def test_any_json_value_is_handled_by_every_parser(doc):
    for parse in (parse_completion, parse_chat, parse_request):
        check(parse, doc)
