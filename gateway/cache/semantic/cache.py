"""The semantic prompt cache: embed the last user turn, find the closest cached
prompt of the same scope, answer from it when similar enough and nothing in
the words contradicts it.

Usable on its own: a text-generation front end builds a PromptQuery
(scope.prompt_query), calls ``lookup`` before generating and ``store`` after.
Answers are any msgpack-able value (e.g. the generated message and usage).

With a shared RedisStore, entries live in Redis too, so every replica can
answer from them: one key per entry (embedding, prompt, answer; PX TTL) and a
sorted set per scope listing live entry ids by expiry. A lookup first pulls
the scope's ids it has not seen into the local index (one round trip, two
when there is something new), then searches locally. Redis has no vector
search here (REFERENCE.md), so the nearest-neighbour scan is ours. A failing
Redis leaves the local index answering alone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import msgpack
import numpy as np
import xxhash

from gateway.cache.metrics import CacheMetrics
from gateway.cache.redis_store import RedisStore, TierDown, TierError
from gateway.cache.semantic.embedder import Embedder
from gateway.cache.semantic.guard import conflict
from gateway.cache.semantic.index import VectorIndex
from gateway.cache.semantic.scope import PromptQuery
from gateway.core.model_config import SemanticCacheConfig

if TYPE_CHECKING:
    from redis.asyncio import Redis

_log = logging.getLogger(__name__)
T = TypeVar("T")

REDIS_PREFIX = "gw:s:"
ENTRY_FORMAT = 1
# A lookup pulls at most this many unseen entries of its scope from Redis.
MAX_PULL = 1000


@dataclass(frozen=True, slots=True)
class SemanticResult:
    answer: Any | None  # the cached answer on a hit
    similarity: float | None  # of the closest prompt of the scope, hit or not
    skipped: str = ""  # why the cache was not consulted
    rejected: str = ""  # why a close enough prompt was refused (guard)
    vector: np.ndarray | None = None  # the prompt's embedding, reused by store()
    matched_prompt: str = ""

    @property
    def hit(self) -> bool:
        return self.answer is not None


class _Stored:
    """What the local index keeps per entry."""

    __slots__ = ("prompt", "answer_blob")

    def __init__(self, prompt: str, answer_blob: bytes) -> None:
        self.prompt = prompt
        self.answer_blob = answer_blob


class SemanticCache:
    def __init__(
        self,
        embedder: Embedder,
        shared: RedisStore | None = None,
        metrics: CacheMetrics | None = None,
        *,
        clock_ns: Callable[[], int] = time.monotonic_ns,
        wall_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
    ) -> None:
        self.embedder = embedder
        self.shared = shared
        self.metrics = metrics or CacheMetrics()
        self._clock_ns = clock_ns
        self._wall_ms = wall_ms  # expiry shared between hosts: wall clock, used only to prune
        self._indexes: dict[str, VectorIndex] = {}
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed")

    def index_for(self, model: str, cfg: SemanticCacheConfig) -> VectorIndex:
        index = self._indexes.get(model)
        if index is None:
            index = self._indexes[model] = VectorIndex(self.embedder.dim, cfg.max_entries)
        elif index.max_entries != cfg.max_entries:
            index.resize(cfg.max_entries)
        return index

    async def embed(self, model: str, text: str) -> np.ndarray:
        def timed() -> tuple[np.ndarray, float]:
            start = time.perf_counter()
            vector = self.embedder.embed([text])[0]
            return vector, time.perf_counter() - start

        vector, seconds = await asyncio.get_running_loop().run_in_executor(self._pool, timed)
        self.metrics.semantic_for(model).embed_seconds.observe(seconds)
        return vector

    async def lookup(self, query: PromptQuery, cfg: SemanticCacheConfig) -> SemanticResult:
        counters = self.metrics.semantic_for(query.model)
        if not cfg.enabled:
            return SemanticResult(None, None, skipped="semantic cache disabled for the model")
        if not query.cacheable:
            counters.bypassed += 1
            return SemanticResult(None, None, skipped=query.reason)
        vector = await self.embed(query.model, query.prompt)
        index = self.index_for(query.model, cfg)
        if self.shared is not None:
            await self._pull_scope(self.shared, query, index)
        match = index.search(query.scope, vector, self._clock_ns())
        if match is None:
            counters.misses += 1
            return SemanticResult(None, None, vector=vector)
        stored: _Stored = match.answer
        if match.similarity < cfg.threshold:
            counters.misses += 1
            return SemanticResult(None, match.similarity, vector=vector, matched_prompt=stored.prompt)
        why = conflict(query.prompt, stored.prompt)
        if why:
            counters.misses += 1
            return SemanticResult(None, match.similarity, rejected=why, vector=vector, matched_prompt=stored.prompt)
        counters.hits += 1
        counters.similarity.observe(match.similarity)
        answer = msgpack.unpackb(stored.answer_blob, raw=False)
        return SemanticResult(answer, match.similarity, vector=vector, matched_prompt=stored.prompt)

    async def store(self, query: PromptQuery, cfg: SemanticCacheConfig, result: SemanticResult, answer: Any) -> bool:
        """Keep ``answer`` for ``query`` (after a miss whose ``result`` came from lookup)."""
        if not cfg.enabled or not query.cacheable or result.hit or result.vector is None:
            return False
        blob = msgpack.packb(answer, use_bin_type=True)
        entry_id = xxhash.xxh3_64_hexdigest(query.prompt.encode("utf-8"))
        now = self._clock_ns()
        ttl_ns = int(cfg.ttl_s * 1e9)
        self.index_for(query.model, cfg).add(query.scope, entry_id, result.vector, _Stored(query.prompt, blob), now + ttl_ns, now)
        counters = self.metrics.semantic_for(query.model)
        counters.stores += 1
        if self.shared is not None:
            await self._push(self.shared, query, cfg, entry_id, result.vector, blob, ttl_ns // 1_000_000)
        return True

    # -- Redis ------------------------------------------------------------------------------

    def _scope_key(self, query: PromptQuery) -> str:
        return f"{REDIS_PREFIX}{query.model}:{query.version}:{query.scope.hex()}"

    async def _push(self, shared: RedisStore, query: PromptQuery, cfg: SemanticCacheConfig, entry_id: str, vector: np.ndarray,
                    blob: bytes, ttl_ms: int) -> None:
        zkey = self._scope_key(query)
        expires_ms = self._wall_ms() + ttl_ms
        value = msgpack.packb(
            {"v": ENTRY_FORMAT, "e": vector.astype("<f4").tobytes(), "p": query.prompt, "a": blob, "x": expires_ms},
            use_bin_type=True,
        )

        async def push(r):
            pipe = r.pipeline(transaction=False)
            pipe.set(f"{zkey}:{entry_id}", value, px=ttl_ms)
            pipe.zadd(zkey, {entry_id: expires_ms})
            pipe.zremrangebyrank(zkey, 0, -(cfg.max_entries + 1))  # keep the newest max_entries
            pipe.pexpire(zkey, ttl_ms)
            return await pipe.execute()

        await self._shared_call(shared, query.model, push)

    async def _pull_scope(self, shared: RedisStore, query: PromptQuery, index: VectorIndex) -> None:
        zkey = self._scope_key(query)
        now_ms = self._wall_ms()

        async def live_ids(r):
            pipe = r.pipeline(transaction=False)
            pipe.zremrangebyscore(zkey, "-inf", now_ms)
            pipe.zrangebyscore(zkey, now_ms, "+inf")
            return await pipe.execute()

        found = await self._shared_call(shared, query.model, live_ids)
        if not found:
            return
        unseen = [i.decode() for i in found[1] if not index.contains(query.scope, i.decode())][-MAX_PULL:]
        if not unseen:
            return
        blobs = await self._shared_call(shared, query.model, lambda r: r.mget([f"{zkey}:{i}" for i in unseen]))
        if not blobs:
            return
        now_ns = self._clock_ns()
        for entry_id, value in zip(unseen, blobs):
            if value is None:
                continue  # expired between the two round trips
            try:
                doc = msgpack.unpackb(value, raw=False)
                if doc["v"] != ENTRY_FORMAT:
                    raise ValueError(f"format {doc['v']}")
                vector = np.frombuffer(doc["e"], dtype="<f4")
                left_ms = doc["x"] - now_ms
                if left_ms > 0:
                    index.add(query.scope, entry_id, vector, _Stored(doc["p"], doc["a"]), now_ns + left_ms * 1_000_000, now_ns)
            except (ValueError, KeyError, TypeError, msgpack.UnpackException) as exc:
                self.metrics.semantic_for(query.model).errors += 1
                _log.warning("unreadable semantic cache entry %s:%s skipped: %s", zkey, entry_id, exc)

    async def _shared_call(self, shared: RedisStore, model: str, op: Callable[[Redis], Awaitable[T]]) -> T | None:
        try:
            return await shared.call(op)
        except TierDown:
            return None
        except TierError as exc:
            self.metrics.semantic_for(model).errors += 1
            _log.debug("semantic cache Redis operation failed: %s", exc)
            return None

    async def close(self) -> None:
        self._pool.shutdown(wait=False)
