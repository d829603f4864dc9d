"""ResponseCache on a real event loop: tiers, single flight, a real redis-server.

The model is a coroutine that counts its calls; gates (asyncio.Event) decide
when it answers, so the order of events is fixed, not timed.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
import redis as redis_sync

from gateway.cache import ResponseCache
from gateway.cache.metrics import MEMORY, REDIS
from gateway.cache.redis_store import RedisStore, TierDown, TierError
from gateway.core.errors import DeadlineExceededError, ExecutorError
from gateway.core.model_config import CacheConfig
from gateway.core.stats import ModelStats
from gateway.core.types import InferRequest, InferResponse

CFG = CacheConfig(exact=True, ttl_s=60)
WAIT_S = 30


def req(value: int = 1, id: str = "") -> InferRequest:
    return InferRequest(
        model="m", version="1", inputs={"X": np.full((1, 4), value, np.int32)}, datatypes={"X": "INT32"}, id=id
    )


class Model:
    """Doubles X; counts calls; answers when its gate opens."""

    def __init__(self, gated: bool = False, fail_first: bool = False) -> None:
        self.calls = 0
        self.gate = asyncio.Event()
        if not gated:
            self.gate.set()
        self.fail_first = fail_first

    def runner(self, r: InferRequest):
        async def run() -> InferResponse:
            self.calls += 1
            await self.gate.wait()
            if self.fail_first and self.calls == 1:
                raise ExecutorError("boom")
            return InferResponse("m", "1", {"Y": r.inputs["X"] * 2}, {"Y": "INT32"}, id=r.id)

        return run


async def serve(cache: ResponseCache, model: Model, r: InferRequest, stats: ModelStats | None = None, cfg=CFG, deadline_ns=0):
    return await cache.serve("m", "1", cfg, r, stats or ModelStats(), model.runner(r), deadline_ns)


async def until(predicate, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


# ------------------------------------------------------------------ in-process


def test_second_identical_request_is_a_hit_with_its_own_id():
    async def main():
        cache, model, stats = ResponseCache(), Model(), ModelStats()
        first = await serve(cache, model, req(3, id="a"), stats)
        second = await serve(cache, model, req(3, id="b"), stats)
        other = await serve(cache, model, req(4, id="c"), stats)
        assert model.calls == 2
        assert first.parameters == {} and other.parameters == {}
        assert second.parameters == {"cache_hit": True} and second.id == "b"
        np.testing.assert_array_equal(second.outputs["Y"], np.full((1, 4), 6))
        assert stats.cache_hit.count == 1 and stats.cache_miss.count == 2
        t = cache.metrics.tier("m", MEMORY)
        assert (t.hits, t.misses, t.stores) == (1, 2, 2)
        snap = cache.snapshot()["models"]["m"]["tiers"]["memory"]
        assert snap["entries"] == 2 and snap["bytes"] > 0

    asyncio.run(main())


def test_max_bytes_zero_keeps_nothing_in_process():
    async def main():
        cache, model = ResponseCache(), Model()
        cfg = CacheConfig(exact=True, max_bytes=0)
        await serve(cache, model, req(), cfg=cfg)
        again = await serve(cache, model, req(), cfg=cfg)
        assert model.calls == 2 and again.parameters == {}

    asyncio.run(main())


def test_applies_only_when_enabled_and_not_opted_out():
    cache = ResponseCache()
    assert cache.applies(CFG, req())
    assert not cache.applies(CacheConfig(), req())
    opted = req()
    opted.parameters["cache"] = False
    assert not cache.applies(CFG, opted)


# ------------------------------------------------------------------ single flight


def test_concurrent_identical_misses_run_the_model_once():
    async def main():
        cache, model, stats = ResponseCache(), Model(gated=True), ModelStats()
        n = 8
        tasks = [asyncio.create_task(serve(cache, model, req(5, id=str(i)), stats)) for i in range(n)]
        await until(lambda: model.calls == 1 and len(cache._flights) == 1 and cache.metrics.coalesced.get("m") == n - 1,
                    "all requests to join one flight")
        model.gate.set()
        results = await asyncio.gather(*tasks)
        assert model.calls == 1
        assert [r.id for r in results] == [str(i) for i in range(n)]
        for r in results:
            np.testing.assert_array_equal(r.outputs["Y"], np.full((1, 4), 10))
        assert stats.success.count == n - 1  # the scheduler counts the one that ran
        assert len(cache._flights) == 0
        # The one that ran is the one miss; the others are hits that say they were coalesced.
        assert results[0].parameters == {}
        assert all(r.parameters == {"cache_coalesced": True} for r in results[1:])
        assert (stats.cache_miss.count, stats.cache_hit.count, stats.cache_coalesced.count) == (1, n - 1, n - 1)
        memory = cache.metrics.tier("m", MEMORY)
        assert (memory.hits, memory.misses, cache.metrics.coalesced["m"]) == (0, 1, n - 1)

    asyncio.run(main())


def test_a_failed_leader_fails_alone_and_followers_run_their_own():
    async def main():
        cache, model = ResponseCache(), Model(gated=True, fail_first=True)
        tasks = [asyncio.create_task(serve(cache, model, req(7, id=str(i)))) for i in range(3)]
        await until(lambda: cache.metrics.coalesced.get("m") == 2, "followers to join")
        model.gate.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert isinstance(results[0], ExecutorError)
        assert all(isinstance(r, InferResponse) for r in results[1:])
        assert model.calls == 3

    asyncio.run(main())


def test_a_leader_waits_on_its_transport_deadline_not_the_waiters_bound():
    """The deadline passed to serve() bounds waiting for another request's answer; the request
    that runs the model keeps its queue deadlines in the scheduler and stops at its transport's."""
    async def main():
        cache, model = ResponseCache(), Model(gated=True)
        leader = asyncio.create_task(serve(cache, model, req(8), deadline_ns=time.monotonic_ns() + 20_000_000))
        await until(lambda: model.calls == 1, "the leader to run")
        await asyncio.sleep(0.05)  # past the bound it was given: it must still be waiting for its own run
        assert not leader.done()
        model.gate.set()
        assert (await leader).parameters == {}

        hard = req(9)
        hard.deadline_ns = time.monotonic_ns() + 20_000_000
        model.gate.clear()
        with pytest.raises(DeadlineExceededError, match="before its answer"):
            await serve(cache, model, hard)
        model.gate.set()

    asyncio.run(main())


def test_a_cancelled_leader_does_not_cancel_the_flight():
    async def main():
        cache, model = ResponseCache(), Model(gated=True)
        leader = asyncio.create_task(serve(cache, model, req(9)))
        follower = asyncio.create_task(serve(cache, model, req(9)))
        await until(lambda: cache.metrics.coalesced.get("m") == 1, "the follower to join")
        leader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await leader
        model.gate.set()
        result = await follower
        np.testing.assert_array_equal(result.outputs["Y"], np.full((1, 4), 18))
        assert model.calls == 1

    asyncio.run(main())


def test_a_follower_past_its_deadline_stops_waiting():
    async def main():
        cache, model, stats = ResponseCache(), Model(gated=True), ModelStats()
        leader = asyncio.create_task(serve(cache, model, req(2), stats))
        await until(lambda: model.calls == 1, "the leader to run")
        start = time.monotonic()
        with pytest.raises(DeadlineExceededError, match="identical request"):
            await serve(cache, model, req(2), stats, deadline_ns=time.monotonic_ns() + 20_000_000)
        assert time.monotonic() - start < 5
        assert stats.fail.count == 1 and stats.cache_hit.count == 0
        model.gate.set()
        await leader
        assert model.calls == 1
        # The leader went on: its answer is cached for the next one.
        again = await serve(cache, model, req(2), stats)
        assert again.parameters == {"cache_hit": True} and model.calls == 1

    asyncio.run(main())


# ------------------------------------------------------------------ shared tier (real redis-server)


def test_replicas_share_answers_through_redis_with_its_ttl(redis_server):
    async def main():
        a = ResponseCache(RedisStore(redis_server.url, timeout_s=1.0))
        b = ResponseCache(RedisStore(redis_server.url, timeout_s=1.0))
        model_a, model_b, stats_b = Model(), Model(), ModelStats()
        cfg = CacheConfig(exact=True, ttl_s=30)
        await serve(a, model_a, req(4), cfg=cfg)
        await until(lambda: a.metrics.tier("m", REDIS).stores == 1, "A's background store")
        hit = await serve(b, model_b, req(4, id="on-b"), stats_b, cfg=cfg)
        assert model_b.calls == 0
        assert hit.parameters == {"cache_hit": True} and hit.id == "on-b"
        np.testing.assert_array_equal(hit.outputs["Y"], np.full((1, 4), 8))
        assert stats_b.cache_hit.count == 1
        tb = b.metrics.tier("m", REDIS)
        assert (tb.hits, tb.errors) == (1, 0)
        # B keeps it in-process too, for no longer than Redis would.
        memory = b._memory["m"]
        assert len(memory) == 1
        assert 0 < next(iter(memory._entries.values()))[1] - time.monotonic_ns() <= 30 * 10**9
        await a.close()
        await b.close()

    asyncio.run(main())
    keys = redis_sync.Redis.from_url(redis_server.url).keys("gw:x:m:1:*")
    assert len(keys) == 1
    ttl_ms = redis_sync.Redis.from_url(redis_server.url).pttl(keys[0])
    assert 0 < ttl_ms <= 30_000


def test_redis_down_means_misses_then_recovery(redis_server):
    async def main():
        store = RedisStore(redis_server.url, timeout_s=1.0, retry_min_s=0.05, retry_max_s=0.2)
        cache, model = ResponseCache(store), Model()
        cfg = CacheConfig(exact=True, max_bytes=0)  # every lookup goes to Redis
        await serve(cache, model, req(1), cfg=cfg)
        redis_server.stop()
        counters = cache.metrics.tier("m", REDIS)
        answered = await serve(cache, model, req(1), cfg=cfg)  # Redis gone: the model answers
        np.testing.assert_array_equal(answered.outputs["Y"], np.full((1, 4), 2))
        assert counters.errors >= 1
        for _ in range(2 * store.failure_threshold):  # lookups and background stores both fail
            if not store.up:
                break
            await serve(cache, model, req(1), cfg=cfg)
        assert not store.up and counters.errors >= store.failure_threshold
        errors = counters.errors
        await serve(cache, model, req(1), cfg=cfg)  # within the back-off: not even tried
        assert counters.bypassed >= 1 and counters.errors == errors
        redis_server.start()

        async def hit_again():
            return (await serve(cache, model, req(1), cfg=cfg)).parameters.get("cache_hit", False)

        hits = []

        async def poll():
            hits.append(await hit_again())
            return hits[-1]

        deadline = time.monotonic() + WAIT_S
        while not await poll():
            assert time.monotonic() < deadline, "hits never resumed after Redis came back"
            await asyncio.sleep(0.02)
        assert store.up and store.recoveries == 1
        await cache.close()

    asyncio.run(main())


def test_a_stalled_redis_costs_a_bounded_wait(redis_server):
    async def main():
        store = RedisStore(redis_server.url, timeout_s=0.05)
        cache, model = ResponseCache(store), Model()
        cfg = CacheConfig(exact=True, max_bytes=0)
        await store.call(lambda r: r.ping())
        admin = redis_sync.Redis.from_url(redis_server.url)
        # Every client, the pausing one included, is held until the pause ends.
        admin.execute_command("CLIENT", "PAUSE", 1500, "ALL")
        start = time.monotonic()
        answered = await serve(cache, model, req(6), cfg=cfg)
        elapsed = time.monotonic() - start
        np.testing.assert_array_equal(answered.outputs["Y"], np.full((1, 4), 12))
        assert cache.metrics.tier("m", REDIS).errors == 1
        assert elapsed < 1.0, f"the lookup waited {elapsed:.2f}s on a stalled Redis"
        await cache.close()

    asyncio.run(main())


def test_an_unreadable_shared_entry_is_a_miss(redis_server):
    async def main():
        cache, model = ResponseCache(RedisStore(redis_server.url, timeout_s=1.0)), Model()
        cfg = CacheConfig(exact=True, max_bytes=0)
        await serve(cache, model, req(3), cfg=cfg)
        await until(lambda: cache.metrics.tier("m", REDIS).stores == 1, "the store")
        admin = redis_sync.Redis.from_url(redis_server.url)
        (key,) = admin.keys("gw:x:*")
        admin.set(key, b"not msgpack of an entry", px=60_000)
        again = await serve(cache, model, req(3), cfg=cfg)
        assert again.parameters == {} and model.calls == 2
        assert cache.metrics.tier("m", REDIS).errors == 1
        await cache.close()

    asyncio.run(main())


def test_one_failure_does_not_switch_the_tier_off(redis_server):
    async def main():
        store = RedisStore(redis_server.url, timeout_s=1.0, failure_threshold=3)
        await store.call(lambda r: r.ping())
        redis_server.stop()
        for attempt in range(1, 4):
            with pytest.raises(TierError):
                await store.call(lambda r: r.ping())
            assert store.up == (attempt < 3)
        with pytest.raises(TierDown):
            await store.call(lambda r: r.ping())
        await store.close()

    asyncio.run(main())
