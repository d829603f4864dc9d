"""The exact response cache: in-process LRU, then the shared tier, then the model.

A lookup checks the model's in-process store (synchronously, no await), then
joins the single flight for its key: the first request of a key looks in the
shared tier and, on a miss, runs the model; identical requests arriving
meanwhile wait for that answer instead of running the model again. Answers
are stored in-process at once and in the shared tier in the background, off
the response path. A failing shared tier turns into misses, never errors.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from gateway.cache import codec
from gateway.cache.entry import CachedResponse
from gateway.cache.keys import exact_key, opted_out
from gateway.cache.memory import MemoryStore
from gateway.cache.metrics import MEMORY, REDIS, CacheMetrics
from gateway.cache.redis_store import RedisStore, TierDown, TierError
from gateway.cache.singleflight import SingleFlight
from gateway.core.errors import DeadlineExceededError
from gateway.core.model_config import CacheConfig
from gateway.core.secrets import redact_url
from gateway.core.stats import ModelStats
from gateway.core.types import InferRequest, InferResponse, TraceRecord

_log = logging.getLogger(__name__)

HIT_PARAMETER = "cache_hit"
# Marks an answer shared from an identical request's execution (single flight).
COALESCED_PARAMETER = "cache_coalesced"
REDIS_PREFIX = "gw:x:"

Run = Callable[[], Awaitable[InferResponse]]


class _Filled:
    """What a flight lands with: the entry, whether it came from the shared tier,
    and the model's own response (given unchanged to the request that ran it)."""

    __slots__ = ("entry", "from_cache", "response")

    def __init__(self, entry: CachedResponse, from_cache: bool, response: InferResponse | None) -> None:
        self.entry = entry
        self.from_cache = from_cache
        self.response = response


def _answer(
    entry: CachedResponse, req: InferRequest, model: str, version: str, hit: bool, coalesced: bool = False
) -> InferResponse:
    parameters: dict = {}
    if hit:
        parameters[HIT_PARAMETER] = True
    if coalesced:
        parameters[COALESCED_PARAMETER] = True
    return InferResponse(
        model=model,
        version=version,
        outputs=dict(entry.outputs),
        datatypes=dict(entry.datatypes),
        id=req.id,
        parameters=parameters,
    )


class ResponseCache:
    def __init__(self, shared: RedisStore | None = None, *, max_pending_stores: int = 1024) -> None:
        self.shared = shared
        self.metrics = CacheMetrics()
        self.max_pending_stores = max_pending_stores
        self._memory: dict[str, MemoryStore] = {}
        self._flights: SingleFlight[_Filled] = SingleFlight()
        self._pending_stores: set[asyncio.Task] = set()

    @property
    def tier_names(self) -> tuple[str, ...]:
        return (MEMORY, REDIS) if self.shared is not None else (MEMORY,)

    def applies(self, cfg: CacheConfig, req: InferRequest) -> bool:
        # The opt-out parameter is checked on every request, so a malformed one is a 400
        # whether or not the model caches.
        return not opted_out(req) and cfg.exact

    def memory_for(self, model: str, cfg: CacheConfig) -> MemoryStore | None:
        store = self._memory.get(model)
        if cfg.max_bytes == 0:
            if store is not None:
                del self._memory[model]
            return None
        if store is None:
            store = self._memory[model] = MemoryStore(cfg.max_bytes)
        elif store.max_bytes != cfg.max_bytes:
            store.resize(cfg.max_bytes)  # model.yaml was edited
        return store

    # -- the request path -------------------------------------------------------

    async def serve(
        self,
        model: str,
        version: str,
        cfg: CacheConfig,
        req: InferRequest,
        stats: ModelStats,
        run: Run,
        deadline_ns: int = 0,
    ) -> InferResponse:
        """Answer ``req`` from a tier, from an identical request in flight, or by ``run``.

        ``deadline_ns`` (0: none) bounds how long the request waits for an identical
        request's answer: the earliest of its transport deadline and, under the
        "reject" queue policy, its queue timeout.
        """
        start = time.monotonic_ns()
        key = exact_key(model, version, req)
        memory = self.memory_for(model, cfg)
        if memory is not None:
            entry = memory.get(key, start)
            counters = self.metrics.tier(model, MEMORY)
            if entry is not None:
                counters.hits += 1
                counters.bytes_served += entry.nbytes
                now = time.monotonic_ns()
                stats.cache_hit.add(now - start)
                stats.success.add(now - start)
                if req.trace is not None:
                    req.trace.cache_lookup(start, now, True)
                return _answer(entry, req, model, version, hit=True)
            if req.trace is not None and self.shared is None:
                req.trace.cache_lookup(start, time.monotonic_ns(), False)

        flight, leader = self._flights.join(key, lambda: self._fill(model, version, cfg, key, memory, stats, run, start, req.trace))
        # Every lookup is counted once: a hit, a miss (it starts the one flight of its key) or
        # coalesced (it waits for that flight); so hits + misses + coalesced = lookups.
        if leader:
            if memory is not None:
                self.metrics.tier(model, MEMORY).misses += 1
        else:
            self.metrics.coalesced[model] = self.metrics.coalesced.get(model, 0) + 1
        try:
            # The leader's own run keeps its deadlines in the queue; past the transport's, it stops waiting.
            filled = await SingleFlight.wait(flight, _seconds_left(req.deadline_ns if leader else deadline_ns))
        except TimeoutError:
            if leader:
                raise DeadlineExceededError(f"request to model '{model}' timed out before its answer") from None
            # A waiter's own deadline: the flight goes on, and its answer is still cached.
            stats.fail.add(time.monotonic_ns() - start)
            raise DeadlineExceededError(
                f"request to model '{model}' timed out waiting for an identical request's answer"
            ) from None
        except asyncio.CancelledError:
            if _being_cancelled():
                raise
            filled = None  # the flight itself was cancelled: answer on our own
        except Exception:
            if leader:
                raise
            filled = None  # its failure may be its own (deadline, priority): try ours
        if filled is None:
            if not leader:
                stats.cache_miss.add(time.monotonic_ns() - start)
            return await run()
        if leader:
            return filled.response if filled.response is not None else _answer(
                filled.entry, req, model, version, hit=filled.from_cache
            )
        # Answered without running the model: a hit in Triton's statistics, told apart
        # by cache_coalesced (statistics, lookups metric and the response parameter).
        waited = time.monotonic_ns() - start
        stats.cache_hit.add(waited)
        stats.cache_coalesced.add(waited)
        stats.success.add(waited)
        return _answer(filled.entry, req, model, version, hit=filled.from_cache, coalesced=True)

    async def _fill(
        self,
        model: str,
        version: str,
        cfg: CacheConfig,
        key: bytes,
        memory: MemoryStore | None,
        stats: ModelStats,
        run: Run,
        start_ns: int,
        trace: TraceRecord | None,
    ) -> _Filled:
        shared_key = f"{REDIS_PREFIX}{model}:{version}:{key.hex()}"
        if self.shared is not None:
            found = await self._shared_get(self.shared, model, shared_key)
            if found is not None:
                entry, ttl_ms = found
                now = time.monotonic_ns()
                stats.cache_hit.add(now - start_ns)
                stats.success.add(now - start_ns)
                if trace is not None:
                    trace.cache_lookup(start_ns, now, True)
                if memory is not None:
                    memory.put(key, entry, ttl_ms * 1_000_000, now)
                return _Filled(entry, True, None)
        now = time.monotonic_ns()
        stats.cache_miss.add(now - start_ns)
        if trace is not None and self.shared is not None:
            trace.cache_lookup(start_ns, now, False)
        response = await run()
        entry = CachedResponse.from_outputs(response.outputs, response.datatypes)
        ttl_ns = int(cfg.ttl_s * 1e9)
        if memory is not None and memory.put(key, entry, ttl_ns, time.monotonic_ns()):
            counters = self.metrics.tier(model, MEMORY)
            counters.stores += 1
            counters.bytes_stored += entry.nbytes
        if self.shared is not None:
            self._store_shared(self.shared, model, shared_key, entry, max(1, ttl_ns // 1_000_000))
        return _Filled(entry, False, response)

    # -- the shared tier ----------------------------------------------------------

    async def _shared_get(self, shared: RedisStore, model: str, shared_key: str) -> tuple[CachedResponse, int] | None:
        counters = self.metrics.tier(model, REDIS)

        async def get_with_ttl(r):
            pipe = r.pipeline(transaction=False)
            pipe.get(shared_key)
            pipe.pttl(shared_key)
            return await pipe.execute()

        try:
            blob, ttl_ms = await shared.call(get_with_ttl)
        except TierDown:
            counters.bypassed += 1
            return None
        except TierError as exc:
            counters.errors += 1
            _log.debug("shared cache lookup failed: %s", exc)
            return None
        if blob is None or ttl_ms is None or ttl_ms <= 0:  # absent, or expiring as we read it
            counters.misses += 1
            return None
        try:
            entry = codec.unpack(blob)
        except codec.CorruptEntryError as exc:
            counters.errors += 1
            _log.warning("unreadable shared cache entry %s treated as a miss: %s", shared_key, exc)
            return None
        counters.hits += 1
        counters.bytes_served += len(blob)
        return entry, ttl_ms

    def _store_shared(self, shared: RedisStore, model: str, shared_key: str, entry: CachedResponse, ttl_ms: int) -> None:
        counters = self.metrics.tier(model, REDIS)
        if len(self._pending_stores) >= self.max_pending_stores or not shared.up:
            counters.bypassed += 1  # a slow tier must not pile up work; this answer is just not shared
            return
        blob = codec.pack(entry)

        async def store() -> None:
            try:
                await shared.call(lambda r: r.set(shared_key, blob, px=ttl_ms))
            except TierDown:
                counters.bypassed += 1
            except TierError as exc:
                counters.errors += 1
                _log.debug("shared cache store failed: %s", exc)
            else:
                counters.stores += 1
                counters.bytes_stored += len(blob)

        task = asyncio.get_running_loop().create_task(store())
        self._pending_stores.add(task)
        task.add_done_callback(self._pending_stores.discard)

    # -- reporting and lifecycle ------------------------------------------------------

    def snapshot(self) -> dict:
        doc = self.metrics.snapshot()
        for model, store in self._memory.items():
            memory = doc["models"].setdefault(model, {"tiers": {}})["tiers"].setdefault(MEMORY, {})
            memory.update(entries=len(store), bytes=store.bytes, max_bytes=store.max_bytes, evictions=store.evictions)
        doc["shared"] = None if self.shared is None else {
            "url": redact_url(self.shared.url),
            "up": self.shared.up,
            "failures": self.shared.failures,
            "recoveries": self.shared.recoveries,
            "timeout_ms": self.shared.timeout_s * 1000,
        }
        return doc

    async def close(self, timeout_s: float = 1.0) -> None:
        if self._pending_stores:
            await asyncio.wait(set(self._pending_stores), timeout=timeout_s)
        if self.shared is not None:
            await self.shared.close()


def _seconds_left(deadline_ns: int) -> float | None:
    if not deadline_ns:
        return None
    return max(0.0, (deadline_ns - time.monotonic_ns()) / 1e9)


def _being_cancelled() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
