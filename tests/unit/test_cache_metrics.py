"""The cache's counters become Prometheus families at scrape time."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gateway.cache.metrics import MEMORY, REDIS, CacheMetrics
from gateway.monitoring.cache_metrics import CacheCollector


def _samples(metrics: CacheMetrics) -> dict[tuple[str, tuple], float]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(CacheCollector(metrics.snapshot))
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_tier_and_semantic_counters_are_exported():
    m = CacheMetrics()
    m.tier("mlp", MEMORY).hits = 3
    m.tier("mlp", REDIS).errors = 2
    m.tier("mlp", REDIS).bytes_served = 640
    m.coalesced["mlp"] = 5
    sem = m.semantic_for("chat")
    sem.hits, sem.bypassed = 1, 4
    sem.similarity.observe(0.97)
    got = _samples(m)
    assert got[("gateway_cache_tier_operations_total", (("model", "mlp"), ("result", "hits"), ("tier", "memory")))] == 3
    assert got[("gateway_cache_tier_operations_total", (("model", "mlp"), ("result", "errors"), ("tier", "redis")))] == 2
    assert got[("gateway_cache_tier_bytes_total", (("direction", "served"), ("model", "mlp"), ("tier", "redis")))] == 640
    assert got[("gateway_cache_coalesced_requests_total", (("model", "mlp"),))] == 5
    assert got[("gateway_semantic_cache_operations_total", (("model", "chat"), ("result", "bypassed")))] == 4
    assert got[("gateway_semantic_cache_hit_similarity_count", (("model", "chat"),))] == 1
    assert got[("gateway_semantic_cache_hit_similarity_bucket", (("le", "+Inf"), ("model", "chat")))] == 1


def test_no_cache_use_exports_no_series():
    assert not [k for k in _samples(CacheMetrics()) if k[0].startswith("gateway_")]


def test_semantic_histograms_snapshot_as_non_cumulative_buckets():
    # The cache's histograms are core.stats.Histogram; the JSON shape the endpoint shows is theirs.
    m = CacheMetrics()
    empty = m.semantic_for("idle")
    sem = m.semantic_for("chat")
    for similarity in (0.5, 0.93, 1.0, 1.2):
        sem.similarity.observe(similarity)
    sem.embed_seconds.observe(0.003)
    models = m.snapshot()["models"]
    sim = models["chat"]["semantic"]["similarity"]
    assert sim["bounds"][:3] == [0.80, 0.85, 0.90] and sim["count"] == 4
    assert sim["counts"] == [1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1, 1]  # 0.93 falls in (0.92, 0.94]
    assert abs(sim["sum"] - 3.63) < 1e-9
    assert models["chat"]["semantic"]["embed_seconds"]["counts"][2] == 1
    idle = models["idle"]["semantic"]["embed_seconds"]
    assert idle["count"] == 0 and idle["sum"] == 0.0 and isinstance(idle["sum"], float)
    assert empty.similarity.count == 0
