"""/v1/completions and /v1/chat/completions against a real daemon, with the official
`openai` client (sync and async), on the tiny random decoder (examples/tiny_llm.py)."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import urllib.request

import openai
import pytest
import tiny_llm
from daemons import LONG_CONTEXT, Gateway, endless_stream, launch
from prometheus_client.parser import text_string_to_metric_families

from gateway.text.tokenizer import TextTokenizer

MODEL = "tiny-gpt"
SMALL = "tiny-one"  # one sequence at a time, no waiting room, a long context: the 429 path, hang-ups
YAML = """max_batch_size: 0
generation:
  context_length: 256
  default_max_tokens: 16
  max_sequences: 16
"""
SMALL_YAML = f"""max_batch_size: 0
generation:
  context_length: {LONG_CONTEXT}
  max_sequences: 1
  max_waiting_sequences: 0
"""


@pytest.fixture(scope="module")
def gateway(tiny_llm_model, long_tiny_llm_model, tmp_path_factory):
    import make_models

    root = tmp_path_factory.mktemp("gen") / "models"
    make_models.write_repository(str(root), ["mlp"])
    for name, src, yaml in ((MODEL, tiny_llm_model, YAML), (SMALL, long_tiny_llm_model, SMALL_YAML)):
        shutil.copytree(src, root / name)
        (root / name / "model.yaml").write_text(yaml)
    gw = launch(root)
    yield gw
    gw.terminate()


@pytest.fixture(scope="module")
def tokenizer(tiny_llm_model) -> TextTokenizer:
    return TextTokenizer.from_dir(str(tiny_llm_model / "1"))


@pytest.fixture
def client(gateway):
    return openai.OpenAI(base_url=f"http://{gateway.http_url}/v1", api_key="unused", max_retries=0, timeout=60)


def async_client(gateway) -> openai.AsyncOpenAI:
    """Made inside each asyncio.run: its connection pool belongs to that loop."""
    return openai.AsyncOpenAI(base_url=f"http://{gateway.http_url}/v1", api_key="unused", max_retries=0, timeout=60)


def reference(model_dir, tokenizer, ids, n):
    return tiny_llm.reference_greedy(model_dir / "1", ids, n, tuple(tokenizer.eos_token_ids))


def chat_ids(tokenizer, messages):
    return tokenizer.encode(tokenizer.chat_template.render(messages), add_special_tokens=False)


def metric(gw: Gateway, name: str, model: str = MODEL, **labels) -> float:
    with urllib.request.urlopen(f"http://{gw.http_url}/metrics", timeout=30) as resp:
        text = resp.read().decode()
    total = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels.get("model") == model and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


# ------------------------------------------------------------------------------- completions


def test_completion_greedy_equals_the_reference_token_for_token(client, tokenizer, tiny_llm_model):
    prompt = "Once upon a time"
    resp = client.completions.create(model=MODEL, prompt=prompt, max_tokens=20, temperature=0, logprobs=0)
    want = reference(tiny_llm_model, tokenizer, tokenizer.encode(prompt), 20)
    choice = resp.choices[0]
    assert resp.object == "text_completion" and resp.model == MODEL
    assert choice.logprobs.tokens == [tokenizer.token_text(t) for t in want]
    assert choice.finish_reason == ("length" if len(want) == 20 else "stop")
    assert resp.usage.prompt_tokens == len(tokenizer.encode(prompt))
    assert resp.usage.completion_tokens == 20
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + 20


def test_completion_from_token_ids(client, tokenizer, tiny_llm_model):
    ids = tokenizer.encode("The weather today")
    resp = client.completions.create(model=MODEL, prompt=ids, max_tokens=8, temperature=0, logprobs=2)
    want = reference(tiny_llm_model, tokenizer, ids, 8)
    lp = resp.choices[0].logprobs
    assert lp.tokens == [tokenizer.token_text(t) for t in want]
    assert all(len(top) == 2 for top in lp.top_logprobs)
    assert all(v <= 0 for v in lp.token_logprobs)


def test_concurrent_greedy_requests_each_equal_the_reference(tokenizer, tiny_llm_model, gateway):
    prompts = [f"{w} is a" for w in ("Python", "cache", "town", "robot", "model", "story", "sea", "fox")]
    before = metric(gateway, "gateway_generation_multi_sequence_steps_total")

    async def run():
        aclient = async_client(gateway)
        return await asyncio.gather(*[
            aclient.completions.create(model=MODEL, prompt=p, max_tokens=24, temperature=0, logprobs=0) for p in prompts
        ])

    for prompt, resp in zip(prompts, asyncio.run(run())):
        want = reference(tiny_llm_model, tokenizer, tokenizer.encode(prompt), 24)
        assert resp.choices[0].logprobs.tokens == [tokenizer.token_text(t) for t in want], prompt
    assert metric(gateway, "gateway_generation_multi_sequence_steps_total") > before


def test_stop_string_across_tokens_ends_with_finish_reason_stop(client):
    full = client.completions.create(model=MODEL, prompt="Hello", max_tokens=30, temperature=0).choices[0].text
    assert len(full) > 12
    stop = full[5:9]
    resp = client.completions.create(model=MODEL, prompt="Hello", max_tokens=30, temperature=0, stop=[stop, "\u2603never"])
    assert resp.choices[0].finish_reason == "stop"
    assert resp.choices[0].text == full[: full.index(stop)]


def test_streamed_completion_with_usage(client):
    chunks = list(client.completions.create(
        model=MODEL, prompt="Tell me", max_tokens=10, temperature=0, stream=True, stream_options={"include_usage": True},
    ))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    unstreamed = client.completions.create(model=MODEL, prompt="Tell me", max_tokens=10, temperature=0)
    assert text == unstreamed.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 10
    assert all(c.usage is None for c in chunks[:-1])


# ------------------------------------------------------------------------------- chat


def test_chat_greedy_equals_the_reference_and_usage_matches_the_template(client, tokenizer, tiny_llm_model):
    messages = [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "Hello!"}]
    resp = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=12, temperature=0, logprobs=True,
                                          top_logprobs=3)
    ids = chat_ids(tokenizer, messages)
    want = reference(tiny_llm_model, tokenizer, ids, 12)
    choice = resp.choices[0]
    assert resp.object == "chat.completion" and choice.message.role == "assistant"
    assert [c.token for c in choice.logprobs.content] == [tokenizer.token_text(t) for t in want]
    assert all(len(c.top_logprobs) == 3 and bytes(c.bytes) == tokenizer.token_bytes(t)
               for c, t in zip(choice.logprobs.content, want))
    assert resp.usage.prompt_tokens == len(ids)
    assert resp.usage.completion_tokens == len(want) + (choice.finish_reason == "stop")


def test_chat_stream_sync_client(client):
    messages = [{"role": "user", "content": "Tell me a story"}]
    stream = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=9, temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    whole = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=9, temperature=0)
    assert content == whole.choices[0].message.content
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == ["length"]
    assert chunks[-1].usage.completion_tokens == 9 and chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens


def test_n_choices_and_seed_are_repeatable(client):
    kwargs = dict(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=8, temperature=1.0, top_p=0.95,
                  n=3, seed=1234)
    a = client.chat.completions.create(**kwargs)
    b = client.chat.completions.create(**kwargs)
    assert [c.index for c in a.choices] == [0, 1, 2]
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]
    assert len({c.message.content for c in a.choices}) > 1  # each choice samples on its own
    assert 3 <= a.usage.completion_tokens <= 24


def test_many_concurrent_streams_finish_and_share_steps(gateway):
    before = metric(gateway, "gateway_generation_multi_sequence_steps_total")

    async def one(aclient, i):
        stream = await aclient.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": f"story number {i}"}], max_tokens=20, temperature=0,
            stream=True)
        reasons = [c.choices[0].finish_reason async for c in stream if c.choices and c.choices[0].finish_reason]
        return reasons

    async def run():
        aclient = async_client(gateway)
        return await asyncio.wait_for(asyncio.gather(*[one(aclient, i) for i in range(24)]), 120)

    results = asyncio.run(run())
    assert all(r in (["length"], ["stop"]) for r in results)
    assert metric(gateway, "gateway_generation_multi_sequence_steps_total") > before
    buckets = metric(gateway, "gateway_generation_step_sequences_count")
    single = metric(gateway, "gateway_generation_step_sequences_bucket", le="1.0")
    assert buckets > single  # some steps ran more than one sequence in one call


def test_a_disconnected_stream_is_freed(gateway, long_tiny_llm_model):
    # Thousands of tokens: still decoding when the client goes, however fast the engine.
    body = json.dumps({"model": SMALL, "prompt": "Hello", **endless_stream(long_tiny_llm_model)}).encode()
    host, port = gateway.http_url.split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        seen = b""
        while b"data: " not in seen:  # headers first, then the first chunk (socket timeout bounds it)
            got = sock.recv(65536)
            assert got, "the server closed the stream early"
            seen += got
        gateway.wait_until(lambda: metric(gateway, "gateway_generation_active_sequences", model=SMALL) >= 1,
                           what="a running sequence")
    gateway.wait_until(lambda: metric(gateway, "gateway_generation_active_sequences", model=SMALL) == 0, timeout=30,
                       what="the disconnected stream's sequence to leave the batch")
    assert metric(gateway, "gateway_generation_sequences_total", model=SMALL, reason="cancelled") >= 1


# ------------------------------------------------------------------------------- errors


def _error(exc_info) -> dict:
    return exc_info.value.body


def test_wrong_type_is_a_400_naming_the_param(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=MODEL, prompt="hi", extra_body={"temperature": "hot"})
    assert info.value.status_code == 400 and _error(info)["param"] == "temperature"
    assert _error(info)["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": 5}])
    assert _error(info)["param"] == "messages[0].content"
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=[])
    assert _error(info)["param"] == "messages"


def test_unknown_fields_are_ignored_but_unsupported_ones_refused(client):
    ok = client.completions.create(model=MODEL, prompt="hi", max_tokens=2, extra_body={"some_future_field": 1})
    assert ok.choices[0].finish_reason in ("length", "stop")
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                       functions=[{"name": "f"}])  # the deprecated form of tools
    assert _error(info)["param"] == "functions"
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=MODEL, prompt="hi", suffix="!")
    assert _error(info)["param"] == "suffix"


def test_unknown_model_is_404_and_tensor_model_400(client):
    with pytest.raises(openai.NotFoundError) as info:
        client.completions.create(model="no-such-model", prompt="hi")
    assert _error(info)["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model="mlp", prompt="hi")
    assert _error(info)["param"] == "model"


def test_context_too_long_is_400_before_the_stream_starts(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=MODEL, prompt="hi " * 300, max_tokens=5, stream=True)
    err = _error(info)
    assert err["code"] == "context_length_exceeded" and "256" in err["message"]
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_completion_tokens=1000)
    assert _error(info)["param"] == "max_tokens" and "1000" in _error(info)["message"]


def test_over_capacity_is_429_rate_limit_error(client, gateway, long_tiny_llm_model):
    endless = endless_stream(long_tiny_llm_model)  # still decoding while the second request is refused
    first = client.completions.create(model=SMALL, prompt="Hello", max_tokens=endless["max_tokens"], temperature=0, stream=True,
                                      logit_bias=endless["logit_bias"])
    try:
        next(iter(first))
        with pytest.raises(openai.RateLimitError) as info:
            client.completions.create(model=SMALL, prompt="Hello", max_tokens=2)
        assert info.value.status_code == 429 and _error(info)["type"] == "rate_limit_error"
        assert "max_sequences 1" in _error(info)["message"]
    finally:
        first.close()
    gateway.wait_until(lambda: metric(gateway, "gateway_generation_active_sequences", model=SMALL) == 0,
                       what="the first stream to be freed")
    assert client.completions.create(model=SMALL, prompt="Hello", max_tokens=2).usage.completion_tokens >= 1


# ------------------------------------------------------------------------------- sampling controls


def _tokens(choice) -> list[str]:
    return choice.logprobs.tokens


def _first_plain_token(tokenizer, avoid) -> int:
    """A token that is not an end-of-sequence token nor in ``avoid``, whose text is plain ASCII."""
    for t in range(tokenizer.vocab_size):
        text = tokenizer.token_text(t)
        if t not in tokenizer.eos_token_ids and t not in avoid and text.isascii() and text.strip().isalpha():
            return t
    raise AssertionError("no plain token in the vocabulary")


def test_logit_bias_plus_100_forces_its_token_every_step(client, tokenizer):
    greedy = client.completions.create(model=MODEL, prompt="Once upon", max_tokens=12, temperature=0, logprobs=0)
    forced = _first_plain_token(tokenizer, set(tokenizer.encode("".join(_tokens(greedy.choices[0])))))
    resp = client.completions.create(model=MODEL, prompt="Once upon", max_tokens=12, temperature=0, logprobs=0,
                                     logit_bias={str(forced): 100})
    assert _tokens(resp.choices[0]) == [tokenizer.token_text(forced)] * 12
    # Sampling at temperature 1 is forced too: +100 leaves every other token ~e^-100 behind.
    sampled = client.completions.create(model=MODEL, prompt="Once upon", max_tokens=6, temperature=1.0, seed=3,
                                        logprobs=0, logit_bias={str(forced): 100})
    assert _tokens(sampled.choices[0]) == [tokenizer.token_text(forced)] * 6
    chat = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=5,
                                          temperature=0, logprobs=True, logit_bias={str(forced): 100})
    assert [c.token for c in chat.choices[0].logprobs.content] == [tokenizer.token_text(forced)] * 5


def test_logit_bias_minus_100_bans_the_greedy_token(client, tokenizer, tiny_llm_model):
    prompt = "The weather today"
    want = reference(tiny_llm_model, tokenizer, tokenizer.encode(prompt), 10)
    banned = want[0]
    resp = client.completions.create(model=MODEL, prompt=prompt, max_tokens=10, temperature=0, logprobs=0,
                                     logit_bias={str(banned): -100})
    tokens = _tokens(resp.choices[0])
    assert tokens[0] != tokenizer.token_text(banned)
    assert tokenizer.token_text(banned) not in tokens
    assert tokens != [tokenizer.token_text(t) for t in want]


def test_frequency_penalty_reduces_repetition_of_a_greedy_run(client, tokenizer):
    prompt = "a b c"
    kwargs = dict(model=MODEL, prompt=prompt, max_tokens=48, temperature=0, logprobs=0)
    plain = _tokens(client.completions.create(**kwargs).choices[0])
    penalised = _tokens(client.completions.create(**kwargs, frequency_penalty=2.0).choices[0])
    presence = _tokens(client.completions.create(**kwargs, presence_penalty=2.0).choices[0])
    repetition = _tokens(client.completions.create(**kwargs, extra_body={"repetition_penalty": 3.0}).choices[0])

    def repeats(tokens):
        return len(tokens) - len(set(tokens))

    assert repeats(plain) > 0, plain
    assert repeats(penalised) < repeats(plain)
    assert repeats(presence) < repeats(plain)
    assert repeats(repetition) < repeats(plain)
    # The same request without a penalty is still the plain greedy run (penalties leave no trace).
    assert _tokens(client.completions.create(**kwargs, frequency_penalty=0).choices[0]) == plain


def test_min_p_one_is_greedy(client):
    greedy = client.completions.create(model=MODEL, prompt="Hello", max_tokens=10, temperature=0).choices[0].text
    kept = client.completions.create(model=MODEL, prompt="Hello", max_tokens=10, temperature=1.5, seed=9,
                                     extra_body={"min_p": 1.0}).choices[0].text
    assert kept == greedy


def test_echo_prepends_the_prompt(client, tokenizer):
    prompt = "Once upon a time"
    plain = client.completions.create(model=MODEL, prompt=prompt, max_tokens=8, temperature=0)
    echoed = client.completions.create(model=MODEL, prompt=prompt, max_tokens=8, temperature=0, echo=True, n=2)
    assert [c.text for c in echoed.choices] == [prompt + plain.choices[0].text] * 2
    assert echoed.usage == plain.usage.model_copy(update={
        "completion_tokens": 16, "total_tokens": plain.usage.prompt_tokens + 16})
    ids = tokenizer.encode(prompt)
    from_ids = client.completions.create(model=MODEL, prompt=ids, max_tokens=8, temperature=0, echo=True)
    assert from_ids.choices[0].text == tokenizer.decode(ids, skip_special_tokens=False) + plain.choices[0].text
    chunks = [c for c in client.completions.create(model=MODEL, prompt=prompt, max_tokens=8, temperature=0, echo=True,
                                                   stream=True) if c.choices]
    assert chunks[0].choices[0].text.startswith(prompt)
    assert "".join(c.choices[0].text for c in chunks) == prompt + plain.choices[0].text


def test_echo_with_logprobs_is_a_400_naming_both(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=MODEL, prompt="hi", max_tokens=2, echo=True, logprobs=1)
    assert _error(info)["param"] == "echo" and "logprobs" in _error(info)["message"]


def test_several_prompts_are_choices_in_prompt_order(client, tokenizer, gateway):
    prompts = ["Python is", "The quick brown fox jumps", "Hello"]
    alone = [client.completions.create(model=MODEL, prompt=p, max_tokens=10, temperature=0) for p in prompts]
    before = metric(gateway, "gateway_generation_multi_sequence_steps_total")
    resp = client.completions.create(model=MODEL, prompt=prompts, max_tokens=10, temperature=0)
    assert [c.index for c in resp.choices] == [0, 1, 2]
    assert [c.text for c in resp.choices] == [a.choices[0].text for a in alone]
    assert resp.usage.prompt_tokens == sum(a.usage.prompt_tokens for a in alone)
    assert resp.usage.completion_tokens == sum(a.usage.completion_tokens for a in alone)
    assert metric(gateway, "gateway_generation_multi_sequence_steps_total") > before  # they ran batched
    # Token-id prompts, n per prompt: index = prompt * n + i.
    ids = [tokenizer.encode(p) for p in prompts[:2]]
    two = client.completions.create(model=MODEL, prompt=ids, max_tokens=10, temperature=0, n=2, echo=True)
    assert [c.index for c in two.choices] == [0, 1, 2, 3]
    assert [c.text for c in two.choices] == [
        tokenizer.decode(ids[p], skip_special_tokens=False) + alone[p].choices[0].text for p in (0, 0, 1, 1)]


def test_several_prompts_stream_interleaved_with_their_indexes(client):
    prompts = ["Python is", "The quick brown fox jumps", "Hello"]
    alone = [client.completions.create(model=MODEL, prompt=p, max_tokens=10, temperature=0).choices[0].text
             for p in prompts]
    chunks = list(client.completions.create(model=MODEL, prompt=prompts, max_tokens=10, temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    texts = {i: "" for i in range(3)}
    order = []
    for c in chunks:
        for choice in c.choices:
            texts[choice.index] += choice.text
            order.append(choice.index)
    assert [texts[i] for i in range(3)] == alone
    assert order != sorted(order)  # interleaved as the engine made them, not prompt after prompt
    assert chunks[-1].usage.completion_tokens == 30


@pytest.mark.parametrize(("field", "value"), [
    ("presence_penalty", 2.5), ("frequency_penalty", -2.01), ("repetition_penalty", 0), ("min_p", 1.5),
    ("logit_bias", {"5": 101}), ("logit_bias", {"five": 1}), ("logit_bias", {"99999999": 1}),
    ("logit_bias", {"5": 1, "05": 2}), ("prompt", []), ("prompt", ["a", []]),
])
def test_out_of_range_sampling_fields_are_400s_naming_the_field(client, field, value):
    args = {"prompt": value} if field == "prompt" else {"prompt": "hi", "extra_body": {field: value}}
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=MODEL, max_tokens=2, **args)
    assert _error(info)["param"] == field, _error(info)
    if field != "prompt":
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2,
                                           extra_body={field: value})
        assert _error(info)["param"] == field, _error(info)


def test_several_prompts_over_capacity_are_one_429_and_free_what_was_admitted(client, gateway):
    # tiny-one runs one sequence with no waiting room: the second prompt cannot be admitted.
    with pytest.raises(openai.RateLimitError) as info:
        client.completions.create(model=SMALL, prompt=["Hello", "World"], max_tokens=50)
    assert info.value.status_code == 429
    gateway.wait_until(lambda: metric(gateway, "gateway_generation_active_sequences", model=SMALL) == 0
                       and metric(gateway, "gateway_generation_waiting_sequences", model=SMALL) == 0,
                       what="the first prompt's sequence to be freed")
    assert client.completions.create(model=SMALL, prompt=["Hello"], max_tokens=2).usage.completion_tokens >= 1
