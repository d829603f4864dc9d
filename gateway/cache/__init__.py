"""Response caches: exact (every model, opt-in per model) and semantic (prompts).

Tiers: in-process (default) and a shared Redis. Nothing here ever fails a
request: a cache that cannot answer is a miss.
"""

from gateway.cache.exact import HIT_PARAMETER, ResponseCache
from gateway.cache.metrics import CacheMetrics
from gateway.cache.redis_store import RedisStore

__all__ = ["HIT_PARAMETER", "CacheMetrics", "RedisStore", "ResponseCache", "build_response_cache"]


def build_response_cache(cache_url: str, timeout_ms: float) -> ResponseCache:
    shared = RedisStore(cache_url, timeout_ms / 1000) if cache_url else None
    return ResponseCache(shared)
