"""Prometheus families of the response caches, read from their snapshot at scrape time.

The caches count on the event loop in plain integers and fixed-bucket histograms
(gateway/cache/metrics.py); this collector only reads the plain-data snapshot, so
monitoring stays independent of the cache package.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

_TIER_COUNTS = ("hits", "misses", "errors", "bypassed", "stores")
_SEMANTIC_COUNTS = ("hits", "misses", "bypassed", "stores", "errors")


def _buckets(hist: dict) -> list[tuple[str, float]]:
    out, running = [], 0
    for bound, n in zip(hist["bounds"], hist["counts"]):
        running += n
        out.append((floatToGoString(bound), running))
    out.append(("+Inf", hist["count"]))
    return out


class CacheCollector:
    def __init__(self, snapshot: Callable[[], dict]) -> None:
        self.snapshot = snapshot

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        tiers = CounterMetricFamily(
            "gateway_cache_tier_operations", "exact-cache operations by tier and result", labels=["model", "tier", "result"]
        )
        tier_bytes = CounterMetricFamily(
            "gateway_cache_tier_bytes", "bytes stored into and served from each exact-cache tier",
            labels=["model", "tier", "direction"],
        )
        coalesced = CounterMetricFamily(
            "gateway_cache_coalesced_requests", "requests answered by an identical request's execution", labels=["model"]
        )
        semantic = CounterMetricFamily(
            "gateway_semantic_cache_operations", "semantic prompt-cache operations by result", labels=["model", "result"]
        )
        similarity = HistogramMetricFamily(
            "gateway_semantic_cache_hit_similarity", "cosine similarity of semantic-cache hits", labels=["model"]
        )
        embed = HistogramMetricFamily(
            "gateway_semantic_cache_embed_seconds", "time to embed one prompt", labels=["model"]
        )
        for model, doc in self.snapshot().get("models", {}).items():
            for tier, c in doc.get("tiers", {}).items():
                for result in _TIER_COUNTS:
                    tiers.add_metric([model, tier, result], c[result])
                tier_bytes.add_metric([model, tier, "stored"], c["bytes_stored"])
                tier_bytes.add_metric([model, tier, "served"], c["bytes_served"])
            if "coalesced" in doc:
                coalesced.add_metric([model], doc["coalesced"])
            s = doc.get("semantic")
            if s is not None:
                for result in _SEMANTIC_COUNTS:
                    semantic.add_metric([model, result], s[result])
                similarity.add_metric([model], _buckets(s["similarity"]), s["similarity"]["sum"])
                embed.add_metric([model], _buckets(s["embed_seconds"]), s["embed_seconds"]["sum"])
        yield from (tiers, tier_bytes, coalesced, semantic, similarity, embed)
