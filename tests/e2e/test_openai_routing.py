"""Traffic routing on the /v1 routes, with the official ``openai`` client: a canary split sticky by
``user`` or X-Route-Key, shadow generations and embeddings compared off the response path, and the
fallback answering when the routed version fails before its first token."""

from __future__ import annotations

import json
import shutil
import time
import urllib.request

import openai
import pytest

import tiny_llm
from daemons import launch

GEN = (
    "max_batch_size: 0\nversion_policy: {all: true}\n"
    f"generation:\n  context_length: {tiny_llm.MAX_POSITIONS}\n  default_max_tokens: 16\n  max_sequences: 8\n"
)
ALL = "version_policy: {all: true}\n"
PROMPT = [{"role": "user", "content": "Tell me about the sea"}]
WAIT_S = 30


@pytest.fixture(scope="module")
def gw(tmp_path_factory, minilm_model):
    root = tmp_path_factory.mktemp("openai-routing") / "models"
    # The embedding model twice over (versions 1 and 2 alike): a canary and a shadow.
    minilm_yaml = (minilm_model / "model.yaml").read_text() + ALL
    for name, routing in (("minilm-canary", "routing:\n  weights: {1: 50, 2: 50}\n"),
                          ("minilm-shadowed", "routing:\n  weights: {1: 1}\n  shadows: [{version: 2}]\n")):
        for version in ("1", "2"):
            shutil.copytree(minilm_model / "1", root / name / version, symlinks=True)
        (root / name / "model.yaml").write_text(minilm_yaml + routing)
    # A canary between two different models (seeds 0 and 1), sticky by key.
    for version, seed in ((1, 0), (2, 1)):
        tiny_llm.write_tiny_llm(root, "canary", GEN + "routing:\n  weights: {1: 50, 2: 50}\n", version=version, seed=seed)
    # Version 1 answers; version 2 (the same weights) shadows every request: they must agree exactly.
    for version in (1, 2):
        tiny_llm.write_tiny_llm(root, "shadowed", GEN + "routing:\n  weights: {1: 1}\n  shadows: [{version: 2}]\n",
                                version=version, seed=0)
    # Version 2's position table holds 2 positions: every real prompt fails in its first step.
    for version in (1, 2):
        tiny_llm.write_tiny_llm(root, "fallback", GEN + "routing:\n  weights: {2: 1}\n  fallback: 1\n", version=version)
    tiny_llm.build_decoder(root / "fallback" / "2", max_positions=2)
    g = launch(root)
    yield g
    g.terminate()


@pytest.fixture(scope="module")
def client(gw):
    return openai.OpenAI(base_url=f"http://{gw.http_url}/v1", api_key="unused", max_retries=0, timeout=60)


def _chat(client, model: str, **kw) -> tuple[str, str]:
    """(answering version, text) of one greedy chat completion."""
    raw = client.chat.completions.with_raw_response.create(model=model, messages=PROMPT, temperature=0, max_tokens=8, **kw)
    return raw.headers["x-model-version"], raw.parse().choices[0].message.content


def _wait_compared(gw, model: str, count: int) -> dict:
    deadline = time.monotonic() + WAIT_S
    while True:  # the shadows run after each live answer: poll their counters, bounded
        pair = next((p for p in _routing(gw, model)["shadows"] if p["version"] == "2"), None)
        if pair is not None and pair["compared"] >= count or time.monotonic() > deadline:
            return pair
        time.sleep(0.05)


def _routing(gw, model: str) -> dict:
    with urllib.request.urlopen(f"http://{gw.http_url}/v2/models/{model}/routing", timeout=10) as resp:
        return json.loads(resp.read())


def test_the_canary_split_is_sticky_by_user_and_by_route_key(client):
    by_user = {f"user-{i}": _chat(client, "canary", user=f"user-{i}")[0] for i in range(24)}
    assert set(by_user.values()) == {"1", "2"}, by_user  # 24 keys at 50/50: both versions answer
    for user, version in list(by_user.items())[:8]:
        assert _chat(client, "canary", user=user)[0] == version  # the same user, the same version
    keyed = _chat(client, "canary", user="someone", extra_headers={"X-Route-Key": "key-7"})[0]
    for _ in range(4):
        assert _chat(client, "canary", extra_headers={"X-Route-Key": "key-7"})[0] == keyed


def test_versions_answer_differently_and_the_split_is_counted(gw, client):
    texts = {}
    for i in range(16):
        version, text = _chat(client, "canary", user=f"probe-{i}")
        texts.setdefault(version, set()).add(text)
    assert texts.get("1") and texts.get("2") and texts["1"].isdisjoint(texts["2"]), texts
    status = _routing(gw, "canary")["versions"]
    assert status["1"]["routed"] >= 1 and status["2"]["routed"] >= 1
    assert status["1"]["succeeded"] + status["2"]["succeeded"] >= 16


def test_shadow_generations_are_compared_off_the_response_path(gw, client):
    for _ in range(5):
        version, text = _chat(client, "shadowed")
        assert version == "1" and text
    pair = _wait_compared(gw, "shadowed", 5)
    assert pair is not None and pair["compared"] >= 5 and pair["failed"] == 0, pair
    # The same weights, greedy: the shadow's text and every token agree.
    assert pair["agreement_exact"] == 1.0 and pair["agreement_tokens"] == 1.0, pair


def test_the_fallback_answers_when_the_routed_version_fails_before_its_first_token(gw, client):
    version, text = _chat(client, "fallback")
    assert version == "1" and text
    stream = client.chat.completions.create(model="fallback", messages=PROMPT, temperature=0, max_tokens=4, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    status = _routing(gw, "fallback")["versions"]
    assert status["2"]["failed"] >= 2 and status["2"]["fell_back"] >= 2 and status["1"]["answered_as_fallback"] >= 2, status


def test_embeddings_follow_the_canary_and_their_shadows_are_compared(gw, client):
    versions = {}
    for i in range(16):
        raw = client.embeddings.with_raw_response.create(model="minilm-canary", input="hello there", user=f"u{i}")
        versions[f"u{i}"] = raw.headers["x-model-version"]
    assert set(versions.values()) == {"1", "2"}, versions
    again = client.embeddings.with_raw_response.create(model="minilm-canary", input="hi", user="u3")
    assert again.headers["x-model-version"] == versions["u3"]
    for text in ("one", "two", "three"):
        raw = client.embeddings.with_raw_response.create(model="minilm-shadowed", input=[text, "and more"])
        assert raw.headers["x-model-version"] == "1" and len(raw.parse().data) == 2
    pair = _wait_compared(gw, "minilm-shadowed", 3)
    assert pair is not None and pair["failed"] == 0, pair
    assert pair["agreement_exact"] == 1.0 and pair["mean_abs_diff"] == 0.0, pair  # the same model: equal vectors
