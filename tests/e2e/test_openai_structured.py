"""Structured output (response_format) and tool calls on /v1/chat/completions against a real
daemon, with the official `openai` client, on the tiny random decoder: its gibberish
weights must still give outputs that parse and validate, because decoding is constrained."""

from __future__ import annotations

import asyncio
import json
import shutil

import jsonschema
import openai
import pytest
import tiny_llm
from daemons import launch

MODEL = "tiny-gpt"
# The tiny model's positions widened to 1024: a tool list in the system turn takes ~450 of its tokens.
YAML = """max_batch_size: 0
generation:
  context_length: 1024
  default_max_tokens: 64
  max_sequences: 32
  max_waiting_sequences: 512
"""

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 10},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "role": {"enum": ["admin", "user", "guest"]},
    },
    "required": ["name", "age", "role"],
    "additionalProperties": False,
}
ORDER = {
    "type": "object",
    "properties": {
        "id": {"type": "integer", "minimum": 1, "maximum": 99999},
        "items": {
            "type": "array",
            "maxItems": 3,
            "items": {
                "type": "object",
                "properties": {"sku": {"type": "string", "maxLength": 6}, "qty": {"type": "integer", "minimum": 1, "maximum": 9}},
                "required": ["sku", "qty"],
                "additionalProperties": False,
            },
        },
        "paid": {"type": "boolean"},
    },
    "required": ["id", "items", "paid"],
    "additionalProperties": False,
}
PROFILE = {
    "type": "object",
    "properties": {
        "user": {
            "type": "object",
            "properties": {
                "handle": {"type": "string", "pattern": "^[a-z]{1,8}$"},
                "tags": {"type": "array", "items": {"enum": ["red", "green", "blue"]}, "maxItems": 4},
            },
            "required": ["handle", "tags"],
            "additionalProperties": False,
        },
        "level": {"enum": [1, 2, 3]},
        "note": {"anyOf": [{"type": "null"}, {"type": "string", "maxLength": 8}]},
    },
    "required": ["user", "level", "note"],
    "additionalProperties": False,
}
SCHEMAS = {"person": PERSON, "order": ORDER, "profile": PROFILE}

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 12}, "unit": {"enum": ["c", "f"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
CLOCK = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Current time in a timezone",
        "parameters": {
            "type": "object",
            "properties": {"tz": {"type": "string", "maxLength": 8}},
            "required": ["tz"],
            "additionalProperties": False,
        },
    },
}
TOOL_PARAMS = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, CLOCK)}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def gateway(tiny_llm_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("structured") / "models"
    root.mkdir()
    shutil.copytree(tiny_llm_model, root / MODEL)
    tiny_llm.build_decoder(root / MODEL / "1", max_positions=1024)
    (root / MODEL / "model.yaml").write_text(YAML)
    gw = launch(root)
    yield gw
    gw.terminate()


@pytest.fixture
def client(gateway):
    return openai.OpenAI(base_url=f"http://{gateway.http_url}/v1", api_key="unused", max_retries=0, timeout=60)


def async_client(gateway) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"http://{gateway.http_url}/v1", api_key="unused", max_retries=0, timeout=120)


def schema_format(name: str, schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


# ----------------------------------------------------------------------------- response_format


def test_json_object_greedy_is_a_json_object(client):
    resp = client.chat.completions.create(model=MODEL, messages=ASK, temperature=0, max_tokens=200,
                                          response_format={"type": "json_object"})
    choice = resp.choices[0]
    if choice.finish_reason == "stop":
        assert isinstance(json.loads(choice.message.content), dict)
    else:  # gibberish may fill any object without end; the text is still a prefix of one
        assert choice.finish_reason == "length" and choice.message.content.startswith("{")


def test_json_schema_greedy_and_seeded_sampling(client):
    for name, schema in SCHEMAS.items():
        greedy = client.chat.completions.create(model=MODEL, messages=ASK, temperature=0, max_tokens=150,
                                                response_format=schema_format(name, schema))
        assert greedy.choices[0].finish_reason == "stop", greedy.choices[0].message.content
        jsonschema.validate(json.loads(greedy.choices[0].message.content), schema)
        seeded = [
            client.chat.completions.create(model=MODEL, messages=ASK, temperature=1.0, seed=11, max_tokens=150, n=3,
                                           response_format=schema_format(name, schema))
            for _ in range(2)
        ]
        texts = [[c.message.content for c in r.choices] for r in seeded]
        assert texts[0] == texts[1]  # a seed still fixes the draw under the mask
        for choice in seeded[0].choices:
            assert choice.finish_reason == "stop"
            jsonschema.validate(json.loads(choice.message.content), schema)


def test_hundreds_of_sampled_outputs_all_validate(gateway):
    """3 schemas x 10 requests x n=10 at high temperature, concurrently: every "stop" output validates."""

    async def run():
        aclient = async_client(gateway)
        jobs = []
        for name, schema in SCHEMAS.items():
            for i in range(10):
                jobs.append((schema, aclient.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": f"Make a {name} #{i}"}], n=10, max_tokens=160,
                    temperature=1.3 if i % 2 else 0.8, top_p=0.95 if i % 3 == 0 else 1.0, seed=i,
                    response_format=schema_format(name, schema))))
        responses = await asyncio.wait_for(asyncio.gather(*(job for _, job in jobs)), 300)
        return [(schema, resp) for (schema, _), resp in zip(jobs, responses)]

    total = stops = 0
    for schema, resp in asyncio.run(run()):
        for choice in resp.choices:
            total += 1
            if choice.finish_reason == "stop":
                stops += 1
                jsonschema.validate(json.loads(choice.message.content), schema)
    assert total == 300
    assert stops >= 0.97 * total, f"{stops}/{total} finished"


def test_streamed_json_schema_reassembles_to_a_valid_document(client):
    chunks = list(client.chat.completions.create(model=MODEL, messages=ASK, temperature=0.9, seed=5, max_tokens=150,
                                                 response_format=schema_format("person", PERSON), stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(text), PERSON)


def test_invalid_schema_is_a_400_naming_the_schema(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=ASK,
                                       response_format=schema_format("bad", {"type": "objectx"}))
    err = info.value.body
    assert err["param"] == "response_format.json_schema.schema"
    assert "objectx" in err["message"]
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=ASK, response_format={"type": "json_schema"})
    assert info.value.body["param"] == "response_format.json_schema"


# ------------------------------------------------------------------------------------- tools


def _check_call(call, names=("get_weather", "get_time")) -> dict:
    assert call.id.startswith("call_") and call.type == "function"
    assert call.function.name in names
    arguments = json.loads(call.function.arguments)
    jsonschema.validate(arguments, TOOL_PARAMS[call.function.name])
    return arguments


def test_tool_choice_required_and_named_give_parsable_calls(client):
    for seed in range(4):
        resp = client.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER, CLOCK], tool_choice="required",
                                              temperature=1.0, seed=seed, max_tokens=100, parallel_tool_calls=False)
        choice = resp.choices[0]
        assert choice.finish_reason == "tool_calls"
        assert choice.message.content is None
        (call,) = choice.message.tool_calls
        _check_call(call)
    named = client.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER, CLOCK], temperature=0, max_tokens=100,
                                           tool_choice={"type": "function", "function": {"name": "get_time"}})
    (call,) = named.choices[0].message.tool_calls
    assert call.function.name == "get_time"
    _check_call(call)
    assert named.choices[0].finish_reason == "tool_calls"


def test_tool_choice_none_and_auto_answer_with_text(client):
    for choice_mode in ("none", "auto"):
        resp = client.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER], tool_choice=choice_mode,
                                              temperature=0, max_tokens=12)
        choice = resp.choices[0]
        assert choice.message.tool_calls is None  # the random model writes no <tool_call> block
        assert choice.finish_reason in ("stop", "length") and isinstance(choice.message.content, str)


def test_bad_tool_choice_is_a_400(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER],
                                       tool_choice={"type": "function", "function": {"name": "nope"}})
    assert info.value.body["param"] == "tool_choice.function.name"
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=ASK, tool_choice="required")
    assert info.value.body["param"] == "tool_choice"
    bad = {"type": "function", "function": {"name": "f", "parameters": {"type": "objectx"}}}
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=ASK, tools=[bad], tool_choice="required")
    assert info.value.body["param"] == "tools"


def test_two_turn_agent_loop(client):
    messages = list(ASK)
    first = client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER], tool_choice="required",
                                           temperature=0, max_tokens=100)
    (call,) = first.choices[0].message.tool_calls
    arguments = _check_call(call)
    messages.append(first.choices[0].message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": call.id, "content": json.dumps({"city": arguments["city"], "temp": 21})})
    second = client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER], temperature=0, max_tokens=12)
    assert second.choices[0].finish_reason in ("stop", "length")
    assert isinstance(second.choices[0].message.content, str)
    # The call and its result were rendered into the prompt: it is longer than the first turn's.
    assert second.usage.prompt_tokens > first.usage.prompt_tokens + 10
    with pytest.raises(openai.BadRequestError) as info:  # a tool result must say which call it answers
        client.chat.completions.create(model=MODEL, messages=[*ASK, {"role": "tool", "content": "21"}], max_tokens=4)
    assert info.value.body["param"] == "messages[1].tool_call_id"


def test_streamed_tool_call_deltas_reassemble_to_the_same_call(client):
    kwargs = dict(model=MODEL, messages=ASK, tools=[WEATHER, CLOCK], tool_choice="required", temperature=0.9, seed=3,
                  max_tokens=100)
    whole = client.chat.completions.create(**kwargs).choices[0].message.tool_calls[0]
    chunks = list(client.chat.completions.create(**kwargs, stream=True))
    deltas = [d for c in chunks if c.choices for d in (c.choices[0].delta.tool_calls or [])]
    assert deltas[0].id.startswith("call_") and deltas[0].function.name == whole.function.name
    assert deltas[0].function.arguments == ""
    assert len(deltas) > 2  # the arguments arrive in fragments
    assert all(d.index == 0 and d.id is None for d in deltas[1:])
    arguments = "".join(d.function.arguments or "" for d in deltas)
    assert arguments == whole.function.arguments
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    _check_call(whole)


# ----------------------------------------------------------------------------- langchain-openai


def _chat_model(gateway, **kwargs):
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(model=MODEL, base_url=f"http://{gateway.http_url}/v1", api_key="unused", temperature=0,
                      max_tokens=400, max_retries=0, timeout=60, **kwargs)


def _closing_bias(gateway) -> dict[int, int]:
    """logit_bias toward '"' and '}': the random model, greedy, never ends a free-form string on its
    own (a json_object key, an unbounded string argument); with these the document closes at once."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(gateway.repository / MODEL / "1" / "tokenizer.json"))
    return {tok.token_to_id('"'): 30, tok.token_to_id("}"): 30}


def test_langchain_with_structured_output_json_schema_and_json_mode(gateway):
    from pydantic import BaseModel, Field

    class Person(BaseModel):
        name: str = Field(max_length=10)
        age: int = Field(ge=0, le=120)

    person = _chat_model(gateway).with_structured_output(Person, method="json_schema").invoke("Describe someone.")
    assert isinstance(person, Person) and 0 <= person.age <= 120
    # json_mode: response_format json_object; langchain parses whatever object comes back.
    llm = _chat_model(gateway, logit_bias=_closing_bias(gateway))
    doc = llm.with_structured_output(None, method="json_mode").invoke("Answer in JSON: who are you?")
    assert isinstance(doc, dict)


def test_langchain_tool_calling_loop(gateway):
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_core.tools import tool

    @tool
    def get_weather(city: str) -> str:
        """The current weather in a city."""
        return f"21 degrees in {city}"

    forced = _chat_model(gateway, logit_bias=_closing_bias(gateway)).bind_tools([get_weather], tool_choice="get_weather")
    messages = [HumanMessage("What is the weather in Paris?")]
    first = forced.invoke(messages)
    (call,) = first.tool_calls
    assert call["name"] == "get_weather" and isinstance(call["args"]["city"], str) and call["id"].startswith("call_")
    messages += [first, ToolMessage(get_weather.invoke(call["args"]), tool_call_id=call["id"])]
    second = _chat_model(gateway).bind_tools([get_weather]).invoke(messages)
    assert isinstance(second.content, str)
    assert second.response_metadata["finish_reason"] in ("stop", "length", "tool_calls")
    # The call and its result went back through the chat template: the prompt grew.
    assert second.usage_metadata["input_tokens"] > first.usage_metadata["input_tokens"]
