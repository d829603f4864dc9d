"""The pure router: sticky split, shadow plans, rollback guard with a fake clock, comparisons, config."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest

from gateway.core.errors import ConfigError, InvalidInputError
from gateway.core.model_config import all_errors, parse_model_config, routing_version_problems
from gateway.core.routing_config import RollbackConfig, RoutingConfig
from gateway.routing.compare import ClassDistribution, PairStats, compare_arrays, pick_output
from gateway.routing.guard import RollbackGuard
from gateway.routing.router import Router, ShadowTarget, patched_config
from gateway.routing.sticky import sticky_choice, unit_hash

KEYS = [f"user-{i}" for i in range(10_000)]
ALL = {"1", "2", "3"}
S = 1_000_000_000  # ns per second


def router(rng_seed: int = 0, **routing) -> Router:
    return Router("m", RoutingConfig.model_validate(routing), random.Random(rng_seed))


def shares(r: Router, keys=KEYS, served=ALL) -> dict[str, float]:
    counts = Counter(r.plan(k, served, "3").version for k in keys)
    return {v: n / len(keys) for v, n in counts.items()}


# ------------------------------------------------------------------ sticky split


@pytest.mark.parametrize("weights", [{1: 95, 2: 5}, {1: 50, 2: 50}, {1: 70, 2: 20, 3: 10}, {1: 1, 2: 1, 3: 2}])
def test_split_over_ten_thousand_keys_is_within_one_and_a_half_percent(weights):
    got = shares(router(weights=weights))
    total = sum(weights.values())
    for v, w in weights.items():
        assert abs(got.get(str(v), 0.0) - w / total) <= 0.015, (v, got)


def test_the_same_key_always_gets_the_same_version_whatever_the_random_state():
    a, b = router(1, weights={1: 60, 2: 40}), router(2, weights={1: 60, 2: 40})
    assert [a.plan(k, ALL, "2").version for k in KEYS[:2000]] == [b.plan(k, ALL, "2").version for k in KEYS[:2000]]


def test_hash_is_murmur3_and_fixed_across_processes_and_releases():
    # Reference values: a change here re-assigns every user of every deployment.
    assert unit_hash("m", "1", "user-1") == pytest.approx(0.4793851, abs=1e-6)
    assert unit_hash("m", "2", "user-1") == pytest.approx(0.9327315, abs=1e-6)
    # -ln(0.479)/50 > -ln(0.933)/50: version 2 scores lower and wins.
    assert sticky_choice("m", "user-1", [("1", 50.0), ("2", 50.0)]) == "2"
    assert sticky_choice("m", "user-1", [("1", 50.0), ("2", 0.5)]) == "1"
    assert 0 < unit_hash("", "", "") < 1


def test_raising_a_weight_never_ejects_a_key_already_in():
    before = router(weights={1: 80, 2: 10, 3: 10})
    for raised in ({1: 80, 2: 20, 3: 10}, {1: 80, 2: 10, 3: 30}, {1: 90, 2: 10, 3: 10}):
        after = router(weights=raised)
        for k in KEYS[:3000]:
            v0 = before.plan(k, ALL, "3").version
            if raised[int(v0)] > {1: 80, 2: 10, 3: 10}[int(v0)]:
                assert after.plan(k, ALL, "3").version == v0, (k, raised)


def test_taking_a_version_out_moves_only_its_own_keys():
    full = router(weights={1: 80, 2: 10, 3: 10})
    without_3 = router(weights={1: 80, 2: 10, 3: 0})
    moved = 0
    for k in KEYS[:3000]:
        v0, v1 = full.plan(k, ALL, "3").version, without_3.plan(k, ALL, "3").version
        if v0 != "3":
            assert v1 == v0
        else:
            moved += 1
            assert v1 in ("1", "2")
    assert moved > 0


def test_keyless_requests_are_split_at_random_by_weight():
    r = router(weights={1: 75, 2: 25})
    counts = Counter(r.plan(None, ALL, "2").version for _ in range(10_000))
    assert abs(counts["1"] / 10_000 - 0.75) < 0.03
    assert not r.plan(None, ALL, "2").sticky and r.plan("k", ALL, "2").sticky


def test_key_sources_in_order():
    r = router(weights={1: 1, 2: 1})
    assert r.key_of("hdr", {"route_key": "param"}) == "hdr"
    assert r.key_of("", {"route_key": 42}) == "42"
    assert r.key_of("", {}) is None
    only_param = router(weights={1: 1, 2: 1}, sticky_key_sources=["parameter"], sticky_key_parameter="user")
    assert only_param.key_of("hdr", {"user": "u"}) == "u"
    assert only_param.key_of("hdr", {}) is None
    assert router(weights={1: 1}, sticky_key_sources=[]).key_of("hdr", {"route_key": "p"}) is None


def test_unserved_versions_are_skipped_and_the_champion_or_default_answers():
    r = router(weights={1: 50, 2: 50})
    assert {r.plan(k, {"1"}, "1").version for k in KEYS[:200]} == {"1"}
    # Nothing weighted is served: the champion, else the default version.
    assert router(weights={2: 1, 3: 1}, champion=3).plan("k", {"1", "3"}, "1").version in ("3",)
    assert router(weights={2: 1}).plan("k", {"1"}, "1").version == "1"
    assert router().plan("k", {"1", "2"}, "2").version == "2"


# ------------------------------------------------------------------ plans: shadows and fallback


def test_shadows_skip_the_live_version_and_sample_their_fraction():
    r = router(weights={1: 50, 2: 50}, shadows=[{"version": 2}, {"model": "other", "fraction": 0.25}], fallback=1)
    plans = [r.plan(k, ALL, "2") for k in KEYS[:4000]]
    for p in plans:
        assert ShadowTarget("m", p.version) not in [ShadowTarget(t.model, t.version) for t in p.shadows]
        assert p.fallback == ("" if p.version == "1" else "1")
    other = sum(any(t.model == "other" for t in p.shadows) for p in plans)
    assert abs(other / len(plans) - 0.25) < 0.03
    to_2 = [p for p in plans if p.version == "1"]
    assert all(any(t.version == "2" for t in p.shadows) for p in to_2)


def test_a_canary_is_compared_with_the_champion_when_disagreement_is_guarded():
    assert router(weights={1: 50, 2: 50}).champion == "2"  # ties: the higher version
    r = router(weights={1: 50, 2: 50}, champion=1, rollback={"max_disagreement": 0.2, "compare_fraction": 1.0})
    for k in KEYS[:200]:
        p = r.plan(k, ALL, "2")
        targets = [(t.model, t.version) for t in p.shadows]
        assert targets == ([("m", "1")] if p.version == "2" else [])


# ------------------------------------------------------------------ rollback guard (fake clock)


def guarded(**rollback) -> Router:
    return router(weights={1: 90, 2: 10}, rollback={"min_requests": 10, **rollback})


def test_error_rate_over_the_threshold_trips_the_canary_and_spares_the_champion():
    r = guarded(max_error_rate=0.2)
    now = 100 * S
    for i in range(9):
        r.record_result("2", False, 1000, now + i)
        r.record_result("1", False, 1000, now + i)  # the champion is never rolled back
    assert not r.tripped  # fewer than min_requests
    r.record_result("2", False, 1000, now + 10)
    assert set(r.tripped) == {"2"} and "error rate" in r.tripped["2"].reason
    assert r.effective_weights() == {"1": 90.0, "2": 0.0}
    assert {r.plan(k, ALL, "2").version for k in KEYS[:500]} == {"1"}
    status = r.status(now + 5 * S)
    assert status["rollbacks"] == 1 and status["versions"]["2"]["rolled_back"]["seconds_ago"] == pytest.approx(5, abs=0.01)
    assert status["versions"]["1"]["rolled_back"] is None and status["versions"]["1"]["effective_weight"] == 90
    assert r.reset() == ["2"]
    assert r.effective_weights() == {"1": 90.0, "2": 10.0}


def test_old_errors_slide_out_of_the_window():
    r = guarded(max_error_rate=0.5, window_s=10)
    for i in range(8):
        r.record_result("2", False, 1000, i * S // 10)
    # 20 s later those failures are outside the window: 10 good requests do not trip.
    for i in range(10):
        r.record_result("2", True, 1000, 20 * S + i)
    assert not r.tripped
    assert r.status(20 * S + 10)["versions"]["2"]["window"]["errors"] == 0


def test_within_the_window_old_and_new_errors_add_up():
    r = guarded(max_error_rate=0.5, window_s=10)
    for i in range(6):
        r.record_result("2", False, 1000, i)
    for i in range(4):
        r.record_result("2", True, 1000, 5 * S + i)
    assert "2" in r.tripped


def test_p99_latency_over_the_threshold_trips():
    r = guarded(max_p99_latency_ms=50, min_requests=100)
    for i in range(99):
        r.record_result("2", True, 10_000_000, i)  # 10 ms
    r.record_result("2", True, 60_000_000, 100)  # 1 % slow: p99 is still under
    assert not r.tripped
    r.record_result("2", True, 60_000_000, 101)  # 2 of 101 slow: p99 over 50 ms
    assert "p99" in r.tripped["2"].reason


def test_disagreement_with_the_champion_trips():
    r = guarded(max_disagreement=0.3)
    champion = ShadowTarget("m", "1")
    live = {"y": np.eye(4, dtype=np.float32)[[0, 1, 2, 3]]}
    same = {"y": live["y"].copy()}
    other = {"y": np.eye(4, dtype=np.float32)[[1, 1, 1, 1]]}  # 3 of 4 rows disagree
    r.record_shadow("2", champion, "1", live, same, 0)
    r.record_shadow("2", champion, "1", live, same, 1)
    assert not r.tripped
    r.record_shadow("2", champion, "1", live, other, 2)  # 3 of 12 rows: 0.25
    assert not r.tripped
    r.record_shadow("2", champion, "1", live, other, 3)  # 6 of 16: 0.375
    assert "disagreement" in r.tripped["2"].reason


def test_guard_counts_use_sliding_slices():
    g = RollbackGuard(RollbackConfig(window_s=10, min_requests=1, max_error_rate=0.5))
    g.record_result("2", 0, True, 1)
    g.record_result("2", 9 * S, True, 1)
    assert g.counts("2", 9 * S).requests == 2
    assert g.counts("2", 10 * S).requests == 1  # the first slice left the window
    assert g.counts("2", 30 * S).requests == 0


# ------------------------------------------------------------------ comparison statistics


def test_compare_argmax_exact_and_mean_absolute_difference():
    live = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]], dtype=np.float32)
    shadow = np.array([[0.2, 0.8], [0.1, 0.9], [0.3, 0.7]], dtype=np.float32)
    c = compare_arrays(live, shadow)
    assert not c.exact and c.argmax_rows == 3 and c.argmax_agreed == 2 and c.disagreed_rows == 1
    assert c.abs_diff_sum / c.elements == pytest.approx((0.1 + 0.1 + 0.7 + 0.7) / 6, rel=1e-5)
    assert compare_arrays(live, live.copy()).exact
    mismatch = compare_arrays(live, shadow[:2])
    assert not mismatch.exact and mismatch.disagreed_rows == 3 and mismatch.elements == 0
    ints = compare_arrays(np.array([[1], [2]]), np.array([[1], [3]]))
    assert ints.argmax_rows == 0 and ints.disagreed_rows == 2 and ints.abs_diff_sum == 1


def test_pair_stats_and_distributions():
    p = PairStats()
    live = np.array([[1.0, 0.0], [0.0, 1.0]])
    p.add(compare_arrays(live, live))
    p.add(compare_arrays(live, live[::-1]))
    doc = p.to_json()
    assert doc["compared"] == 2 and doc["agreement_exact"] == 0.5 and doc["agreement_argmax"] == 0.5
    assert doc["mean_abs_diff"] == pytest.approx(0.5)
    d = ClassDistribution()
    d.add(np.array([0, 2, 2]))
    d.add(np.array([5000]))  # beyond MAX_CLASSES: the last bucket
    assert d.to_json()["counts"][:3] == [1, 0, 2] and d.to_json()["counts"][-1] == 1 and d.to_json()["rows"] == 4


def test_pick_output():
    a, b = {"x": 1, "y": 2}, {"y": 3, "x": 4}
    assert pick_output(a, b, "") == "x"
    assert pick_output(a, b, "y") == "y"
    assert pick_output(a, {"z": 1}, "") is None and pick_output(a, b, "z") is None


def test_router_records_shadow_comparisons_per_pair_and_version():
    r = router(weights={1: 1}, shadows=[{"version": 2}])
    live = {"y": np.array([[0.0, 1.0]])}
    r.record_shadow("1", ShadowTarget("m", "2"), "2", live, {"y": np.array([[1.0, 0.0]])}, 0)
    r.record_shadow_dropped("1", ShadowTarget("m", "2"))
    st = r.status(0)
    (pair,) = st["shadows"]
    assert pair["live_version"] == "1" and pair["version"] == "2"
    assert pair["compared"] == 1 and pair["dropped"] == 1 and pair["agreement_argmax"] == 0.0
    assert st["predictions"]["m:1"]["counts"] == [0, 1] and st["predictions"]["m:2"]["counts"] == [1]


# ------------------------------------------------------------------ configuration


FILE = "models/m/model.yaml"


def config_error(raw) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_model_config(raw, file=FILE, default_name="m")
    return info.value


@pytest.mark.parametrize(
    ("routing", "field", "reason"),
    [
        ({"weights": {1: 0, 2: 0}}, "routing.weights", "at least one weight"),
        ({"weights": {1: -1}}, "routing.weights", "weights are >= 0"),
        ({"weights": {1: 1, 2: 1}, "champion": 3}, "routing.champion", "not in weights"),
        ({"shadows": [{"fraction": 0.5}]}, "routing.shadows[0].version", "required"),
        ({"shadows": [{"version": 2}, {"version": 2}]}, "routing.shadows[1]", "twice"),
        ({"weights": {1: 1}, "rollback": {"max_error_rate": 0.1}}, "routing.rollback", "at least two versions"),
        ({"shadows": [{"version": 2, "fraction": 0}]}, "routing.shadows[0].fraction", "greater than 0"),
        ({"weight": {1: 1}}, "routing.weight", "unknown field"),
        ({"rollback": {"window_s": 0}}, "routing.rollback.window_s", "greater than 0"),
    ],
)
def test_invalid_routing_names_the_field(routing, field, reason):
    err = config_error({"routing": routing})
    assert err.field == field and reason in err.reason


def test_routed_versions_must_be_served_by_the_version_policy(tmp_path):
    cfg = parse_model_config(
        {"routing": {"weights": {1: 9, 2: 1}, "fallback": 1, "shadows": [{"version": 3}]}}, file=FILE, default_name="m"
    )
    problems = routing_version_problems(cfg, [1, 2, 3])  # default policy: latest 1 -> only 3 is served
    assert [f for f, _ in problems] == ["routing.weights.1", "routing.weights.2", "routing.fallback"]
    assert "version policy {latest: 1} selects [3]" in problems[0][1]
    served_all = parse_model_config(
        {"version_policy": {"all": True}, "routing": {"weights": {1: 9, 2: 1}}}, file=FILE, default_name="m"
    )
    assert routing_version_problems(served_all, [1, 2]) == []
    assert [f for f, _ in routing_version_problems(served_all, [1])] == ["routing.weights.2"]
    # `gateway check` sees it too, from the version directories.
    model = tmp_path / "m"
    (model / "1").mkdir(parents=True)
    (model / "model.yaml").write_text("version_policy: {all: true}\nrouting:\n  weights: {1: 1, 2: 1}\n")
    assert [e.field for e in all_errors(str(model))] == ["routing.weights.2"]


def test_admin_patch_replaces_named_fields_and_names_bad_ones():
    base = RoutingConfig.model_validate({"weights": {1: 90, 2: 10}, "fallback": 1})
    cfg = patched_config(base, {"weights": {"1": 50, "2": 50}})
    assert cfg.weights == {1: 50, 2: 50} and cfg.fallback == 1
    with pytest.raises(InvalidInputError, match=r"routing.weights: .*at least one weight"):
        patched_config(base, {"weights": {"1": 0}})
    with pytest.raises(InvalidInputError, match=r"routing.champion: version 7"):
        patched_config(base, {"champion": 7})
    with pytest.raises(InvalidInputError, match="unknown field"):
        patched_config(base, {"wieghts": {}})
    with pytest.raises(InvalidInputError, match="JSON object"):
        patched_config(base, [1])
