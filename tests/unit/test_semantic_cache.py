"""The semantic prompt cache: scope, guard, index, and the whole lookup/store
path with the real embedding model (and a real redis-server for sharing)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import redis as redis_sync

from gateway.cache.redis_store import RedisStore
from gateway.cache.semantic import SemanticCache, prompt_query
from gateway.cache.semantic.guard import conflict
from gateway.cache.semantic.index import VectorIndex
from gateway.core.model_config import SemanticCacheConfig
from semantic_pairs import PAIRS

CFG = SemanticCacheConfig(enabled=True)
GREEDY = {"temperature": 0.0, "max_tokens": 64}
S = 1_000_000_000


def chat(prompt: str, system: str = "You are helpful.", history: list[tuple[str, str]] = (), sampling=None, model="m", **kw):
    messages = [("system", system), *history, ("user", prompt)]
    return prompt_query(model, "1", messages, dict(GREEDY if sampling is None else sampling), **kw)


# ------------------------------------------------------------------ scope


def test_scope_covers_everything_but_the_last_user_turn():
    base = chat("What is the capital of France?")
    assert base.prompt == "What is the capital of France?" and base.cacheable
    assert chat("Something else entirely").scope == base.scope
    assert chat("What is the capital of France?", system="Answer in French.").scope != base.scope
    assert chat("What is the capital of France?", history=[("user", "hi"), ("assistant", "hello")]).scope != base.scope
    assert chat("What is the capital of France?", sampling={"temperature": 0.0, "max_tokens": 8}).scope != base.scope
    assert chat("What is the capital of France?", model="other").scope != base.scope
    assert prompt_query("m", "2", [("system", "You are helpful."), ("user", "x")], GREEDY).scope != base.scope


def test_scope_covers_the_prompt_format():
    """The same words as a chat turn and as a plain completion are different prompts to the model."""
    chat_format = prompt_query("m", "1", [("user", "x")], GREEDY, prompt_format="chat:<|user|>\ue000<|assistant|>")
    completion = prompt_query("m", "1", [("user", "x")], GREEDY, prompt_format="completion")
    assert chat_format.scope != completion.scope
    assert prompt_query("m", "1", [("user", "y")], GREEDY, prompt_format="completion").scope == completion.scope


def test_sampling_requests_bypass_unless_the_model_opts_in():
    assert not chat("q", sampling={"temperature": 0.7}).cacheable
    assert not chat("q", sampling={}).cacheable  # absent temperature is OpenAI's default, 1
    assert not chat("q", sampling={"temperature": 0, "n": 3}).cacheable
    assert chat("q", sampling={"temperature": 0.7}, allow_sampling=True).cacheable
    opted = chat("q", opt_out=True)
    assert not opted.cacheable and "opted out" in opted.reason
    with pytest.raises(ValueError):
        prompt_query("m", "1", [("system", "only a system prompt")], GREEDY)


# ------------------------------------------------------------------ guard


@pytest.mark.parametrize(
    "a, b, reason",
    [
        ("Why does my code work?", "Why doesn't my code work?", "negation"),
        ("What is the capital of France?", "What is not the capital of France?", "negation"),
        ("What is 15% of 200?", "What is 25% of 200?", "numbers"),
        ("When did World War I end?", "When did World War II end?", "numbers"),
        ("How do I convert Celsius to Fahrenheit?", "How do I convert Fahrenheit to Celsius?", "word order"),
        ("Is it safe to swim here?", "Is it unsafe to swim here?", "'safe' vs 'unsafe'"),
        ("How do I increase the volume?", "How do I decrease the volume?", "'increase' vs 'decrease'"),
    ],
)
def test_guard_refuses_words_that_flip_the_answer(a, b, reason):
    assert conflict(a, b) == reason


@pytest.mark.parametrize(
    "a, b",
    [
        ("what is the capital of france", "What is the capital of France?"),
        ("When did World War II end?", "In what year did the Second World War end?"),
        ("How do I undo the last git commit?", "How can I undo my last commit in git?"),
        ("I can't log in", "I cannot log in"),
    ],
)
def test_guard_lets_paraphrases_through(a, b):
    assert conflict(a, b) == ""


# ------------------------------------------------------------------ index


def unit(*xs):
    v = np.array(xs, dtype=np.float32)
    return v / np.linalg.norm(v)


def test_index_searches_only_its_scope_and_honours_ttl():
    index = VectorIndex(dim=2, max_entries=10)
    index.add(b"s1", "a", unit(1, 0), "A", expires_ns=10 * S, now_ns=0)
    index.add(b"s2", "b", unit(1, 0.1), "B", expires_ns=10 * S, now_ns=0)
    match = index.search(b"s1", unit(1, 0.05), now_ns=S)
    assert match.answer == "A" and match.similarity > 0.99
    assert index.search(b"s3", unit(1, 0), now_ns=S) is None
    assert index.search(b"s1", unit(1, 0), now_ns=10 * S) is None  # expired


def test_index_is_bounded_and_evicts_the_oldest():
    index = VectorIndex(dim=2, max_entries=2)
    for i, v in enumerate([unit(1, 0), unit(0, 1), unit(1, 1)]):
        index.add(b"s", str(i), v, i, expires_ns=100 * S, now_ns=0)
    assert len(index) == 2 and index.evictions == 1
    assert not index.contains(b"s", "0")
    assert index.search(b"s", unit(1, 0), 0).answer in (1, 2)
    # Removal swaps rows: the survivors still answer for their own vectors.
    assert index.search(b"s", unit(0, 1), 0).answer == 1
    assert index.search(b"s", unit(1, 1), 0).answer == 2


def test_index_replaces_an_entry_with_the_same_id():
    index = VectorIndex(dim=2, max_entries=5)
    index.add(b"s", "x", unit(1, 0), "old", 10 * S, 0)
    index.add(b"s", "x", unit(1, 0), "new", 10 * S, 0)
    assert len(index) == 1 and index.search(b"s", unit(1, 0), 0).answer == "new"


# ------------------------------------------------------------------ the cache, with the real model


def run(coro):
    return asyncio.run(coro)


def test_paraphrase_hits_and_what_must_miss_misses(embedder):
    async def main():
        cache = SemanticCache(embedder)
        q = chat("What is the capital of France?")
        miss = await cache.lookup(q, CFG)
        assert not miss.hit and miss.similarity is None
        assert await cache.store(q, CFG, miss, {"content": "Paris"})
        hit = await cache.lookup(chat("What's the capital city of France?"), CFG)
        assert hit.hit and hit.answer == {"content": "Paris"} and hit.similarity >= CFG.threshold
        negated = await cache.lookup(chat("What is not the capital of France?"), CFG)
        assert not negated.hit
        assert not (await cache.lookup(chat("How do I bake sourdough bread?"), CFG)).hit
        other_system = await cache.lookup(chat("What is the capital of France?", system="Answer in French."), CFG)
        assert not other_system.hit and other_system.similarity is None  # another scope: nothing to compare
        sampled = await cache.lookup(chat("What is the capital of France?", sampling={"temperature": 0.8}), CFG)
        assert not sampled.hit and "temperature" in sampled.skipped
        counters = cache.metrics.semantic_for("m")
        assert (counters.hits, counters.stores, counters.bypassed) == (1, 1, 1)
        assert counters.similarity.count == 1 and counters.embed_seconds.count == 5

    run(main())


def test_false_hit_rate_on_the_labelled_pairs(embedder):
    """Each pair in its own scope: store the first prompt, look up the second."""

    async def main():
        cache = SemanticCache(embedder)
        outcomes = []
        for i, (a, b, same) in enumerate(PAIRS):
            qa, qb = chat(a, model=f"pair{i}"), chat(b, model=f"pair{i}")
            await cache.store(qa, CFG, await cache.lookup(qa, CFG), {"content": a})
            outcomes.append(((await cache.lookup(qb, CFG)).hit, same))
        return outcomes

    outcomes = run(main())
    negatives = [hit for hit, same in outcomes if not same]
    positives = [hit for hit, same in outcomes if same]
    false_hit_rate = sum(negatives) / len(negatives)
    recall = sum(positives) / len(positives)
    print(f"threshold {CFG.threshold}: false-hit rate {sum(negatives)}/{len(negatives)} = {false_hit_rate:.1%}, "
          f"paraphrase hit rate {sum(positives)}/{len(positives)} = {recall:.1%}")
    assert false_hit_rate <= 0.05
    assert recall >= 0.5


def test_ttl_and_opt_in_for_sampling(embedder):
    async def main():
        clock = [0]
        cache = SemanticCache(embedder, clock_ns=lambda: clock[0])
        cfg = SemanticCacheConfig(enabled=True, ttl_s=10, allow_sampling=True)
        q = chat("How do I center a div in CSS?", sampling={"temperature": 0.7}, allow_sampling=True)
        await cache.store(q, cfg, await cache.lookup(q, cfg), "flexbox")
        clock[0] = 9 * S
        assert (await cache.lookup(q, cfg)).answer == "flexbox"
        clock[0] = 10 * S
        assert not (await cache.lookup(q, cfg)).hit

    run(main())


def test_disabled_model_is_never_looked_up(embedder):
    async def main():
        cache = SemanticCache(embedder)
        result = await cache.lookup(chat("anything"), SemanticCacheConfig())
        assert result.skipped and not await cache.store(chat("anything"), SemanticCacheConfig(), result, "x")
        assert cache.metrics.semantic_for("m").embed_seconds.count == 0

    run(main())


def test_replicas_share_entries_through_redis(embedder, redis_server):
    async def main():
        a = SemanticCache(embedder, RedisStore(redis_server.url, timeout_s=1.0))
        b = SemanticCache(embedder, RedisStore(redis_server.url, timeout_s=1.0))
        cfg = SemanticCacheConfig(enabled=True, ttl_s=60)
        q = chat("How do I undo the last git commit?")
        await a.store(q, cfg, await a.lookup(q, cfg), {"content": "git reset --soft HEAD~1"})
        hit = await b.lookup(chat("How can I undo my last commit in git?"), cfg)
        assert hit.hit and hit.answer == {"content": "git reset --soft HEAD~1"}
        assert len(b.index_for("m", cfg)) == 1  # pulled into B's local index
        again = await b.lookup(chat("How can I undo my last commit in git?"), cfg)
        assert again.hit
        await a.shared.close()
        await b.shared.close()

    run(main())
    admin = redis_sync.Redis.from_url(redis_server.url)
    (zkey,) = admin.keys("gw:s:m:1:????????????????????????????????")
    (entry,) = admin.keys("gw:s:m:1:*:*")
    assert 0 < admin.pttl(entry) <= 60_000 and 0 < admin.pttl(zkey) <= 60_000
    assert admin.zcard(zkey) == 1


def test_redis_down_leaves_the_local_index_answering(embedder, redis_server):
    async def main():
        cache = SemanticCache(embedder, RedisStore(redis_server.url, timeout_s=0.5))
        q = chat("What are the symptoms of dehydration?")
        await cache.store(q, CFG, await cache.lookup(q, CFG), "thirst")
        redis_server.stop()
        hit = await cache.lookup(chat("What symptoms does dehydration cause?"), CFG)
        assert hit.hit and hit.answer == "thirst"
        assert cache.metrics.semantic_for("m").errors >= 1
        await cache.shared.close()

    run(main())
