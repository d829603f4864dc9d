"""The /v1 protocol edges, with the official ``openai`` client and raw HTTP: what /v1/models says each
model can do, explicit nulls read as "not given", and every /v1 error in OpenAI's envelope
(unknown route, wrong method, unreadable body), never aiohttp's or the v2 shape."""

from __future__ import annotations

import json
import shutil

import httpx
import openai
import pytest

import make_models
from daemons import launch

MODEL = "tiny-gpt"
MAX_BODY = 64 * 1024


@pytest.fixture(scope="module")
def gw(tiny_llm_model, tmp_path_factory):
    import embedding_model

    root = tmp_path_factory.mktemp("v1proto") / "models"
    make_models.write_repository(str(root), ["mlp"])
    shutil.copytree(tiny_llm_model, root / MODEL)
    embedding_model.write_minilm(root)
    g = launch(root, "--max-request-bytes", str(MAX_BODY))
    yield g
    g.terminate()


@pytest.fixture
def client(gw):
    return openai.OpenAI(base_url=f"http://{gw.http_url}/v1", api_key="unused", max_retries=0, timeout=60)


def assert_envelope(status_and_body, status: int, words: str = "") -> dict:
    got_status, raw = status_and_body
    assert got_status == status, raw
    doc = json.loads(raw)
    err = doc["error"]
    assert isinstance(err, dict) and set(err) == {"message", "type", "param", "code"}, doc
    assert isinstance(err["message"], str) and words in err["message"], doc
    return err


def raw(gw, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    status, _, data = gw.http(method, path, body, headers)
    return status, data


# -- /v1/models --------------------------------------------------------------------------


def test_models_say_what_each_model_can_do(client):
    cards = {m.id: m for m in client.models.list().data}
    assert list(cards) == ["minilm", MODEL]  # the embedding model sorts first
    assert cards[MODEL].capabilities == ["chat.completions", "completions"]
    assert cards["minilm"].capabilities == ["embeddings"]
    gen = client.models.retrieve(MODEL)
    assert (gen.object, gen.owned_by, gen.root, gen.parent) == ("model", "gateway", MODEL, None)
    assert gen.max_model_len == 2048 or gen.max_model_len > 0


# -- explicit nulls ----------------------------------------------------------------------

NULL_CHAT_FIELDS = ("n", "stream", "logprobs", "top_logprobs", "temperature", "top_p", "top_k", "max_tokens",
                    "max_completion_tokens", "stop", "user", "seed", "stream_options", "presence_penalty",
                    "frequency_penalty", "cache", "tools", "tool_choice", "response_format", "logit_bias",
                    "repetition_penalty", "min_p")
NULL_COMPLETION_FIELDS = ("n", "stream", "logprobs", "echo", "suffix", "best_of", "temperature", "top_p", "top_k",
                          "max_tokens", "stop", "user", "seed", "stream_options", "presence_penalty",
                          "frequency_penalty", "logit_bias", "repetition_penalty", "min_p", "cache")


def test_every_optional_chat_field_null_is_its_default_raw_json(gw):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi", "name": None}], "max_tokens": 3}
    body.update({f: None for f in NULL_CHAT_FIELDS if f != "max_tokens"})
    status, doc = gw.http_json("POST", "/v1/chat/completions", body)
    assert status == 200, doc
    assert doc["object"] == "chat.completion" and len(doc["choices"]) == 1 and doc["choices"][0]["logprobs"] is None
    body["max_tokens"] = None  # the model's default_max_tokens
    status, doc = gw.http_json("POST", "/v1/chat/completions", body)
    assert status == 200 and doc["usage"]["completion_tokens"] >= 1, doc


def test_every_optional_completion_field_null_is_its_default_raw_json(gw):
    body = {"model": MODEL, "prompt": "hello", **{f: None for f in NULL_COMPLETION_FIELDS}}
    body["max_tokens"] = 2
    status, doc = gw.http_json("POST", "/v1/completions", body)
    assert status == 200 and doc["object"] == "text_completion" and len(doc["choices"]) == 1, doc


def test_null_stream_options_field_inside_a_stream(gw):
    body = {"model": MODEL, "prompt": "hello", "max_tokens": 2, "stream": True, "stream_options": {"include_usage": None}}
    status, _, data = gw.http("POST", "/v1/completions", json.dumps(body).encode(), {"Content-Type": "application/json"})
    assert status == 200 and data.rstrip().endswith(b"data: [DONE]")
    events = [json.loads(e[6:]) for e in data.decode().split("\n\n") if e.startswith("data: {")]
    assert all(e.get("usage") is None for e in events)  # include_usage null = false


def test_nulls_sent_by_the_openai_client(client):
    # The SDK forwards an explicit None as JSON null (unlike its NOT_GIVEN default).
    chat = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=3,
        temperature=None, top_p=None, n=None, stop=None, user=None, seed=None, logprobs=None, top_logprobs=None,
        stream_options=None, presence_penalty=None, frequency_penalty=None, response_format=None, tools=None,
        logit_bias=None, extra_body={"top_k": None, "cache": None, "repetition_penalty": None, "min_p": None},
    )
    assert chat.choices[0].message.role == "assistant" and chat.usage.completion_tokens >= 1
    text = client.completions.create(model=MODEL, prompt="hi", max_tokens=2, echo=None, logprobs=None, suffix=None,
                                     best_of=None, n=None, temperature=None, stop=None, seed=None, logit_bias=None,
                                     presence_penalty=None, frequency_penalty=None)
    assert len(text.choices) == 1
    emb = client.embeddings.create(model="minilm", input="hello", extra_body={"dimensions": None, "user": None})
    assert len(emb.data[0].embedding) == 384


def test_a_required_field_null_is_still_a_400_naming_it(client):
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model=MODEL, messages=None)
    assert exc.value.body["param"] == "messages"


# -- every /v1 error in the envelope -----------------------------------------------------


def test_unknown_v1_route_is_a_404_envelope(gw, client):
    err = assert_envelope(raw(gw, "GET", "/v1/nope"), 404, "GET /v1/nope")
    assert err["type"] == "invalid_request_error"
    assert_envelope(raw(gw, "POST", "/v1/chat/completion", b"{}"), 404, "/v1/chat/completion")
    assert_envelope(raw(gw, "GET", "/v1"), 404)
    with pytest.raises(openai.NotFoundError) as exc:  # the SDK reads the envelope's message
        client.get("/nope", cast_to=httpx.Response)
    assert "/v1/nope" in str(exc.value) and exc.value.body["type"] == "invalid_request_error"


def test_wrong_method_is_a_405_envelope_with_allow(gw, client):
    status, headers, data = gw.http("GET", "/v1/chat/completions")
    assert_envelope((status, data), 405, "POST")
    assert headers["Allow"] == "POST"
    assert_envelope(raw(gw, "DELETE", "/v1/models"), 405, "GET")
    with pytest.raises(openai.APIStatusError) as exc:
        client.get("/completions", cast_to=httpx.Response)
    assert exc.value.status_code == 405 and exc.value.body["code"] == "method_not_allowed"


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"])
def test_unreadable_bodies_are_envelopes(gw, path):
    assert_envelope(raw(gw, "POST", path, b"{not json", {"Content-Type": "application/json"}), 400, "not valid JSON")
    assert_envelope(raw(gw, "POST", path, b"", {"Content-Type": "application/json"}), 400)
    assert_envelope(raw(gw, "POST", path, b"[1, 2]", {"Content-Type": "application/json"}), 400, "JSON object")
    assert_envelope(raw(gw, "POST", path, b"\xff\xfe{}", {"Content-Type": "application/json"}), 400)
    big = json.dumps({"model": MODEL, "prompt": "x" * MAX_BODY}).encode()
    err = assert_envelope(raw(gw, "POST", path, big, {"Content-Type": "application/json"}), 413)
    assert err["type"] == "invalid_request_error"


def test_v2_errors_keep_their_own_shape(gw):
    status, _, data = gw.http("GET", "/v2/nope")
    assert status == 404 and isinstance(json.loads(data)["error"], str)
