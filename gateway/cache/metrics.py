"""Cache counters per model and tier, kept as plain objects.

Updated on the event loop only, so no locks. Anything that exports metrics
(the JSON endpoint here, a Prometheus exporter later) reads these objects;
nothing here knows about an export format.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.core.stats import Histogram

MEMORY = "memory"
REDIS = "redis"

# Cosine similarity of semantic hits; the interesting range is just below 1.
SIMILARITY_BOUNDS = (0.80, 0.85, 0.90, 0.92, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99, 1.0)
# Embedding time per prompt, seconds.
EMBED_SECONDS_BOUNDS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0)


@dataclass(slots=True)
class TierCounters:
    hits: int = 0
    misses: int = 0
    errors: int = 0  # failed operations (timeout, connection lost, unreadable value)
    bypassed: int = 0  # lookups or stores skipped while the tier was unavailable
    stores: int = 0
    bytes_stored: int = 0
    bytes_served: int = 0


@dataclass(slots=True)
class SemanticCounters:
    hits: int = 0
    misses: int = 0
    bypassed: int = 0  # not looked up: sampling settings, opt-out
    stores: int = 0
    errors: int = 0
    similarity: Histogram = field(default_factory=lambda: Histogram(SIMILARITY_BOUNDS, total=0.0))
    embed_seconds: Histogram = field(default_factory=lambda: Histogram(EMBED_SECONDS_BOUNDS, total=0.0))


class CacheMetrics:
    def __init__(self) -> None:
        self.tiers: dict[tuple[str, str], TierCounters] = {}
        self.coalesced: dict[str, int] = {}  # requests answered by another request's execution
        self.semantic: dict[str, SemanticCounters] = {}

    def tier(self, model: str, tier: str) -> TierCounters:
        counters = self.tiers.get((model, tier))
        if counters is None:
            counters = self.tiers[(model, tier)] = TierCounters()
        return counters

    def semantic_for(self, model: str) -> SemanticCounters:
        counters = self.semantic.get(model)
        if counters is None:
            counters = self.semantic[model] = SemanticCounters()
        return counters

    def snapshot(self) -> dict:
        models: dict[str, dict] = {}
        for (model, tier), c in sorted(self.tiers.items()):
            models.setdefault(model, {"tiers": {}})["tiers"][tier] = {
                "hits": c.hits,
                "misses": c.misses,
                "errors": c.errors,
                "bypassed": c.bypassed,
                "stores": c.stores,
                "bytes_stored": c.bytes_stored,
                "bytes_served": c.bytes_served,
            }
        for model, n in sorted(self.coalesced.items()):
            models.setdefault(model, {"tiers": {}})["coalesced"] = n
        for model, s in sorted(self.semantic.items()):
            models.setdefault(model, {"tiers": {}})["semantic"] = {
                "hits": s.hits,
                "misses": s.misses,
                "bypassed": s.bypassed,
                "stores": s.stores,
                "errors": s.errors,
                "similarity": _histogram_dict(s.similarity),
                "embed_seconds": _histogram_dict(s.embed_seconds),
            }
        return {"models": models}


def _histogram_dict(h: Histogram) -> dict:
    """Non-cumulative buckets, as the JSON endpoint and the Prometheus collector read them."""
    return {"bounds": list(h.bounds), "counts": list(h.counts), "sum": h.total, "count": h.count}
